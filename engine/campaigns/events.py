"""Events: what happened besides accepted masks (leases, expiries, skipped objects and
images, finished images, deleted masks, rejected prefilled masks)."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from engine.campaigns.db import now


def record_event(
    db: sqlite3.Connection,
    kind: str,
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
