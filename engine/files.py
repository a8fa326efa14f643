"""Local files written atomically: a temporary name beside the target, flushed and fsynced,
then renamed over it, so a reader (or a process killed mid-write) never sees half a file.
Files on object storage go through `engine.storage.Storage`, which commits the same way."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path to write `path` through (with any library's writer); renamed to
    `path` when the block ends without an error, removed otherwise."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.partial")
    try:
        yield temporary
        with open(temporary, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, target)
    finally:
        if temporary.exists():
            temporary.unlink()


def write_atomic(path: str | Path, data: bytes | str) -> None:
    """Write `data` (text is UTF-8) to `path` atomically."""
    with atomic_path(path) as temporary:
        temporary.write_bytes(data.encode() if isinstance(data, str) else data)
