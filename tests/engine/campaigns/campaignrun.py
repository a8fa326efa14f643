"""Running `saengine campaign ...` the way users do, in subprocesses."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from engine.campaigns.campaign import Campaign
from engine.campaigns.server_process import start_server
from tests.engine.jobrun import processes_named, run_saengine, wait_for

# A short round: a few steps of the paper's recipe, a small held-out evaluation.
SHORT_ROUND = [
    "rounds.train.steps=2",
    "rounds.train.batch_size=2",
    "rounds.train.masks_per_image=2",
    "rounds.train.num_iterations=2",
    "rounds.train.warmup_steps=1",
    "rounds.train.lr=1e-4",
    "rounds.eval.max_images=4",
    "rounds.eval.max_masks=2",
    "rounds.eval.points_per_side=2",
]


def simulate(folder: Path, truth: Path, url: str, *extra: str) -> str:
    """`saengine campaign simulate` against a running server; returns its output."""
    result = run_saengine(
        "campaign", "simulate", str(folder), f"truth={truth}", f"server={url}", *extra
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def serve_and_simulate(folder: Path, truth: Path, *extra: str, serve: tuple[str, ...] = ()) -> str:
    """Start the campaign's server (its embed and prefill jobs beside it), run scripted
    annotators against it, stop it and wait for its jobs to end; returns simulate's output."""
    server, url = start_server(Campaign(folder), *serve)
    try:
        return simulate(folder, truth, url, *extra)
    finally:
        server.terminate()
        server.wait(timeout=60)
        for name in (f"campaign embed {folder}", f"campaign prefill {folder}"):
            wait_for(lambda name=name: not processes_named(name), f"{name} to end")


def create(folder: Path, *args: str) -> str:
    """Create a campaign; returns the admin token it printed."""
    result = run_saengine("campaign", "create", str(folder), "progress=false", *args)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [line for line in result.stdout.splitlines() if line.startswith("admin token")]
    assert lines, result.stdout
    return lines[0].rsplit(" ", 1)[-1]


def query(folder: Path, sql: str, *params: object) -> list[tuple]:
    with sqlite3.connect(folder / "campaign.db") as db:
        return [tuple(row) for row in db.execute(sql, params).fetchall()]
