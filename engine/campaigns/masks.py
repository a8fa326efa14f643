"""Masks made in a campaign: submitted by annotators (manual), or proposed by the stage-2
prefill and then kept or rejected.

A submission carries a client-made id: a retried request returns the mask its first
attempt stored instead of storing a second one, also after the lease has ended. The mask
is checked against the image (size) and the lease before anything is stored; its bbox and
area are computed here with the SA-1B semantics. A mask's origin and state are the names of
`state.MaskOrigin` and `state.MaskState`.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from engine.campaigns.campaign import Campaign
from engine.campaigns.db import now
from engine.campaigns.errors import BadInput, Forbidden, NotFound
from engine.campaigns.events import event_by_client, record_event
from engine.campaigns.queue import check_lease, mark_prefilled
from engine.campaigns.state import EventKind, MaskOrigin, MaskState
from engine.campaigns.versions import insert_embedding, model_known

MAX_PROMPT_POINTS = 1000
MAX_SIDE = 20_000


@dataclass(frozen=True)
class Submission:
    """One accepted mask as the annotator's client sends it. rle: {"size": [h, w],
    "counts": COCO compressed string or uncompressed run lengths (column-major, starting
    with background)}; prompts: {"points": [[x, y, label], ...], "box": [x0, y0, x1, y1] |
    None} in stored-image pixels; seconds: from the object's first interaction to accept."""

    client_id: str
    lease_id: str
    image_id: int
    rle: dict[str, Any]
    model_sha256: str
    prompts: dict[str, Any] = field(default_factory=dict)
    clicks: int = 0
    brush_strokes: int = 0
    seconds: float = 0.0
    predicted_iou: float | None = None


@dataclass(frozen=True)
class MaskShape:
    counts: str
    height: int
    width: int
    bbox: list[int]
    area: int


def decode_rle(rle: dict[str, Any]) -> np.ndarray:
    """A submitted RLE -> H x W bool; BadInput when it is not a valid RLE (the run lengths
    are checked before decoding: pycocotools does not check compressed strings)."""
    try:
        height, width = (int(v) for v in rle["size"])
        counts = rle["counts"]
        if not (0 < height <= MAX_SIDE and 0 < width <= MAX_SIDE):
            raise ValueError(f"size {height}x{width}")
        runs = coco_string_runs(counts) if isinstance(counts, str) else [int(c) for c in counts]
        if any(c < 0 for c in runs) or sum(runs) != height * width:
            raise ValueError(f"run lengths sum to {sum(runs)}, not {height} x {width}")
        encoded = mask_utils.frPyObjects({"size": [height, width], "counts": runs}, height, width)
        mask = mask_utils.decode(encoded)
    except (KeyError, TypeError, ValueError) as error:
        raise BadInput(f"malformed RLE: {error}") from error
    return mask.astype(bool)


def coco_string_runs(text: str) -> list[int]:
    """The run lengths of a COCO compressed RLE string: each count in 5-bit groups (low
    first) of characters offset by 48, 0x20 marking that another group follows, the last
    group's 0x10 bit the sign; from the third count on, a difference to the count two
    before. ValueError on characters outside the alphabet or a truncated count."""
    runs: list[int] = []
    position = 0
    while position < len(text):
        value, shift, more = 0, 0, True
        while more:
            if position >= len(text):
                raise ValueError("truncated counts")
            code = ord(text[position]) - 48
            if not 0 <= code < 64:
                raise ValueError(f"character {text[position]!r} is not RLE")
            value |= (code & 0x1F) << shift
            more = bool(code & 0x20)
            position += 1
            shift += 5
            if not more and code & 0x10:
                value |= -1 << shift
        runs.append(value + runs[-2] if len(runs) > 2 else value)
    return runs


def mask_shape(mask: np.ndarray) -> MaskShape:
    """COCO compressed counts, bbox [x, y, w, h] of the pixels (no +1) and pixel count."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        raise BadInput("the mask is empty")
    height, width = mask.shape
    encoded = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    x0, y0, x1, y1 = int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())
    return MaskShape(
        counts=encoded["counts"].decode("ascii"),
        height=height,
        width=width,
        bbox=[x0, y0, x1 - x0, y1 - y0],
        area=int(len(xs)),
    )


def submit_mask(campaign: Campaign, annotator_id: int, submission: Submission) -> tuple[int, bool]:
    """Store an accepted mask; returns (mask_id, created). created is False for a retry of
    a submission already stored (same annotator and client_id)."""
    shape = checked_shape(submission)
    with campaign.db.write() as db:
        return store_manual(db, annotator_id, submission, shape)


def checked_shape(submission: Submission) -> MaskShape:
    """The submitted mask's shape, once its prompts, RLE and client id are checked."""
    _check_prompts(submission.prompts)
    shape = mask_shape(decode_rle(submission.rle))
    check_client_id(submission.client_id)
    return shape


def store_manual(
    db: sqlite3.Connection, annotator_id: int, submission: Submission, shape: MaskShape
) -> tuple[int, bool]:
    """`submit_mask`'s work inside the caller's transaction."""
    existing = mask_by_client(db, annotator_id, submission.client_id)
    if existing is not None:
        return int(existing["mask_id"]), False
    image = check_lease(db, submission.lease_id, annotator_id, submission.image_id)
    if (shape.height, shape.width) != (image["height"], image["width"]):
        raise BadInput(
            f"mask is {shape.width}x{shape.height}, image {image['key']} is "
            f"{image['width']}x{image['height']}"
        )
    if not model_known(db, submission.model_sha256):
        raise BadInput(
            f"unknown model {submission.model_sha256[:12]!r}: not one of this campaign's models"
        )
    at = now()
    cursor = db.execute(
        "INSERT INTO masks (image_id, annotator_id, client_id, origin, state, counts, height, "
        "width, bbox, area, prompts, clicks, brush_strokes, seconds, predicted_iou, "
        "model_sha256, created, changed) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, "
        "?, ?, ?)",
        (
            submission.image_id,
            annotator_id,
            submission.client_id,
            MaskOrigin.MANUAL,
            MaskState.ACCEPTED,
            shape.counts,
            shape.height,
            shape.width,
            json.dumps(shape.bbox),
            shape.area,
            json.dumps(submission.prompts),
            int(submission.clicks),
            int(submission.brush_strokes),
            float(submission.seconds),
            submission.predicted_iou,
            submission.model_sha256,
            at,
            at,
        ),
    )
    return int(cursor.lastrowid or 0), True


def delete_mask(campaign: Campaign, annotator_id: int, mask_id: int, lease_id: str) -> None:
    """Delete one's own accepted mask on the image one holds (kept, marked deleted)."""
    with campaign.db.write() as db:
        row = mask_row(db, mask_id)
        if row is None:
            raise NotFound(f"no mask {mask_id}")
        if row["annotator_id"] != annotator_id or row["origin"] != MaskOrigin.MANUAL:
            raise Forbidden("only one's own masks can be deleted")
        check_lease(db, lease_id, annotator_id, row["image_id"])
        if row["state"] == MaskState.DELETED:
            return
        db.execute(
            "UPDATE masks SET state = ?, changed = ? WHERE mask_id = ?",
            (MaskState.DELETED, now(), mask_id),
        )
        record_event(
            db,
            EventKind.DELETE_MASK,
            image_id=row["image_id"],
            annotator_id=annotator_id,
            detail={"mask_id": mask_id},
        )


def skip_object(
    campaign: Campaign,
    annotator_id: int,
    *,
    lease_id: str,
    client_id: str,
    seconds: float,
    clicks: int,
    prompts: dict[str, Any] | None = None,
) -> int:
    """Record an object the annotator gave up on (the paper's "move on after 30 s")."""
    _check_prompts(prompts or {})
    check_client_id(client_id)
    with campaign.db.write() as db:
        existing = event_by_client(db, annotator_id, client_id)
        if existing is not None:
            return int(existing["event_id"])
        image = check_lease(db, lease_id, annotator_id)
        return record_event(
            db,
            EventKind.SKIP_OBJECT,
            image_id=image["image_id"],
            annotator_id=annotator_id,
            client_id=client_id,
            seconds=float(seconds),
            clicks=int(clicks),
            detail={"prompts": prompts or {}},
        )


def reject_prefilled(
    campaign: Campaign, annotator_id: int, mask_id: int, *, lease_id: str, client_id: str
) -> None:
    """The annotator rejects a wrong prefilled mask of the leased image (recorded)."""
    check_client_id(client_id)
    with campaign.db.write() as db:
        if event_by_client(db, annotator_id, client_id) is not None:
            return
        row = mask_row(db, mask_id)
        if row is None or row["origin"] != MaskOrigin.PREFILLED:
            raise NotFound(f"no prefilled mask {mask_id}")
        check_lease(db, lease_id, annotator_id, row["image_id"])
        db.execute(
            "UPDATE masks SET state = ?, annotator_id = ?, changed = ? WHERE mask_id = ?",
            (MaskState.REJECTED, annotator_id, now(), mask_id),
        )
        record_event(
            db,
            EventKind.REJECT_PREFILLED,
            image_id=row["image_id"],
            annotator_id=annotator_id,
            client_id=client_id,
            detail={"mask_id": mask_id},
        )


def image_masks(db: sqlite3.Connection, image_id: int) -> list[dict[str, Any]]:
    """The image's current masks (accepted manual ones and prefilled ones not rejected)."""
    rows = db.execute(
        "SELECT m.*, a.name AS annotator FROM masks m LEFT JOIN annotators a "
        "ON a.annotator_id = m.annotator_id WHERE m.image_id = ? AND m.state IN (?, ?, ?) "
        "ORDER BY m.mask_id",
        (image_id, MaskState.ACCEPTED, MaskState.PROPOSED, MaskState.KEPT),
    ).fetchall()
    return [mask_view(row) for row in rows]


def mask_view(row: sqlite3.Row) -> dict[str, Any]:
    return {
        "mask_id": row["mask_id"],
        "origin": row["origin"],
        "state": row["state"],
        "annotator": row["annotator"] if "annotator" in row.keys() else None,  # noqa: SIM118
        "rle": {"size": [row["height"], row["width"]], "counts": row["counts"]},
        "bbox": json.loads(row["bbox"]),
        "area": row["area"],
        "model_sha256": row["model_sha256"],
        "detector_score": row["detector_score"],
    }


def mask_row(db: sqlite3.Connection, mask_id: int) -> sqlite3.Row | None:
    row: sqlite3.Row | None = db.execute(
        "SELECT * FROM masks WHERE mask_id = ?", (mask_id,)
    ).fetchone()
    return row


def mask_by_client(db: sqlite3.Connection, annotator_id: int, client_id: str) -> sqlite3.Row | None:
    """The mask an annotator's submission with this client id stored."""
    row: sqlite3.Row | None = db.execute(
        "SELECT * FROM masks WHERE annotator_id = ? AND client_id = ?", (annotator_id, client_id)
    ).fetchone()
    return row


def record_prefill(
    campaign: Campaign,
    image_id: int,
    result: dict[str, Any],
    *,
    model_sha256: str,
    detector_sha256: str,
) -> bool:
    """One transaction: the image's mark, its embedding row and its prefilled masks (result:
    {"input_size": [h, w], "masks": [mask_shape fields + box, detector_score, predicted_iou,
    stability_score]}). False when the image was prefilled already (nothing stored again)."""
    with campaign.db.write() as db:
        if not mark_prefilled(db, image_id, f"{model_sha256}:{detector_sha256}"):
            return False
        insert_embedding(db, image_id, model_sha256, tuple(result["input_size"]))
        for mask in result["masks"]:
            insert_prefilled(
                db, image_id, mask, model_sha256=model_sha256, detector_sha256=detector_sha256
            )
    return True


def insert_prefilled(
    db: sqlite3.Connection,
    image_id: int,
    mask: dict[str, Any],
    *,
    model_sha256: str,
    detector_sha256: str | None = None,
) -> int:
    """A proposed mask's row (origin prefilled, state proposed); returns its id. mask:
    mask_shape's fields, predicted_iou, stability_score, and either the detector's box and
    detector_score or, for a mask taken from a dataset, its prompts and annotation_id."""
    at = now()
    prompts = mask.get("prompts") or {"points": [], "box": mask.get("box")}
    cursor = db.execute(
        "INSERT INTO masks (image_id, origin, state, counts, height, width, bbox, area, "
        "prompts, predicted_iou, stability_score, detector_score, model_sha256, "
        "detector_sha256, annotation_id, created, changed) VALUES (?, ?, ?, ?, ?, ?, ?, ?, "
        "?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            image_id,
            MaskOrigin.PREFILLED,
            MaskState.PROPOSED,
            mask["counts"],
            mask["height"],
            mask["width"],
            json.dumps(mask["bbox"]),
            mask["area"],
            json.dumps(prompts),
            mask["predicted_iou"],
            mask["stability_score"],
            mask.get("detector_score"),
            model_sha256,
            detector_sha256,
            mask.get("annotation_id"),
            at,
            at,
        ),
    )
    return int(cursor.lastrowid or 0)


# What other parts read -------------------------------------------------------------------


def state_counts(db: sqlite3.Connection) -> dict[str, int]:
    """How many masks have each origin and state ("manual accepted": 12, ...)."""
    rows = db.execute("SELECT origin, state, COUNT(*) FROM masks GROUP BY origin, state")
    return {f"{origin} {state}": int(count) for origin, state, count in rows}


def exported_rows(db: sqlite3.Connection, mask_cutoff: int | None) -> list[sqlite3.Row]:
    """The masks a dataset export holds (accepted manual ones and kept prefilled ones, with
    mask_id <= mask_cutoff if given; annotator names as `annotator`), by image and id."""
    query = (
        "SELECT m.*, a.name AS annotator FROM masks m LEFT JOIN annotators a "
        "ON a.annotator_id = m.annotator_id WHERE ((m.origin = ? AND m.state = ?) "
        "OR (m.origin = ? AND m.state = ?)) AND m.mask_id <= ? ORDER BY m.image_id, m.mask_id"
    )
    limit = mask_cutoff if mask_cutoff is not None else 2**62
    return list(
        db.execute(
            query,
            (MaskOrigin.MANUAL, MaskState.ACCEPTED, MaskOrigin.PREFILLED, MaskState.KEPT, limit),
        ).fetchall()
    )


def count_accepted_after(db: sqlite3.Connection, mask_id: int) -> int:
    """Accepted manual masks with an id above `mask_id`."""
    row = db.execute(
        "SELECT COUNT(*) FROM masks WHERE origin = ? AND state = ? AND mask_id > ?",
        (MaskOrigin.MANUAL, MaskState.ACCEPTED, mask_id),
    ).fetchone()
    return int(row[0])


def last_mask_id(db: sqlite3.Connection) -> int:
    return int(db.execute("SELECT COALESCE(MAX(mask_id), 0) FROM masks").fetchone()[0])


def mask_facts(db: sqlite3.Connection) -> list[sqlite3.Row]:
    """Every mask's image_id, origin, state, clicks, brush_strokes, seconds, model_sha256
    and annotator `name`, for statistics."""
    return list(
        db.execute(
            "SELECT m.image_id, m.origin, m.state, m.clicks, m.brush_strokes, m.seconds, "
            "m.model_sha256, a.name FROM masks m LEFT JOIN annotators a "
            "ON a.annotator_id = m.annotator_id"
        ).fetchall()
    )


def check_client_id(client_id: str) -> None:
    if not client_id or len(client_id) > 100:
        raise BadInput("client_id must be 1 to 100 characters")


def _check_prompts(prompts: dict[str, Any]) -> None:
    points = prompts.get("points") or []
    if not isinstance(points, list) or len(points) > MAX_PROMPT_POINTS:
        raise BadInput(f"prompts.points must be a list of at most {MAX_PROMPT_POINTS} points")
    for point in points:
        if not (isinstance(point, (list, tuple)) and len(point) == 3):
            raise BadInput("each prompt point is [x, y, label]")
    box = prompts.get("box")
    if box is not None and not (isinstance(box, (list, tuple)) and len(box) == 4):
        raise BadInput("prompts.box is [x0, y0, x1, y1] or null")
