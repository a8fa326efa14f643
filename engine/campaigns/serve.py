"""`saengine campaign serve`: the campaign's API (uvicorn) and, beside it, the background
jobs that keep the annotators supplied: the embed job (`campaign embed follow=true`, a
child process, restarted if it dies) and retraining rounds (`campaign round`, a child
process started when `retrain_every` new masks are in, or to resume an interrupted round).
Model work never runs in the server process. `<dir>/runs/server.json` names the running
server's URL once it listens.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from engine.campaigns.api import create_app
from engine.campaigns.campaign import Campaign, campaign_detector
from engine.campaigns.labels import boxes_waiting
from engine.campaigns.limits import ServeLimits, header_deadline_protocol
from engine.campaigns.queue import waiting_images
from engine.campaigns.rounds import round_due
from engine.files import write_atomic


def prefill_wanted(campaign: Campaign) -> bool:
    """Stage-2 images wait for their prefill, and a detector is configured or they have
    boxes from a label file."""
    detector = campaign_detector(campaign)
    with campaign.db.read() as db:
        return waiting_images(db) > 0 if detector is not None else boxes_waiting(db)


SERVER_FILE = "server.json"
PR_SET_PDEATHSIG = 1
PARENT_ENV = "SAENGINE_SERVER_PID"
SUPERVISE_EVERY_S = 2.0
RESTART_BACKOFF_S = 10.0


def saengine_command() -> list[str]:
    """How to run this installation's `saengine` in a child process."""
    script = Path(sys.executable).parent / "saengine"
    return [str(script)] if script.exists() else [sys.executable, "-m", "engine.cli"]


class Child:
    """One background job: started with its log in <dir>/runs, restarted after a backoff."""

    def __init__(self, campaign: Campaign, name: str, args: list[str]) -> None:
        self.campaign, self.name, self.args = campaign, name, args
        self.process: subprocess.Popen[bytes] | None = None
        self.ended_at = 0.0

    def running(self) -> bool:
        if self.process is None:
            return False
        if self.process.poll() is None:
            return True
        self.ended_at, self.process = time.monotonic(), None
        return False

    def start(self) -> None:
        if self.running() or time.monotonic() - self.ended_at < RESTART_BACKOFF_S and self.ended_at:
            return
        stamp = time.strftime("%Y%m%d-%H%M%S")
        command = [*saengine_command(), "campaign", self.name, str(self.campaign.dir), *self.args]
        with open(self.campaign.runs_dir() / f"{self.name}-{stamp}.log", "ab") as log:
            env = {**os.environ, PARENT_ENV: str(os.getpid())}
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()


class Supervisor(threading.Thread):
    """Keeps the embed job running and starts rounds when they are due."""

    def __init__(self, campaign: Campaign, *, embed: bool, rounds: bool) -> None:
        super().__init__(name="campaign-supervisor", daemon=True)
        self.campaign = campaign
        self.embed = Child(campaign, "embed", ["follow=true", "progress=false"]) if embed else None
        self.prefill = (
            Child(campaign, "prefill", ["follow=true", "progress=false"]) if embed else None
        )
        self.round = Child(campaign, "round", []) if rounds else None
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.wait(SUPERVISE_EVERY_S):
            self.tick()

    def tick(self) -> None:
        if self.embed is not None:
            self.embed.start()
        if self.prefill is not None and prefill_wanted(self.campaign):
            self.prefill.start()
        if self.round is not None and not self.round.running() and round_due(self.campaign):
            self.round.start()

    def stop(self) -> None:
        self.stopping.set()
        for child in (self.embed, self.prefill, self.round):
            if child is not None:
                child.stop()


def serve(
    campaign: Campaign,
    *,
    host: str,
    port: int,
    embed: bool,
    rounds: bool,
    static_dir: Path | None,
    log_level: str = "warning",
    limits: ServeLimits | None = None,
) -> None:
    """Serve until interrupted; port 0 picks a free port (see runs/server.json). The line
    naming the URL is printed once the server accepts requests."""
    import uvicorn

    limits = limits or ServeLimits()
    supervisor = Supervisor(campaign, embed=embed, rounds=rounds)

    @contextlib.asynccontextmanager
    async def lifespan(_: Any) -> AsyncIterator[None]:
        supervisor.start()
        yield
        # Graceful shutdown (SIGTERM, Ctrl-C): uvicorn re-raises the signal afterwards.
        supervisor.stop()
        (campaign.runs_dir() / SERVER_FILE).unlink(missing_ok=True)

    app = create_app(campaign, static_dir=static_dir, lifespan=lifespan, limits=limits)
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)  # connections wait in the backlog until uvicorn accepts them
    bound = sock.getsockname()[1]
    config = uvicorn.Config(
        app,
        log_level=log_level,
        timeout_graceful_shutdown=5,
        http=header_deadline_protocol(limits.header_timeout_s),
        limit_concurrency=limits.max_connections,
    )
    url = f"http://{'localhost' if host in ('0.0.0.0', '127.0.0.1', '::') else host}:{bound}"
    server = announcing_server(config, lambda: _announce(campaign, url, host, bound))
    server.run(sockets=[sock])


def announcing_server(config: Any, announce: Callable[[], None]) -> Any:
    """uvicorn's server, calling `announce` once it accepts requests (not before: the URL
    printed, or written to server.json, answers at once)."""
    import uvicorn

    class Server(uvicorn.Server):
        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets=sockets)
            if self.started:
                announce()

    return Server(config)


def _announce(campaign: Campaign, url: str, host: str, port: int) -> None:
    _write_server_file(campaign, {"url": url, "pid": os.getpid(), "host": host, "port": port})
    print(f"campaign {campaign.dir} served: open {url} (API docs: {url}/docs)", flush=True)


def end_with_parent() -> None:
    """Called first thing in a background job the server started (PARENT_ENV names the
    server's pid): the kernel sends the job SIGTERM when the server process ends, however
    it ends (also kill -9), so no job outlives its server; a restarted server starts them
    again (an interrupted round resumes)."""
    expected = os.environ.pop(PARENT_ENV, None)
    if expected is None:
        return
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != int(expected):  # the server ended before the call above
        raise SystemExit(0)


def _write_server_file(campaign: Campaign, info: dict[str, Any]) -> None:
    write_atomic(campaign.runs_dir() / SERVER_FILE, json.dumps(info))


def server_url(campaign: Campaign) -> str | None:
    """The URL of the campaign's running server, if runs/server.json names a live one."""
    path = campaign.dir / "runs" / SERVER_FILE
    try:
        info = json.loads(path.read_text())
        os.kill(int(info["pid"]), 0)
    except (OSError, ValueError, KeyError):
        return None
    return str(info["url"])
