"""Units of a generation job without Ray: the output lock, the streamed input plan, and
local storage that does not depend on the process's working directory."""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from engine.generation.lock import LOCK_FILE, LockError, LockSettings, OutputLock
from engine.generation.plan import PLAN_FILE, iter_plan, read_plan_info, write_plan
from engine.sources import InputError, list_sources, sources_digest
from engine.storage import Storage

FAST_LOCK = LockSettings(heartbeat_s=0.05, stale_after_s=0.5, settle_s=0.0)


def test_removing_works_when_the_working_directory_is_gone(tmp_path: Path) -> None:
    """Ray can replace a job's working directory under it; os.getcwd() then fails."""
    storage = Storage(str(tmp_path / "out"))
    storage.write_bytes(".staging/sa_000000/sa_1.jpg", b"x")
    storage.write_bytes("single.json", b"{}")
    gone = tmp_path / "working-dir"
    gone.mkdir()
    here = os.getcwd()
    try:
        os.chdir(gone)
        gone.rmdir()
        with pytest.raises(FileNotFoundError):
            os.getcwd()
        storage.remove(".staging")
        storage.remove("single.json")
    finally:
        os.chdir(here)
    assert not (tmp_path / "out" / ".staging").exists()
    assert not (tmp_path / "out" / "single.json").exists()


def test_a_relative_output_travels_as_an_absolute_path(tmp_path: Path) -> None:
    here = os.getcwd()
    try:
        os.chdir(tmp_path)
        storage = Storage("relative/out")
    finally:
        os.chdir(here)
    import pickle

    assert pickle.loads(pickle.dumps(storage)).root == str(tmp_path / "relative" / "out")


@pytest.fixture(params=["local", "memory"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    if request.param == "local":
        return Storage(str(tmp_path / "out"))
    return Storage(f"memory://lock-{tmp_path.name}-{random.getrandbits(32)}")


def test_a_second_job_is_refused_naming_the_holder(storage: Storage) -> None:
    with OutputLock(storage, FAST_LOCK):
        with pytest.raises(LockError) as refused:
            OutputLock(storage, FAST_LOCK).acquire()
        message = str(refused.value)
        assert f"pid {os.getpid()} on {socket.gethostname()}" in message
        assert "in use by another job" in message and "\n" not in message
    assert not storage.exists(LOCK_FILE)
    with OutputLock(storage, FAST_LOCK):  # free again once released
        pass


def test_the_heartbeat_keeps_a_running_job_locked(storage: Storage) -> None:
    with OutputLock(storage, FAST_LOCK) as lock:
        first = lock.holder()
        time.sleep(FAST_LOCK.stale_after_s * 2)
        later = lock.holder()
        assert first and later and later.heartbeat > first.heartbeat
        with pytest.raises(LockError):
            OutputLock(storage, FAST_LOCK).acquire()


def _abandoned_lock(storage: Storage, *, host: str, pid: int, age_s: float) -> None:
    now = time.time()
    holder = {
        "owner": "killed-job",
        "host": host,
        "pid": pid,
        "job": "",
        "started": now - age_s,
        "heartbeat": now - age_s,
    }
    storage.write_bytes(LOCK_FILE, json.dumps(holder).encode())


def test_a_stale_lock_is_taken_over(storage: Storage) -> None:
    _abandoned_lock(storage, host="another-host", pid=1, age_s=0.0)
    with pytest.raises(LockError, match="another-host"):
        OutputLock(storage, FAST_LOCK).acquire()
    _abandoned_lock(storage, host="another-host", pid=1, age_s=FAST_LOCK.stale_after_s + 1)
    with OutputLock(storage, FAST_LOCK) as lock:
        assert lock.holder() == lock.me


def test_a_lock_of_a_dead_process_on_this_host_is_taken_over_at_once(tmp_path: Path) -> None:
    storage = Storage(str(tmp_path / "out"))
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True
    )
    _abandoned_lock(storage, host=socket.gethostname(), pid=int(dead.stdout), age_s=0.0)
    slow = LockSettings(heartbeat_s=10, stale_after_s=600)
    with OutputLock(storage, slow) as lock:
        assert lock.holder() == lock.me


def test_a_job_whose_lock_was_taken_over_knows(storage: Storage) -> None:
    with OutputLock(storage, FAST_LOCK) as lock:
        _abandoned_lock(storage, host="another-host", pid=1, age_s=0.0)
        deadline = time.monotonic() + 5
        while not lock.lost and time.monotonic() < deadline:
            time.sleep(0.02)
        assert lock.lost
    assert storage.exists(LOCK_FILE), "the new holder's lock stays"


@pytest.mark.parametrize("bad", [dict(heartbeat_s=0), dict(heartbeat_s=10, stale_after_s=15)])
def test_lock_settings_are_validated(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="lock."):
        LockSettings(**bad)


def _listing(tmp_path: Path, count: int) -> Path:
    names = [f"img_{i:05d}.jpg" for i in range(count)]
    shuffled = names + names[: count // 10]  # some listed twice
    random.Random(0).shuffle(shuffled)
    (tmp_path / "images.txt").write_text("\n".join(shuffled) + "\n")
    return tmp_path / "images.txt"


def test_the_plan_is_sorted_out_of_core_and_read_in_chunks(tmp_path: Path) -> None:
    listing = _listing(tmp_path, 2500)
    storage = Storage(str(tmp_path / "out"))
    info = write_plan(storage, [str(listing)], {}, run_rows=300)  # 9 spilled runs merged
    expected = list_sources(str(listing))
    assert info.num_images == len(expected) == 2500
    assert info.sources_sha256 == sources_digest(expected)
    assert read_plan_info(storage) == info
    assert pq.ParquetFile(storage.path(PLAN_FILE)).metadata.num_rows == 2500
    plans = list(iter_plan(storage, images_per_shard=1000, batch_rows=128))
    assert [p.source for p in plans] == expected
    assert [p.image_id for p in plans] == list(range(1, 2501))
    assert [p.shard for p in plans[998:1002]] == [0, 0, 1, 1]
    assert plans[0].key == "sa_1"
    resumed = list(iter_plan(storage, images_per_shard=1000, skip_shards={0, 2}))
    assert [p.image_id for p in resumed] == list(range(1001, 2001))


def test_an_empty_input_gives_no_plan(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    storage = Storage(str(tmp_path / "out"))
    with pytest.raises(InputError, match="no images"):
        write_plan(storage, [str(tmp_path / "empty")], {})
    assert read_plan_info(storage) is None and not storage.exists(PLAN_FILE)
