"""The image queue: leases with a TTL renewed by heartbeats.

An image is leased to one annotator at a time. A lease that is not renewed within the TTL
expires: the image returns to the queue (everything accepted on it stays). An annotator
holding a live lease gets the same lease back when asking again (a reloaded page). Images
whose embedding for the current model is ready go first, then the rest in image order;
stage-2 images only once prefilled. Skip image ends a lease and returns the image to the
queue for the others; an image skipped by `max_image_skips` annotators is set aside.
Finish image ends a lease and marks the image done.
"""

from __future__ import annotations

import secrets
import sqlite3
from dataclasses import dataclass

from engine.campaigns.campaign import Campaign
from engine.campaigns.db import now
from engine.campaigns.errors import Conflict, Forbidden, NotFound
from engine.campaigns.events import record_event

QUEUED, LEASED, DONE, SET_ASIDE, ERROR, PLANNED = (
    "queued",
    "leased",
    "done",
    "set_aside",
    "error",
    "planned",
)


@dataclass(frozen=True)
class Lease:
    lease_id: str
    image_id: int
    key: str
    width: int
    height: int
    stage: int
    expires_at: float
    annotator_id: int


def current_model(connection: sqlite3.Connection) -> str | None:
    row = connection.execute("SELECT sha256 FROM models ORDER BY version DESC LIMIT 1").fetchone()
    return None if row is None else str(row["sha256"])


def expire_leases(connection: sqlite3.Connection, at: float) -> int:
    """Return every image whose lease ran out to the queue (recorded as events)."""
    rows = connection.execute(
        "SELECT image_id, lease_annotator FROM images WHERE status = ? AND lease_expires <= ?",
        (LEASED, at),
    ).fetchall()
    for row in rows:
        record_event(
            connection,
            "lease_expired",
            image_id=row["image_id"],
            annotator_id=row["lease_annotator"],
        )
    connection.execute(
        "UPDATE images SET status = ?, lease_id = NULL, lease_annotator = NULL, "
        "lease_expires = NULL, lease_started = NULL WHERE status = ? AND lease_expires <= ?",
        (QUEUED, LEASED, at),
    )
    return len(rows)


def waiting_images(db: sqlite3.Connection) -> int:
    """Queued images that cannot be leased yet: stage-2 images waiting for their prefill."""
    row = db.execute(
        "SELECT COUNT(*) FROM images WHERE status = ? AND stage = 2 AND prefill_model IS NULL",
        (QUEUED,),
    ).fetchone()
    return int(row[0])


def lease_next(campaign: Campaign, annotator_id: int, *, ahead: bool = False) -> Lease | None:
    """The annotator's live lease, or a new lease on the next image (None: queue empty).

    ahead: the annotator's second lease (the image after the current one, so a client can
    fetch it while the current one is being annotated); an annotator holds at most two.
    Without `ahead` the older lease is the current one."""
    at = now()
    ttl = campaign.queue.lease_ttl_s
    with campaign.db.write() as db:
        expire_leases(db, at)
        leases = db.execute(
            "SELECT * FROM images WHERE status = ? AND lease_annotator = ? ORDER BY lease_started",
            (LEASED, annotator_id),
        ).fetchall()
        wanted = 1 if ahead else 0
        held = leases[wanted] if len(leases) > wanted else None
        if held is not None:
            db.execute(
                "UPDATE images SET lease_expires = ? WHERE image_id = ?",
                (at + ttl, held["image_id"]),
            )
            return lease_from_row(held, at + ttl)
        row = _next_image(db, annotator_id, current_model(db))
        if row is None:
            return None
        lease_id = secrets.token_urlsafe(18)
        db.execute(
            "UPDATE images SET status = ?, lease_id = ?, lease_annotator = ?, lease_expires = ?, "
            "lease_started = ? WHERE image_id = ?",
            (LEASED, lease_id, annotator_id, at + ttl, at, row["image_id"]),
        )
        record_event(db, "lease", image_id=row["image_id"], annotator_id=annotator_id)
        leased = db.execute(
            "SELECT * FROM images WHERE image_id = ?", (row["image_id"],)
        ).fetchone()
        return lease_from_row(leased, at + ttl)


_NOT_SKIPPED = (
    "NOT EXISTS (SELECT 1 FROM events s WHERE s.image_id = i.image_id "
    "AND s.kind = 'skip_image' AND s.annotator_id = :annotator)"
)
_READY = "(i.stage = 1 OR i.prefill_model IS NOT NULL)"


def _next_image(db: sqlite3.Connection, annotator_id: int, model: str | None) -> sqlite3.Row | None:
    params = {"annotator": annotator_id, "model": model or "", "queued": QUEUED}
    ready = db.execute(
        "SELECT i.* FROM images i JOIN embeddings e ON e.image_id = i.image_id "
        f"WHERE e.model_sha256 = :model AND i.status = :queued AND {_READY} AND {_NOT_SKIPPED} "
        "ORDER BY i.image_id LIMIT 1",
        params,
    ).fetchone()
    if ready is not None:
        return ready
    row: sqlite3.Row | None = db.execute(
        f"SELECT i.* FROM images i WHERE i.status = :queued AND {_READY} AND {_NOT_SKIPPED} "
        "ORDER BY i.image_id LIMIT 1",
        params,
    ).fetchone()
    return row


def lease_from_row(row: sqlite3.Row, expires_at: float | None = None) -> Lease:
    """The lease an image row holds (expires_at: its new expiry, if just renewed)."""
    return Lease(
        lease_id=row["lease_id"],
        image_id=row["image_id"],
        key=row["key"],
        width=row["width"],
        height=row["height"],
        stage=row["stage"],
        expires_at=row["lease_expires"] if expires_at is None else expires_at,
        annotator_id=row["lease_annotator"],
    )


def check_lease(
    db: sqlite3.Connection, lease_id: str, annotator_id: int, image_id: int | None = None
) -> sqlite3.Row:
    """The image row of a live lease held by this annotator, or the reason why not."""
    row = db.execute("SELECT * FROM images WHERE lease_id = ?", (lease_id,)).fetchone()
    if row is None:
        raise Conflict("lease not found or ended (lease the next image)")
    if row["lease_annotator"] != annotator_id:
        raise Forbidden("this lease belongs to another annotator")
    if row["lease_expires"] <= now():
        raise Conflict("lease expired (lease the next image; accepted masks are kept)")
    if image_id is not None and row["image_id"] != image_id:
        raise Forbidden(f"lease {lease_id[:6]}... is for image {row['image_id']}, not {image_id}")
    return row


def heartbeat(campaign: Campaign, lease_id: str, annotator_id: int) -> float:
    """Renew a live lease; returns its new expiry time."""
    with campaign.db.write() as db:
        row = check_lease(db, lease_id, annotator_id)
        expires = now() + campaign.queue.lease_ttl_s
        db.execute(
            "UPDATE images SET lease_expires = ? WHERE image_id = ?", (expires, row["image_id"])
        )
    return expires


def end_lease(
    campaign: Campaign, lease_id: str, annotator_id: int, *, finish: bool, client_id: str | None
) -> str:
    """Finish (image done) or skip (back to the queue) the leased image; returns its new
    status. Repeating a call with the same client_id answers the same."""
    kind = "finish_image" if finish else "skip_image"
    with campaign.db.write() as db:
        if client_id is not None:
            done = db.execute(
                "SELECT image_id FROM events WHERE annotator_id = ? AND client_id = ? AND kind = ?",
                (annotator_id, client_id, kind),
            ).fetchone()
            if done is not None:
                return str(_status(db, done["image_id"]))
        row = check_lease(db, lease_id, annotator_id)
        image_id = row["image_id"]
        record_event(db, kind, image_id=image_id, annotator_id=annotator_id, client_id=client_id)
        status = DONE if finish else _after_skip(db, image_id, campaign.queue.max_image_skips)
        if finish:  # prefilled masks the annotator did not reject are kept
            db.execute(
                "UPDATE masks SET state = 'kept', changed = ? WHERE image_id = ? "
                "AND origin = 'prefilled' AND state = 'proposed'",
                (now(), image_id),
            )
        db.execute(
            "UPDATE images SET status = ?, lease_id = NULL, lease_annotator = NULL, "
            "lease_expires = NULL, lease_started = NULL, finished_by = ?, finished_at = ? "
            "WHERE image_id = ?",
            (status, annotator_id if finish else None, now() if finish else None, image_id),
        )
    return status


def _after_skip(db: sqlite3.Connection, image_id: int, max_skips: int) -> str:
    skippers = db.execute(
        "SELECT COUNT(DISTINCT annotator_id) FROM events "
        "WHERE image_id = ? AND kind = 'skip_image'",
        (image_id,),
    ).fetchone()[0]
    return SET_ASIDE if skippers >= max_skips else QUEUED


def _status(db: sqlite3.Connection, image_id: int) -> str:
    row = db.execute("SELECT status FROM images WHERE image_id = ?", (image_id,)).fetchone()
    if row is None:
        raise NotFound(f"no image {image_id}")
    return str(row["status"])
