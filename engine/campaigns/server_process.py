"""A campaign server for commands that need one (scripted annotators, tests): the one
already running, the URL given, or a `saengine campaign serve` child started for the
duration (any free port; its URL read from <dir>/runs/server.json)."""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Iterator

import httpx

from engine.campaigns.campaign import Campaign, CampaignError
from engine.campaigns.serve import saengine_command, server_url

START_TIMEOUT_S = 120.0


def start_server(
    campaign: Campaign, *args: str, port: int = 0
) -> tuple[subprocess.Popen[bytes], str]:
    """Start `saengine campaign serve <dir> port=<port> ...` (0: any free port); returns it
    and its URL once it answers."""
    log = campaign.runs_dir() / f"serve-{time.strftime('%Y%m%d-%H%M%S')}.log"
    with open(log, "ab") as handle:
        process = subprocess.Popen(
            [*saengine_command(), "campaign", "serve", str(campaign.dir), f"port={port}", *args],
            stdout=handle,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise CampaignError(
                f"the campaign server stopped (exit {process.returncode}); see {log}"
            )
        url = server_url(campaign)
        if url is not None and _answers(url):
            return process, url
        time.sleep(0.2)
    process.kill()
    raise CampaignError(f"the campaign server did not start within {START_TIMEOUT_S:.0f} s")


def _answers(url: str) -> bool:
    try:
        return httpx.get(f"{url}/api/health", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


@contextlib.contextmanager
def running_server(campaign: Campaign, url: str | None) -> Iterator[str]:
    if url is not None:
        yield url
        return
    running = server_url(campaign)
    if running is not None and _answers(running):
        yield running
        return
    process, started = start_server(campaign)
    try:
        yield started
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
