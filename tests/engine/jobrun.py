"""Running `saengine` the way users do (a subprocess with an embedded local Ray)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

# A small, fast job: the demo model, 4 points per image, images shrunk to 96 px.
FAST = [
    "model=demo",
    "generator=demo",
    "generator.points_per_side=2",
    "images.max_short_side=96",
    "ray.num_cpus=2",
    "progress=false",
]
TIMEOUT_S = 900  # a hang guard; a job here takes 10-60 s on an idle 2-core machine


def saengine_command() -> list[str]:
    script = Path(sys.executable).parent / "saengine"
    return [str(script)] if script.exists() else [sys.executable, "-m", "engine.cli"]


def run_saengine(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*saengine_command(), *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        env={**os.environ, **(env or {})},
    )


def start_saengine(*args: str, log: Path) -> subprocess.Popen:
    handle = log.open("w")
    return subprocess.Popen([*saengine_command(), *args], stdout=handle, stderr=handle)


def wait_for(condition, what: str, process: subprocess.Popen | None = None) -> None:  # noqa: ANN001
    deadline = time.monotonic() + TIMEOUT_S
    while not condition():
        if process is not None and process.poll() is not None:
            raise AssertionError(f"job ended (rc {process.returncode}) before {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def committed(output: Path) -> int:
    folder = output / "manifest"
    return len(list(folder.glob("sa_*.parquet"))) if folder.is_dir() else 0


def dataset_files(output: Path) -> dict[str, bytes]:
    """Every file of a dataset except the per-run logs, by relative path."""
    return {
        path.relative_to(output).as_posix(): path.read_bytes()
        for path in sorted(output.rglob("*"))
        if path.is_file() and path.relative_to(output).parts[0] != "runs"
    }


def processes_named(fragment: str) -> list[int]:
    """PIDs whose command line contains fragment (Ray names workers ray::<Class>...)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if fragment in cmdline:
            found.append(int(entry.name))
    return found


def kill9(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)
