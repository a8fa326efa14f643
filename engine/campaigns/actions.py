"""Client ids: every request that changes something carries an id its client made, naming
that one action (`state.ClientAction`) with that one body. A retry (same id, same action,
same body) answers what the first attempt stored, also after the lease ended, and stores
nothing twice; the same id for another action or another body is refused (409) and changes
nothing. Rows made before schema version 3 have no body digest: any body of their action
matches them.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from typing import Any

from engine.campaigns.db import now
from engine.campaigns.errors import Conflict
from engine.campaigns.state import ClientAction


def body_digest(body: dict[str, Any]) -> str:
    """SHA-256 of the body as canonical JSON (keys sorted, ASCII)."""
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def earlier_action(
    db: sqlite3.Connection,
    annotator_id: int,
    client_id: str,
    action: ClientAction,
    digest: str,
) -> int | None:
    """What the annotator's earlier request with this client id stored (its result id), None
    for a new id; Conflict when the id named another action or another body."""
    row = db.execute(
        "SELECT action, body_sha256, result_id FROM client_actions "
        "WHERE annotator_id = ? AND client_id = ?",
        (annotator_id, client_id),
    ).fetchone()
    if row is None:
        return None
    if row["action"] != action:
        raise Conflict(
            f"client_id {client_id[:40]!r} was used for {row['action']}, not {action}: "
            "a client id names one action (make a new one)"
        )
    if row["body_sha256"] is not None and row["body_sha256"] != digest:
        raise Conflict(
            f"client_id {client_id[:40]!r} was used for another {action} (a different "
            "body); the first one is kept: make a new client id for this one"
        )
    return None if row["result_id"] is None else int(row["result_id"])


def record_action(
    db: sqlite3.Connection,
    annotator_id: int,
    client_id: str,
    action: ClientAction,
    *,
    digest: str,
    result_id: int,
) -> None:
    """Remember what this client id did (in the transaction that stored it)."""
    db.execute(
        "INSERT INTO client_actions (annotator_id, client_id, action, body_sha256, result_id, "
        "created) VALUES (?, ?, ?, ?, ?, ?)",
        (annotator_id, client_id, action, digest, result_id, now()),
    )
