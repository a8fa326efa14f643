"""The annotation page's files as the campaign server serves them (`engine/campaigns/static/`,
shipped in the package): plain ES modules, and onnxruntime-web's files in `vendor/`, copied
there from the npm registry's pinned package by `make vendor` (web/vendor.sh) and named in
`vendor/vendor.json`. Vendored files sit in a folder named with their version and are cached
for good; the page's own files are revalidated on every load."""

from __future__ import annotations

import json
import mimetypes
from pathlib import Path
from typing import Any

from starlette.responses import Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

VENDOR_DIR = "vendor"
VENDOR_MANIFEST = "vendor.json"
FIX_VENDOR = "run `make vendor` in the repository (web/vendor.sh: npm ci, then copies the files)"
IMMUTABLE = "public, max-age=31536000, immutable"
REVALIDATE = "no-cache"

# WebAssembly must be served as application/wasm for streaming compilation.
for _type, _suffix in (("application/wasm", ".wasm"), ("text/javascript", ".mjs")):
    mimetypes.add_type(_type, _suffix)


def vendor_problem(static_dir: Path) -> str | None:
    """Why the page cannot load onnxruntime-web from `static_dir`, or None when it can."""
    manifest = static_dir / VENDOR_DIR / VENDOR_MANIFEST
    try:
        vendor: dict[str, Any] = json.loads(manifest.read_text())
        folder = manifest.parent / str(vendor["dir"])
        missing = [name for name in vendor["files"] if not (folder / name).is_file()]
    except (OSError, ValueError, KeyError, TypeError):
        return (
            f"onnxruntime-web is not vendored ({manifest} is missing or unreadable): {FIX_VENDOR}"
        )
    if missing:
        return f"onnxruntime-web files are missing in {folder}: {', '.join(missing)}; {FIX_VENDOR}"
    return None


class PageFiles(StaticFiles):
    """StaticFiles with the page's caching rules."""

    def file_response(
        self, full_path: Any, stat_result: Any, scope: Scope, status_code: int = 200
    ) -> Response:
        response = super().file_response(full_path, stat_result, scope, status_code)
        path = str(scope.get("path", ""))
        versioned = path.startswith(f"/{VENDOR_DIR}/") and not path.endswith(VENDOR_MANIFEST)
        response.headers["Cache-Control"] = IMMUTABLE if versioned else REVALIDATE
        return response


def page_files(static_dir: Path) -> PageFiles:
    return PageFiles(directory=static_dir, html=True)
