"""One job per output: a lock file `<output>/.lock` with the owner, its host and a heartbeat.

A job takes the lock before it touches the output and keeps it fresh from a background
thread; a second job into the same output is refused with a message naming the holder. A
lock left behind by a killed job is taken over once its heartbeat is older than
`stale_after_s`, or at once when its holder ran on this host and its process is gone, so a
rerun resumes without waiting.

Locally the lock is created atomically. On object storage there is no atomic create, so a
job writes its claim and reads it back after a short settle time: of two jobs racing, the
one whose claim was overwritten sees the other's and backs off.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass

from engine.storage import Storage

LOCK_FILE = ".lock"


class LockError(RuntimeError):
    """The output is in use by another job (one-line message naming the holder)."""


@dataclass(frozen=True)
class LockSettings:
    """heartbeat_s: how often the holder refreshes the lock; stale_after_s: a lock whose
    heartbeat is older is taken over (a killed job); settle_s: the wait before reading a
    claim back on object storage."""

    heartbeat_s: float = 10.0
    stale_after_s: float = 120.0
    settle_s: float = 1.0

    def __post_init__(self) -> None:
        if self.heartbeat_s <= 0:
            raise ValueError(f"lock.heartbeat_s must be > 0, got {self.heartbeat_s}")
        if self.stale_after_s <= 2 * self.heartbeat_s:
            raise ValueError(
                f"lock.stale_after_s must be more than twice lock.heartbeat_s "
                f"({self.heartbeat_s}), got {self.stale_after_s}"
            )
        if self.settle_s < 0:
            raise ValueError(f"lock.settle_s must be >= 0, got {self.settle_s}")


@dataclass(frozen=True)
class LockHolder:
    owner: str
    host: str
    pid: int
    job: str
    started: float
    heartbeat: float

    def describe(self, now: float) -> str:
        job = f", Ray job {self.job}" if self.job else ""
        return (
            f"pid {self.pid} on {self.host}{job}, started "
            f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(self.started))}, "
            f"heartbeat {max(now - self.heartbeat, 0.0):.0f} s ago"
        )


class OutputLock:
    """`with OutputLock(storage, settings):` holds the output for the block. `lost` turns
    True if another job took the lock over (this one stalled past stale_after_s)."""

    def __init__(self, storage: Storage, settings: LockSettings) -> None:
        self.storage, self.settings = storage, settings
        now = time.time()
        self.me = LockHolder(
            owner=uuid.uuid4().hex,
            host=socket.gethostname(),
            pid=os.getpid(),
            job=os.environ.get("RAY_JOB_SUBMISSION_ID", ""),
            started=now,
            heartbeat=now,
        )
        self.lost = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> OutputLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def acquire(self) -> None:
        if not self.storage.create_exclusive(LOCK_FILE, self._record()):
            holder = self.holder()
            if holder is not None and not self._abandoned(holder):
                raise LockError(self._refusal(holder))
            self.storage.write_bytes(LOCK_FILE, self._record())
        self._confirm()
        self._thread = threading.Thread(target=self._beat, name="output-lock", daemon=True)
        self._thread.start()

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        holder = self.holder()
        if holder is not None and holder.owner == self.me.owner:
            self.storage.remove(LOCK_FILE)

    def holder(self) -> LockHolder | None:
        """Who holds the lock now (None: nobody, or a lock file being written)."""
        try:
            data = json.loads(self.storage.read_bytes(LOCK_FILE))
            return LockHolder(**{k: data[k] for k in LockHolder.__dataclass_fields__})
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            return None

    def _record(self) -> bytes:
        return json.dumps(asdict(self.me), indent=2).encode()

    def _abandoned(self, holder: LockHolder) -> bool:
        if time.time() - holder.heartbeat > self.settings.stale_after_s:
            return True
        return holder.host == self.me.host and not _process_alive(holder.pid)

    def _confirm(self) -> None:
        """Read the claim back (after the settle time on object storage): a racing job may
        have written over it."""
        if not self.storage.local:
            time.sleep(self.settings.settle_s)
        holder = self.holder()
        if holder is None or holder.owner != self.me.owner:
            raise LockError(self._refusal(holder) if holder else "lost a race for the lock")

    def _refusal(self, holder: LockHolder) -> str:
        return (
            f"{self.storage.url()} is in use by another job ({holder.describe(time.time())}); "
            "wait for it to finish or stop it: a lock left by a killed job is taken over "
            f"once its heartbeat is over {self.settings.stale_after_s:g} s old"
        )

    def _beat(self) -> None:
        while not self._stop.wait(self.settings.heartbeat_s):
            holder = self.holder()
            if holder is not None and holder.owner != self.me.owner:
                self.lost = True
                return
            self.me = LockHolder(**{**asdict(self.me), "heartbeat": time.time()})
            self.storage.write_bytes(LOCK_FILE, self._record())


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
