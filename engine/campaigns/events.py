"""Events: what happened besides accepted masks (leases, expiries, skipped objects and
images, finished images, deleted masks, rejected prefilled masks; `state.EventKind`)."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from engine.campaigns.db import now
from engine.campaigns.state import EventKind


def record_event(
    db: sqlite3.Connection,
    kind: EventKind,
    *,
    image_id: int | None = None,
    annotator_id: int | None = None,
    client_id: str | None = None,
    seconds: float | None = None,
    clicks: int | None = None,
    detail: dict[str, Any] | None = None,
) -> int:
    cursor = db.execute(
        "INSERT INTO events (kind, image_id, annotator_id, client_id, seconds, clicks, detail, "
        "created) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (kind, image_id, annotator_id, client_id, seconds, clicks, json.dumps(detail or {}), now()),
    )
    return int(cursor.lastrowid or 0)


def image_skippers(db: sqlite3.Connection, image_id: int) -> int:
    """How many annotators skipped the image."""
    row = db.execute(
        "SELECT COUNT(DISTINCT annotator_id) FROM events WHERE image_id = ? AND kind = ?",
        (image_id, EventKind.SKIP_IMAGE),
    ).fetchone()
    return int(row[0])


def skipped_objects(db: sqlite3.Connection) -> list[sqlite3.Row]:
    """Every skipped object: when (`created`) and by whom (`name`)."""
    return list(
        db.execute(
            "SELECT e.created, a.name FROM events e LEFT JOIN annotators a "
            "ON a.annotator_id = e.annotator_id WHERE e.kind = ?",
            (EventKind.SKIP_OBJECT,),
        ).fetchall()
    )
