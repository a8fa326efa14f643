"""The output location: a local directory or an fsspec URL (s3://, gs://, memory://, ...).

Every file is committed atomically. Locally: write to a temporary name, flush, fsync,
rename. On object storage an object only appears once its upload completes, so it is
written under its final name.

A local root is made absolute once, where the Storage is created (the job's driver), and
travels to Ray workers as that absolute path: workers on other nodes run in other working
directories. Local operations never depend on the process's working directory: under
`ray job submit` that directory is Ray's unpacked copy of the job's files, which Ray may
replace while the job runs (a second node sharing the session folder re-unpacks it), and
`os.getcwd()` then fails with a bare "[Errno 2] No such file or directory".
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import shutil
import uuid
from collections.abc import Iterator
from typing import IO, Any

from fsspec.core import url_to_fs


class Storage:
    """Files under one root. Paths given to methods are relative, with '/' separators."""

    def __init__(self, root: str, storage_options: dict[str, Any] | None = None) -> None:
        self.options = dict(storage_options or {})
        self.fs, self.root = url_to_fs(root.rstrip("/") or root, **self.options)
        protocol = self.fs.protocol
        self.local = (protocol[0] if isinstance(protocol, (tuple, list)) else protocol) == "file"
        self.root_url = self.root if self.local else root.rstrip("/") or root

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

    def create_exclusive(self, relative: str, data: bytes) -> bool:
        """Write `data` under `relative` only if nothing is there; False if something is.
        Atomic locally (O_EXCL); on object storage a check then a write, so two writers
        racing can both succeed: callers read back to see who won (see OutputLock)."""
        final = self.path(relative)
        if not self.local:
            if self.exists(relative):
                return False
            self.write_bytes(relative, data)
            return True
        os.makedirs(posixpath.dirname(final), exist_ok=True)
        temporary = f"{final}.{uuid.uuid4().hex}.partial"
        with open(temporary, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(temporary, final)  # fails if `final` exists: the atomic claim
        except FileExistsError:
            return False
        finally:
            os.remove(temporary)
        return True

    def remove(self, relative: str) -> None:
        path = self.path(relative)
        if self.local:
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, ignore_errors=False)
            elif os.path.lexists(path):
                os.remove(path)
            return
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
