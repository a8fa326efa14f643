"""Running `saengine campaign ...` the way users do, in subprocesses."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from tests.engine.jobrun import run_saengine


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
