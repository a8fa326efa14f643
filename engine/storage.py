"""The output location: a local directory or an fsspec URL (s3://, gs://, memory://, ...).

Every file is committed atomically. Locally: write to a temporary name, flush, fsync,
rename. On object storage an object only appears once its upload completes, so it is
written under its final name.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
from collections.abc import Iterator
from typing import IO, Any

from fsspec.core import url_to_fs


class Storage:
    """Files under one root. Paths given to methods are relative, with '/' separators."""

    def __init__(self, root: str, storage_options: dict[str, Any] | None = None) -> None:
        self.root_url = root.rstrip("/") or root
        self.options = dict(storage_options or {})
        self.fs, self.root = url_to_fs(self.root_url, **self.options)
        protocol = self.fs.protocol
        self.local = (protocol[0] if isinstance(protocol, (tuple, list)) else protocol) == "file"

    def __reduce__(self) -> tuple[Any, ...]:
        return (Storage, (self.root_url, self.options))

    def path(self, relative: str) -> str:
        return posixpath.join(self.root, relative) if relative else self.root

    def url(self, relative: str = "") -> str:
        path = self.path(relative)
        return path if self.local else str(self.fs.unstrip_protocol(path))

    def exists(self, relative: str) -> bool:
        self._forget_listings()
        return bool(self.fs.exists(self.path(relative)))

    def list(self, relative: str) -> list[str]:
        """Names of the files directly under a folder (empty if it does not exist)."""
        folder = self.path(relative)
        self._forget_listings()
        if not self.fs.exists(folder):
            return []
        return sorted(posixpath.basename(p.rstrip("/")) for p in self.fs.ls(folder, detail=False))

    def read_bytes(self, relative: str) -> bytes:
        data: bytes = self.fs.cat_file(self.path(relative))
        return data

    def write_bytes(self, relative: str, data: bytes) -> None:
        with self.open_atomic(relative) as handle:
            handle.write(data)

    @contextlib.contextmanager
    def open_atomic(self, relative: str) -> Iterator[IO[bytes]]:
        """A binary file that appears under `relative` only once fully written."""
        final = self.path(relative)
        parent = posixpath.dirname(final)
        if not self.local:
            with self.fs.open(final, "wb") as handle:
                yield handle
            return
        os.makedirs(parent, exist_ok=True)
        temporary = posixpath.join(parent, f".{posixpath.basename(final)}.partial")
        try:
            with open(temporary, "wb") as handle:
                yield handle
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, final)
        finally:
            if os.path.exists(temporary):
                os.remove(temporary)
        _fsync_dir(parent)

    def remove(self, relative: str) -> None:
        path = self.path(relative)
        if self.fs.exists(path):
            self.fs.rm(path, recursive=True)

    def _forget_listings(self) -> None:
        """Other processes write here too: never answer from a cached listing."""
        if not self.local:
            self.fs.invalidate_cache()

    def open_read(self, relative: str) -> IO[bytes]:
        handle: IO[bytes] = self.fs.open(self.path(relative), "rb")
        return handle


def _fsync_dir(path: str) -> None:
    with contextlib.suppress(OSError):
        descriptor = os.open(path, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
