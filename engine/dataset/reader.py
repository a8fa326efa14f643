"""Reading SA-1B datasets as this engine writes them: the records of committed shards."""

from __future__ import annotations

import tarfile
from collections.abc import Iterator

from engine.dataset.layout import committed_shards, shard_name
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
