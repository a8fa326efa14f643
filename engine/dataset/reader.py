"""Reading SA-1B datasets.

- This engine's outputs: the records of committed shards (`iter_records`), in order.
- Any SA-1B-format data (this project's tar shards, SA-1B's own tars, SA-1B's flat layout of
  `sa_*.jpg` + `sa_*.json` files in a folder, local or any fsspec URL): `build_index` gives
  every image once (sorted by key) with the byte ranges of its jpg and json, so any image can
  be read on its own; `shard_urls` lists the tar shards for streaming readers.
"""

from __future__ import annotations

import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from fsspec.core import url_to_fs

from engine.dataset.layout import committed_shards, shard_name
from engine.sources import ImageSource
from engine.storage import Storage


def iter_shard_records(storage: Storage, shard: int) -> Iterator[tuple[str, bytes, bytes]]:
    """(key, jpg bytes, json bytes) of each image of a shard tar, in tar order."""
    with (
        storage.open_read(f"{shard_name(shard)}.tar") as handle,
        tarfile.open(fileobj=handle, mode="r:") as tar,
    ):
        pending: dict[str, dict[str, bytes]] = {}
        for member in tar:
            key, _, extension = member.name.rpartition(".")
            extracted = tar.extractfile(member)
            if extracted is None:
                continue
            pending.setdefault(key, {})[extension] = extracted.read()
            if {"jpg", "json"} <= set(pending[key]):
                files = pending.pop(key)
                yield key, files["jpg"], files["json"]
        for key, files in pending.items():
            yield key, files.get("jpg", b""), files.get("json", b"")


def iter_records(storage: Storage) -> Iterator[tuple[str, bytes, bytes]]:
    """(key, jpg bytes, json bytes) of every image of the committed shards, in order."""
    for shard in committed_shards(storage):
        yield from iter_shard_records(storage, shard)


class DatasetError(ValueError):
    """A dataset that cannot be read (one line for the user)."""


@dataclass(frozen=True)
class IndexEntry:
    key: str
    image: ImageSource
    annotations: ImageSource


def build_index(paths: Iterable[str]) -> list[IndexEntry]:
    """Every image of the given datasets (folders or tar files), sorted by (dataset, key)."""
    entries: list[IndexEntry] = []
    for path in paths:
        found = _index_one(str(path))
        if not found:
            raise DatasetError(f"no SA-1B images (jpg + json pairs) in {path}")
        entries += sorted(found, key=lambda e: e.key)
    return entries


def _index_one(path: str) -> list[IndexEntry]:
    fs, root = url_to_fs(path)
    if root.endswith(".tar"):
        return _index_tar(fs, root)
    if not fs.isdir(root):
        raise DatasetError(f"training data not found: {path}")
    names = sorted(fs.find(root))
    entries: list[IndexEntry] = []
    for name in names:
        if name.endswith(".tar") and "/." not in name:
            entries += _index_tar(fs, name)
    jsons = {n[:-5] for n in names if n.endswith(".json") and "/sa_" in n}
    for stem in sorted(jsons):
        if stem + ".jpg" in names:
            key = stem.rsplit("/", 1)[-1]
            entries.append(
                IndexEntry(
                    key,
                    ImageSource(stem + ".jpg", stem + ".jpg"),
                    ImageSource(stem + ".json", stem + ".json"),
                )
            )
    return entries


def _index_tar(fs: Any, path: str) -> list[IndexEntry]:
    members: dict[str, dict[str, tarfile.TarInfo]] = {}
    with fs.open(path, "rb") as handle, tarfile.open(fileobj=handle, mode="r:") as tar:
        for member in tar.getmembers():
            key, _, extension = member.name.rpartition(".")
            if member.isfile() and extension in ("jpg", "json"):
                members.setdefault(key, {})[extension] = member
    entries = []
    for key, pair in members.items():
        if len(pair) == 2:
            image, ann = pair["jpg"], pair["json"]
            entries.append(
                IndexEntry(
                    key=key.rsplit("/", 1)[-1],
                    image=ImageSource(f"{path}#{image.name}", path, image.offset_data, image.size),
                    annotations=ImageSource(f"{path}#{ann.name}", path, ann.offset_data, ann.size),
                )
            )
    return entries


def shard_urls(paths: Iterable[str]) -> list[str]:
    """The tar shards of the given datasets (tar files, or folders holding them), sorted
    within each dataset."""
    urls: list[str] = []
    for path in paths:
        fs, root = url_to_fs(str(path))
        if root.endswith(".tar"):
            urls.append(str(path))
            continue
        if not fs.isdir(root):
            raise DatasetError(f"training data not found: {path}")
        found = sorted(n for n in fs.find(root) if n.endswith(".tar") and "/." not in n)
        if not found:
            raise DatasetError(f"no tar shards in {path}")
        local = fs.protocol in ("file", ("file", "local"))
        urls += [name if local else fs.unstrip_protocol(name) for name in found]
    return urls
