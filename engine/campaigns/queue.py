"""The image queue: the images table, and leases with a TTL renewed by heartbeats.

An image is leased to one annotator at a time. A lease that is not renewed within the TTL
expires: the image returns to the queue (everything accepted on it stays). An annotator
holding a live lease gets the same lease back when asking again (a reloaded page).

An image is ready to lease when it is queued and, in stage 2, prefilled (`READY`, the one
place this rule is written); ready images whose embedding for the current model is
computed go first, then the rest in image order (`_next_image`). Stage-2 images not yet
prefilled wait (`WAITING`). Skip image ends a lease and returns the image to the queue for
the others; an image skipped by `max_image_skips` annotators is set aside. Finish image
ends a lease and marks the image done.
"""

from __future__ import annotations

import secrets
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

from engine.campaigns.actions import body_digest, earlier_action, record_action
from engine.campaigns.campaign import Campaign, CampaignError
from engine.campaigns.db import now
from engine.campaigns.errors import Conflict, Forbidden, NotFound
from engine.campaigns.events import image_skippers, record_event
from engine.campaigns.state import (
    ClientAction,
    EventKind,
    ImageStatus,
    MaskOrigin,
    MaskState,
    Stage,
)
from engine.campaigns.versions import current_model

# The names the queue's SQL binds (:queued, :semi, ...); `_names(**more)` adds the rest.
NAMES: dict[str, Any] = {
    "queued": ImageStatus.QUEUED,
    "leased": ImageStatus.LEASED,
    "assisted": Stage.ASSISTED,
    "semi": Stage.SEMI,
    "skip_image": EventKind.SKIP_IMAGE,
}
PREFILLED_IF_SEMI = "(i.stage = :assisted OR i.prefill_model IS NOT NULL)"
READY = f"i.status = :queued AND {PREFILLED_IF_SEMI}"
WAITING = "i.status = :queued AND i.stage = :semi AND i.prefill_model IS NULL"
NOT_SKIPPED = (
    "NOT EXISTS (SELECT 1 FROM events s WHERE s.image_id = i.image_id "
    "AND s.kind = :skip_image AND s.annotator_id = :annotator)"
)
LEASE_ENDED = "lease_id = NULL, lease_annotator = NULL, lease_expires = NULL, lease_started = NULL"


def _names(**more: Any) -> dict[str, Any]:
    return {**NAMES, **more}


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


def expire_leases(connection: sqlite3.Connection, at: float) -> int:
    """Return every image whose lease ran out to the queue (recorded as events)."""
    expired = "i.status = :leased AND i.lease_expires <= :at"
    rows = connection.execute(
        f"SELECT image_id, lease_annotator FROM images i WHERE {expired}", _names(at=at)
    ).fetchall()
    for row in rows:
        record_event(
            connection,
            EventKind.LEASE_EXPIRED,
            image_id=row["image_id"],
            annotator_id=row["lease_annotator"],
        )
    connection.execute(
        f"UPDATE images SET status = :queued, {LEASE_ENDED} "
        f"WHERE image_id IN (SELECT i.image_id FROM images i WHERE {expired})",
        _names(at=at),
    )
    return len(rows)


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
            (ImageStatus.LEASED, annotator_id),
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
            (ImageStatus.LEASED, lease_id, annotator_id, at + ttl, at, row["image_id"]),
        )
        record_event(db, EventKind.LEASE, image_id=row["image_id"], annotator_id=annotator_id)
        return replace(lease_from_row(row, at + ttl), lease_id=lease_id, annotator_id=annotator_id)


def _next_image(db: sqlite3.Connection, annotator_id: int, model: str | None) -> sqlite3.Row | None:
    """The next ready image the annotator did not skip: one with the model's embedding
    first, else the first in image order."""
    params = _names(annotator=annotator_id, model=model or "")
    ready = db.execute(
        "SELECT i.* FROM images i JOIN embeddings e ON e.image_id = i.image_id "
        f"WHERE e.model_sha256 = :model AND {READY} AND {NOT_SKIPPED} "
        "ORDER BY i.image_id LIMIT 1",
        params,
    ).fetchone()
    if ready is not None:
        return ready
    row: sqlite3.Row | None = db.execute(
        f"SELECT i.* FROM images i WHERE {READY} AND {NOT_SKIPPED} ORDER BY i.image_id LIMIT 1",
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
) -> ImageStatus:
    """Finish (image done) or skip (back to the queue) the leased image; returns its new
    status. Repeating a call with the same client_id answers the same; the client_id of
    another action is refused (`engine.campaigns.actions`)."""

    kind = EventKind.FINISH_IMAGE if finish else EventKind.SKIP_IMAGE
    action = ClientAction.FINISH_IMAGE if finish else ClientAction.SKIP_IMAGE
    digest = body_digest({"lease_id": lease_id})
    with campaign.db.write() as db:
        if client_id is not None:
            done = earlier_action(db, annotator_id, client_id, action, digest)
            if done is not None:
                return _status(db, done)
        image_id = check_lease(db, lease_id, annotator_id)["image_id"]
        record_event(db, kind, image_id=image_id, annotator_id=annotator_id, client_id=client_id)
        if client_id is not None:
            record_action(db, annotator_id, client_id, action, digest=digest, result_id=image_id)
        status = (
            ImageStatus.DONE
            if finish
            else _after_skip(db, image_id, campaign.queue.max_image_skips)
        )
        if finish:  # prefilled masks the annotator did not reject are kept
            keep_proposed(db, image_id)
        db.execute(
            f"UPDATE images SET status = ?, {LEASE_ENDED}, finished_by = ?, finished_at = ? "
            "WHERE image_id = ?",
            (status, annotator_id if finish else None, now() if finish else None, image_id),
        )
    return status


def keep_proposed(db: sqlite3.Connection, image_id: int) -> None:
    """The image is finished: its prefilled masks nobody rejected (or answered) are kept."""
    db.execute(
        "UPDATE masks SET state = ?, changed = ? WHERE image_id = ? AND origin = ? AND state = ?",
        (MaskState.KEPT, now(), image_id, MaskOrigin.PREFILLED, MaskState.PROPOSED),
    )


def _after_skip(db: sqlite3.Connection, image_id: int, max_skips: int) -> ImageStatus:
    return (
        ImageStatus.SET_ASIDE if image_skippers(db, image_id) >= max_skips else ImageStatus.QUEUED
    )


def _status(db: sqlite3.Connection, image_id: int) -> ImageStatus:
    row = image_row(db, image_id)
    if row is None:
        raise NotFound(f"no image {image_id}")
    return ImageStatus(row["status"])


# Images waiting, and the images the embed and prefill jobs work on -------------------------


def waiting_images(db: sqlite3.Connection) -> int:
    """Queued images that cannot be leased yet: stage-2 images waiting for their prefill."""
    return int(db.execute(f"SELECT COUNT(*) FROM images i WHERE {WAITING}", NAMES).fetchone()[0])


def waiting_for_prefill(db: sqlite3.Connection) -> list[sqlite3.Row]:
    """The waiting images (image_id, key) in order: what the prefill job does next."""
    query = f"SELECT i.image_id, i.key FROM images i WHERE {WAITING} ORDER BY i.image_id"
    return list(db.execute(query, NAMES).fetchall())


def pending_images(
    campaign: Campaign, model_sha256: str, ahead: int | None, failed: set[int] | None = None
) -> list[Any]:
    """Images to embed now for the model: leased ones first, then ready ones in order,
    keeping at most `ahead` queued images embedded (None: all of them). Images in `failed`
    (whose embedding failed in this job) are left out. Stage-2 images get their first
    embedding from the prefill job."""
    missing = (
        "SELECT i.image_id, i.key, i.status FROM images i WHERE i.status = :status "
        f"AND {PREFILLED_IF_SEMI} AND NOT EXISTS (SELECT 1 FROM embeddings e "
        "WHERE e.image_id = i.image_id AND e.model_sha256 = :model) ORDER BY i.image_id"
    )
    skip = failed or set()
    with campaign.db.read() as db:

        def lacking(status: ImageStatus) -> list[Any]:
            rows = db.execute(missing, _names(status=status, model=model_sha256))
            return [row for row in rows if row["image_id"] not in skip]

        leased, queued = lacking(ImageStatus.LEASED), lacking(ImageStatus.QUEUED)
        if ahead is not None:
            ready = db.execute(
                "SELECT COUNT(*) FROM embeddings e JOIN images i ON i.image_id = e.image_id "
                "WHERE e.model_sha256 = :model AND i.status = :queued",
                _names(model=model_sha256),
            ).fetchone()[0]
            queued = queued[: max(0, ahead - ready)]
    return [*leased, *queued]


def mark_prefilled(db: sqlite3.Connection, image_id: int, mark: str) -> bool:
    """Mark the image prefilled (by the models `mark` names); False when it was already."""
    cursor = db.execute(
        "UPDATE images SET prefill_model = ? WHERE image_id = ? AND prefill_model IS NULL",
        (mark, image_id),
    )
    return cursor.rowcount > 0


def prefill_failed(campaign: Campaign, image_id: int, message: str) -> None:
    """A waiting image that cannot be prefilled: an error row with the message (not leased;
    `status` shows it)."""
    with campaign.db.write() as db:
        db.execute(
            "UPDATE images SET status = :error, error = :message WHERE image_id IN "
            f"(SELECT i.image_id FROM images i WHERE i.image_id = :image_id AND {WAITING})",
            _names(error=ImageStatus.ERROR, message=message, image_id=image_id),
        )


def move_to_stage(campaign: Campaign, stage: Stage) -> int:
    """Move the images not yet leased, done or prefilled to `stage`; returns how many."""
    with campaign.db.write() as db:
        return int(
            db.execute(
                "UPDATE images SET stage = ? WHERE status = ? AND prefill_model IS NULL",
                (stage, ImageStatus.QUEUED),
            ).rowcount
        )


# Planning: the images of `campaign create` -------------------------------------------------


def plan_images(campaign: Campaign, images: list[tuple[str, str]]) -> None:
    """Planned rows for the images (key, source): image i + 1 is images[i]. Creating again
    adds nothing, and refuses another number of images."""
    rows = [
        (index + 1, key, source, campaign.stage, ImageStatus.PLANNED)
        for index, (key, source) in enumerate(images)
    ]
    with campaign.db.write() as db:
        count = db.execute("SELECT COUNT(*) FROM images").fetchone()[0]
        if count and count != len(rows):
            raise CampaignError(f"the input now lists {len(rows)} images, the campaign {count}")
        db.executemany(
            "INSERT OR IGNORE INTO images (image_id, key, source, stage, status) "
            "VALUES (?, ?, ?, ?, ?)",
            rows,
        )


def planned_images(db: sqlite3.Connection) -> list[sqlite3.Row]:
    """The images not decoded yet (image_id, key), in order."""
    return list(
        db.execute(
            "SELECT image_id, key FROM images WHERE status = ? ORDER BY image_id",
            (ImageStatus.PLANNED,),
        ).fetchall()
    )


def record_decoded(campaign: Campaign, image_id: int, outcome: tuple[int, int] | str) -> None:
    """A planned image decoded and stored (outcome: its size h, w) and queued, or an error
    row (outcome: the message)."""
    with campaign.db.write() as db:
        if isinstance(outcome, str):
            db.execute(
                "UPDATE images SET status = ?, error = ? WHERE image_id = ?",
                (ImageStatus.ERROR, outcome, image_id),
            )
        else:
            db.execute(
                "UPDATE images SET status = ?, height = ?, width = ? WHERE image_id = ?",
                (ImageStatus.QUEUED, outcome[0], outcome[1], image_id),
            )


# What a lease shows besides its image ------------------------------------------------------

RECENT_EMBEDDINGS = 20


def queue_progress(db: sqlite3.Connection, annotator_id: int) -> dict[str, int]:
    """The campaign's images: done, total (error rows and planned ones left out), left to do
    (queued or leased), and those `annotator_id` finished."""
    counts = status_counts(db)
    mine = db.execute(
        "SELECT COUNT(*) FROM images WHERE status = ? AND finished_by = ?",
        (ImageStatus.DONE, annotator_id),
    ).fetchone()[0]
    left = counts.get(ImageStatus.QUEUED, 0) + counts.get(ImageStatus.LEASED, 0)
    done = counts.get(ImageStatus.DONE, 0)
    return {
        "done": done,
        "total": done + left + counts.get(ImageStatus.SET_ASIDE, 0),
        "left": left,
        "mine": int(mine),
    }


def embedding_eta_s(db: sqlite3.Connection, image_id: int, model: str | None) -> float | None:
    """Roughly when the embed job will have the image's embedding for `model`: the leased
    images it does first (those before it in image order, and itself) times the median
    interval between its recent embeddings; None without a model or two embeddings yet."""
    times = [
        row[0]
        for row in db.execute(
            "SELECT created FROM embeddings ORDER BY created DESC LIMIT ?", (RECENT_EMBEDDINGS,)
        )
    ]
    if model is None or len(times) < 2:
        return None
    gaps = sorted(a - b for a, b in zip(times, times[1:]))
    before = db.execute(
        "SELECT COUNT(*) FROM images i WHERE i.status = :leased AND i.image_id <= :image_id "
        "AND NOT EXISTS (SELECT 1 FROM embeddings e WHERE e.image_id = i.image_id "
        "AND e.model_sha256 = :model)",
        _names(image_id=image_id, model=model),
    ).fetchone()[0]
    return round(max(int(before), 1) * max(gaps[len(gaps) // 2], 0.1), 1)


# What other parts read -------------------------------------------------------------------


def image_row(db: sqlite3.Connection, image_id: int) -> sqlite3.Row | None:
    row: sqlite3.Row | None = db.execute(
        "SELECT * FROM images WHERE image_id = ?", (image_id,)
    ).fetchone()
    return row


def status_counts(db: sqlite3.Connection) -> dict[str, int]:
    """How many images are in each status."""
    rows = db.execute("SELECT status, COUNT(*) FROM images GROUP BY status").fetchall()
    return {str(status): int(count) for status, count in rows}


def error_images(db: sqlite3.Connection, limit: int) -> list[sqlite3.Row]:
    return list(
        db.execute(
            "SELECT key, source, error FROM images WHERE status = ? LIMIT ?",
            (ImageStatus.ERROR, limit),
        ).fetchall()
    )


def finished_images(db: sqlite3.Connection) -> list[sqlite3.Row]:
    """The done images: image_id, finished_at, stage."""
    return list(
        db.execute(
            "SELECT image_id, finished_at, stage FROM images WHERE status = ?", (ImageStatus.DONE,)
        ).fetchall()
    )


def stored_images(db: sqlite3.Connection, image_ids: Iterable[int]) -> dict[int, sqlite3.Row]:
    """The rows of those of `image_ids` that are stored (decoded), by id."""
    wanted = set(image_ids)
    rows = db.execute("SELECT * FROM images WHERE width > 0").fetchall()
    return {row["image_id"]: row for row in rows if row["image_id"] in wanted}


def image_sources(db: sqlite3.Connection) -> dict[int, str]:
    return {row[0]: row[1] for row in db.execute("SELECT image_id, source FROM images")}
