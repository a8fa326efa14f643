"""Masks made in a campaign: submitted by annotators (manual), or proposed by the stage-2
prefill and then kept or rejected.

A submission carries a client-made id (`engine.campaigns.actions`): a retried request
returns the mask its first attempt stored instead of storing a second one, also after the
lease has ended; the id reused for another body is refused. The lease, the image's size and
the model are checked before the mask is decoded (in time linear in its counts, which the
image's size caps); its bbox and area are computed here with the SA-1B semantics. A mask's
origin and state are the names of `state.MaskOrigin` and `state.MaskState`.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from engine.campaigns.actions import body_digest, earlier_action, record_action
from engine.campaigns.campaign import Campaign
from engine.campaigns.db import now
from engine.campaigns.errors import BadInput, Forbidden, NotFound
from engine.campaigns.events import record_event
from engine.campaigns.queue import check_lease, mark_prefilled
from engine.campaigns.state import ClientAction, EventKind, MaskOrigin, MaskState
from engine.campaigns.versions import insert_embedding, model_known

MAX_PROMPT_POINTS = 1000
MAX_SIDE = 20_000
MAX_COUNT_GROUPS = 7  # 35 bits: every count of a mask of up to 2**33 pixels


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


def decode_rle(rle: dict[str, Any], size_hw: tuple[int, int] | None = None) -> np.ndarray:
    """A submitted RLE -> H x W bool; BadInput when it is not a valid RLE of `size_hw` (when
    given). Linear in the counts' length, which the size caps (`max_count_chars`); the run
    lengths are checked before anything of the mask's size is made."""
    try:
        height, width = (int(v) for v in rle["size"])
        if size_hw is not None and (height, width) != size_hw:
            raise ValueError(f"size {height}x{width} is not the image's {size_hw[0]}x{size_hw[1]}")
        if not (0 < height <= MAX_SIDE and 0 < width <= MAX_SIDE):
            raise ValueError(f"size {height}x{width}")
        runs = rle_runs(rle["counts"], height * width)
    except (KeyError, TypeError, ValueError) as error:
        raise BadInput(f"malformed RLE: {error}") from error
    inside = np.zeros(len(runs), dtype=bool)
    inside[1::2] = True
    return np.repeat(inside, runs).reshape(width, height).T


def rle_runs(counts: Any, pixels: int) -> np.ndarray:
    """The run lengths of COCO counts (a compressed string or a list of ints) for a mask of
    `pixels` pixels; ValueError unless they are non-negative and add up to `pixels`."""
    if isinstance(counts, str):
        if len(counts) > max_count_chars(pixels):
            raise ValueError(f"counts longer than a mask of {pixels} pixels can need")
        runs = coco_string_runs(counts)
    elif isinstance(counts, list):
        if len(counts) > pixels + 1:
            raise ValueError(f"more runs than a mask of {pixels} pixels can have")
        if not all(isinstance(c, int) and 0 <= c <= pixels for c in counts):
            raise ValueError(f"run lengths must be integers from 0 to {pixels}")
        runs = np.asarray(counts, dtype=np.int64)
    else:
        raise TypeError("counts must be a string or a list of integers")
    if len(runs) and runs.min() < 0:
        raise ValueError("negative run length")
    if int(runs.sum()) != pixels:
        raise ValueError(f"run lengths sum to {int(runs.sum())}, not {pixels}")
    return runs


def max_count_chars(pixels: int) -> int:
    """The longest compressed counts string a mask of `pixels` pixels can have: at most one
    run per pixel plus one, each a signed difference of at most `pixels` in 5-bit groups."""
    return (pixels + 1) * -(-(pixels.bit_length() + 2) // 5)


def coco_string_runs(text: str) -> np.ndarray:
    """The run lengths of a COCO compressed RLE string: each count in 5-bit groups (low
    first) of characters offset by 48, 0x20 marking that another group follows, the last
    group's 0x10 bit the sign; from the third count on, a difference to the count two
    before. ValueError on characters outside the alphabet, a truncated count or one of more
    than MAX_COUNT_GROUPS groups. Vectorized: linear in the string's length."""
    try:
        codes = np.frombuffer(text.encode("ascii"), dtype=np.uint8).astype(np.int64) - 48
    except UnicodeEncodeError as error:
        raise ValueError("counts hold characters that are not RLE") from error
    if len(codes) == 0:
        return np.zeros(0, dtype=np.int64)
    if codes.min() < 0 or codes.max() >= 64:
        raise ValueError("counts hold characters that are not RLE")
    ends = np.flatnonzero((codes & 0x20) == 0)
    if len(ends) == 0 or ends[-1] != len(codes) - 1:
        raise ValueError("truncated counts")
    starts = np.concatenate([[0], ends[:-1] + 1])
    groups = ends - starts + 1
    if groups.max() > MAX_COUNT_GROUPS:
        raise ValueError(f"a count of more than {MAX_COUNT_GROUPS} characters")
    owner = np.repeat(np.arange(len(ends)), groups)
    shifts = 5 * (np.arange(len(codes)) - starts[owner])
    values = np.bincount(owner, weights=(codes & 0x1F) << shifts).astype(np.int64)
    negative = (codes[ends] & 0x10) != 0
    values[negative] -= np.left_shift(1, 5 * groups[negative])
    runs = values.copy()
    runs[1::2] = np.cumsum(values[1::2])  # count m > 2 adds count m - 2
    runs[2::2] = np.cumsum(values[2::2])
    return runs


def mask_shape(mask: np.ndarray) -> MaskShape:
    """COCO compressed counts, bbox [x, y, w, h] of the pixels (no +1) and pixel count."""
    area = int(np.count_nonzero(mask))
    if area == 0:
        raise BadInput("the mask is empty")
    rows, columns = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    height, width = mask.shape
    encoded = mask_utils.encode(np.asfortranarray(mask, dtype=np.uint8))
    x0, y0, x1, y1 = int(columns[0]), int(rows[0]), int(columns[-1]), int(rows[-1])
    return MaskShape(
        counts=encoded["counts"].decode("ascii"),
        height=height,
        width=width,
        bbox=[x0, y0, x1 - x0, y1 - y0],
        area=area,
    )


def submit_mask(campaign: Campaign, annotator_id: int, submission: Submission) -> tuple[int, bool]:
    """Store an accepted mask; returns (mask_id, created). created is False for a retry of
    a submission already stored (same annotator, client_id and body). The client id, the
    lease, the image's size and the model are checked before the mask is decoded."""
    checked = check_submission(campaign, annotator_id, submission, ClientAction.SUBMIT_MASK)
    if isinstance(checked, int):
        return checked, False
    with campaign.db.write() as db:
        return store_submission(db, annotator_id, submission, checked)


@dataclass(frozen=True)
class CheckedMask:
    """A submission whose lease, size and model were checked, decoded once (outside any
    write lock): its shape, the action its client id names and the body's digest."""

    shape: MaskShape
    action: ClientAction
    digest: str


def check_submission(
    campaign: Campaign,
    annotator_id: int,
    submission: Submission,
    action: ClientAction,
    extra: dict[str, Any] | None = None,
) -> CheckedMask | int:
    """The submission checked and decoded, or the mask id an earlier request with the same
    client id, action and body (`extra` counts in the body) stored."""
    _check_prompts(submission.prompts)
    check_client_id(submission.client_id)
    digest = _submission_digest(submission, extra)
    with campaign.db.read() as db:
        stored = earlier_action(db, annotator_id, submission.client_id, action, digest)
        if stored is not None:
            return stored
        image = _check_target(db, annotator_id, submission)
    shape = mask_shape(decode_rle(submission.rle, (image["height"], image["width"])))
    return CheckedMask(shape=shape, action=action, digest=digest)


def store_submission(
    db: sqlite3.Connection, annotator_id: int, submission: Submission, checked: CheckedMask
) -> tuple[int, bool]:
    """Store a checked submission in the caller's write transaction; (mask_id, created) as
    `submit_mask` returns (the earlier mask when a retry got there first)."""
    stored = earlier_action(db, annotator_id, submission.client_id, checked.action, checked.digest)
    if stored is not None:
        return stored, False
    check_lease(db, submission.lease_id, annotator_id, submission.image_id)
    mask_id = _insert_manual(db, annotator_id, submission, checked.shape)
    record_action(
        db,
        annotator_id,
        submission.client_id,
        checked.action,
        digest=checked.digest,
        result_id=mask_id,
    )
    return mask_id, True


def _submission_digest(submission: Submission, extra: dict[str, Any] | None = None) -> str:
    """What makes two submissions the same mask (the lease may differ: a held mask is sent
    again under a new lease on the same image)."""
    what = {k: v for k, v in submission.__dict__.items() if k not in ("client_id", "lease_id")}
    return body_digest({**what, **(extra or {})})


def _check_target(db: sqlite3.Connection, annotator_id: int, submission: Submission) -> Any:
    """The leased image row, once the lease, the mask's size and the model are right."""
    image = check_lease(db, submission.lease_id, annotator_id, submission.image_id)
    size = submission.rle.get("size") if isinstance(submission.rle, dict) else None
    if not (isinstance(size, (list, tuple)) and len(size) == 2):
        raise BadInput("malformed RLE: size must be [height, width]")
    if tuple(size) != (image["height"], image["width"]):
        raise BadInput(
            f"mask is {size[1]}x{size[0]}, image {image['key']} is "
            f"{image['width']}x{image['height']}"
        )
    if not model_known(db, submission.model_sha256):
        raise BadInput(
            f"unknown model {submission.model_sha256[:12]!r}: not one of this campaign's models"
        )
    return image


def _insert_manual(
    db: sqlite3.Connection, annotator_id: int, submission: Submission, shape: MaskShape
) -> int:
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
    return int(cursor.lastrowid or 0)


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
    """Record an object the annotator gave up on (the paper's "move on after 30 s");
    returns the event's id (the first attempt's, for a retry)."""
    _check_prompts(prompts or {})
    check_client_id(client_id)
    action = ClientAction.SKIP_OBJECT
    what = {"lease_id": lease_id, "seconds": seconds, "clicks": clicks, "prompts": prompts or {}}
    digest = body_digest(what)
    with campaign.db.write() as db:
        earlier = earlier_action(db, annotator_id, client_id, action, digest)
        if earlier is not None:
            return earlier
        image = check_lease(db, lease_id, annotator_id)
        event_id = record_event(
            db,
            EventKind.SKIP_OBJECT,
            image_id=image["image_id"],
            annotator_id=annotator_id,
            client_id=client_id,
            seconds=float(seconds),
            clicks=int(clicks),
            detail={"prompts": prompts or {}},
        )
        record_action(db, annotator_id, client_id, action, digest=digest, result_id=event_id)
        return event_id


def reject_prefilled(
    campaign: Campaign, annotator_id: int, mask_id: int, *, lease_id: str, client_id: str
) -> None:
    """The annotator rejects a wrong prefilled mask of the leased image (recorded)."""
    check_client_id(client_id)
    action = ClientAction.REJECT_PREFILLED
    digest = body_digest({"mask_id": mask_id})
    with campaign.db.write() as db:
        if earlier_action(db, annotator_id, client_id, action, digest) is not None:
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
        record_action(db, annotator_id, client_id, action, digest=digest, result_id=row["image_id"])


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
    mask_shape's fields, predicted_iou, stability_score, and either the box prompt (a
    detector's with its detector_score, or a label file's) or, for a mask taken from a
    dataset, its prompts and annotation_id. detector_sha256: the detector's, or what else
    made it (`labels`); None for a dataset's masks."""
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
