"""Listing a job's input: directories, globs, list files, COCO JSON files and tar shards,
local or fsspec URLs.

Every input becomes an `ImageSource`: where its bytes are (a file, or a byte range inside a
tar) and the `source` string that names it in the manifest. The listing is sorted, so image
ids, keys and shard assignment depend only on the input.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import fsspec
from fsspec.core import url_to_fs

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp", ".gif", ".ppm")
TAR_EXTENSIONS = (".tar",)
LIST_EXTENSIONS = (".txt", ".lst", ".list")
COCO_EXTENSIONS = (".json",)  # a COCO file: the images its `images` entries name
GLOB_CHARS = "*?["


class InputError(ValueError):
    """An input specification that names nothing usable."""


@dataclass(frozen=True)
class ImageSource:
    """One input image. `url` is a file (or the tar holding it); for a tar member, `offset`
    and `size` locate its bytes. `source` is what the manifest shows."""

    source: str
    url: str
    offset: int = -1
    size: int = -1

    def read_bytes(self, storage_options: dict[str, Any] | None = None) -> bytes:
        with fsspec.open(self.url, "rb", **(storage_options or {})) as handle:
            if self.offset < 0:
                data: bytes = handle.read()
                return data
            handle.seek(self.offset)
            data = handle.read(self.size)
        if len(data) != self.size:
            raise OSError(f"tar member truncated: {len(data)} of {self.size} bytes")
        return data


def list_sources(
    spec: str | list[str], storage_options: dict[str, Any] | None = None
) -> list[ImageSource]:
    """All images named by spec (one or several of: directory, glob, list file, tar, image),
    sorted by source and without duplicates, in memory: for small inputs (campaigns, tests).
    Generation jobs stream the same listing into a sorted Parquet plan instead
    (`engine.generation.plan.write_plan`)."""
    found: dict[str, ImageSource] = {}
    for source in iter_sources(spec, storage_options):
        found.setdefault(source.source, source)
    if not found:
        raise InputError(f"no images found in input {spec!r}")
    return [found[key] for key in sorted(found)]


def iter_sources(
    spec: str | list[str], storage_options: dict[str, Any] | None = None
) -> Iterator[ImageSource]:
    """Every image named by spec, as listed (unsorted, duplicates possible), streamed:
    list files line by line, local folders entry by entry, S3 prefixes page by page."""
    specs = [spec] if isinstance(spec, str) else list(spec)
    if not specs:
        raise InputError("input is empty")
    for item in specs:
        yield from _expand(str(item), storage_options or {})


def sources_digest(sources: Iterable[ImageSource]) -> str:
    """SHA-256 over the ordered source names: what a resumed job must see again."""
    digest = hashlib.sha256()
    for source in sources:
        digest.update(source.source.encode())
        digest.update(b"\n")
    return digest.hexdigest()


def _expand(spec: str, options: dict[str, Any]) -> Iterator[ImageSource]:
    fs, path = url_to_fs(spec, **options)
    if any(char in path for char in GLOB_CHARS):
        for match in sorted(fs.glob(path)):
            yield from _expand_path(fs, match, options, recurse=False)
        return
    if not fs.exists(path):
        raise InputError(f"input not found: {spec}")
    yield from _expand_path(fs, path, options, recurse=True)


def _expand_path(
    fs: Any, path: str, options: dict[str, Any], *, recurse: bool
) -> Iterator[ImageSource]:
    if fs.isdir(path):
        for found in _walk_files(fs, path):
            if _has_ext(found, IMAGE_EXTENSIONS + TAR_EXTENSIONS):
                yield from _expand_path(fs, found, options, recurse=False)
        return
    url = fs.unstrip_protocol(path) if _protocol(fs) != "file" else path
    if _has_ext(path, TAR_EXTENSIONS):
        yield from _tar_members(fs, path, url)
    elif _has_ext(path, LIST_EXTENSIONS) and recurse:
        yield from _list_file(fs, path, options)
    elif _has_ext(path, COCO_EXTENSIONS) and recurse:
        yield from _coco_file(fs, path)
    elif _has_ext(path, IMAGE_EXTENSIONS) or recurse:
        yield ImageSource(source=url, url=url)


def _walk_files(fs: Any, path: str) -> Iterator[str]:
    """Files under a folder, streamed where the filesystem allows it."""
    if _protocol(fs) == "file":
        for folder, _, names in os.walk(path):
            for name in names:
                yield posixpath.join(folder, name)
    elif hasattr(fs, "_iterdir"):  # s3fs: one page of the bucket listing at a time
        yield from _s3_pages(fs, path)
    else:
        yield from fs.find(path)


def _s3_pages(fs: Any, path: str) -> Iterator[str]:
    """Keys under an S3 prefix, page by page (s3fs's async listing, run on its loop)."""
    from fsspec.asyn import sync

    bucket, _, key = path.partition("/")
    prefix = key.rstrip("/") + "/" if key else ""
    pages = fs._iterdir(bucket, delimiter="", prefix=prefix)

    async def next_page(size: int = 1000) -> list[str]:
        names: list[str] = []
        async for info in pages:
            if info.get("type") == "file":
                names.append(info["name"])
            if len(names) >= size:
                break
        return names

    while page := sync(fs.loop, next_page):
        yield from page


def _list_file(fs: Any, path: str, options: dict[str, Any]) -> Iterator[ImageSource]:
    base = posixpath.dirname(path)
    with fs.open(path, "rt") as handle:
        for raw in handle:
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            line = _listed(fs, base, line)
            if _has_ext(line, IMAGE_EXTENSIONS):
                # Read when decoded: a missing listed image becomes an error row.
                yield ImageSource(source=line, url=line)
            else:
                yield from _expand(line, options)


def _listed(fs: Any, base: str, name: str) -> str:
    """A name from a listing: an absolute path or URL as it is, else relative to `base`
    (the listing's folder, on the listing's filesystem)."""
    if "://" in name or posixpath.isabs(name):
        return name
    path = posixpath.join(base, name)
    return fs.unstrip_protocol(path) if _protocol(fs) != "file" else path


def _coco_file(fs: Any, path: str) -> Iterator[ImageSource]:
    """The images a COCO JSON file lists (`file_name` relative to the file's folder, or
    absolute, or a URL); each read when decoded, so a missing one becomes an error row."""
    where = fs.unstrip_protocol(path) if _protocol(fs) != "file" else path
    try:
        with fs.open(path, "rt", encoding="utf-8") as handle:
            data = json.load(handle)
    except (ValueError, UnicodeDecodeError) as error:
        raise InputError(f"input {where} is not JSON: {error}") from error
    images = data.get("images") if isinstance(data, dict) else None
    if not isinstance(images, list) or not all(
        isinstance(entry, dict) and isinstance(entry.get("file_name"), str) for entry in images
    ):
        raise InputError(f"input {where} is not a COCO file (no images list with file_name)")
    base = posixpath.dirname(path)
    for entry in images:
        url = _listed(fs, base, entry["file_name"])
        yield ImageSource(source=url, url=url)


def _tar_members(fs: Any, path: str, url: str) -> Iterator[ImageSource]:
    with fs.open(path, "rb") as handle, tarfile.open(fileobj=handle, mode="r:") as tar:
        members = [m for m in tar.getmembers() if m.isfile() and _has_ext(m.name, IMAGE_EXTENSIONS)]
    for member in members:
        yield ImageSource(
            source=f"{url}#{member.name}", url=url, offset=member.offset_data, size=member.size
        )


def _protocol(fs: Any) -> str:
    protocol = fs.protocol
    return str(protocol[0] if isinstance(protocol, (tuple, list)) else protocol)


def _has_ext(path: str, extensions: tuple[str, ...]) -> bool:
    return path.lower().endswith(extensions)
