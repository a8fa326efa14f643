"""Reviews of proposed masks: the answers of the audit and verify modes.

A proposed mask is a prefilled one (`MaskOrigin.PREFILLED`: from the stage-2 prefill, or taken
from a dataset by `saengine audit create` / `verify create`). Each gets at most one answer, a
row of the `reviews` table (`state.Verdict`):

- keep: the mask is right (audit: kept as it is; verify: accepted); its state becomes kept;
- reject: wrong, or not an object; its state becomes rejected (and an event, as in stage 2);
- correct (audit): the reviewer's corrected mask is stored as a manual mask whose `corrects`
  names the proposed one, whose state becomes corrected; all in one transaction.

People answer under a lease of the mask's image, idempotently by client id, with the seconds
from the mask shown to the answer; the verifier model answers queued images (no lease) with
its score (`record_verifier_answers`), and finishes an image once nothing is left on it for
people. Finishing an image keeps the proposed masks nobody answered (`queue.keep_proposed`).
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from engine.campaigns.actions import body_digest, earlier_action, record_action
from engine.campaigns.campaign import Campaign
from engine.campaigns.db import now
from engine.campaigns.errors import BadInput, Conflict, Forbidden, NotFound
from engine.campaigns.events import record_event
from engine.campaigns.masks import (
    Submission,
    check_client_id,
    check_submission,
    mask_row,
    store_submission,
)
from engine.campaigns.queue import check_lease
from engine.campaigns.state import (
    ClientAction,
    EventKind,
    ImageStatus,
    MaskOrigin,
    MaskState,
    Verdict,
)

STATE_AFTER = {Verdict.KEEP: MaskState.KEPT, Verdict.REJECT: MaskState.REJECTED}


@dataclass(frozen=True)
class Answer:
    """A person's one-key answer on a proposed mask: keep (accept) or reject; missing:
    "something is missing here"; seconds: from the mask shown to the answer."""

    client_id: str
    lease_id: str
    mask_id: int
    verdict: Verdict
    missing: bool = False
    seconds: float = 0.0


@dataclass(frozen=True)
class VerifierAnswer:
    """The verifier model accepts a proposed mask with `score` (above its threshold)."""

    mask_id: int
    score: float


def answer_proposed(campaign: Campaign, annotator_id: int, answer: Answer) -> int:
    """Store a person's answer; returns its review id (a retry with the same client id
    returns the first one). Conflict when the mask was answered already."""
    if answer.verdict not in STATE_AFTER:
        raise BadInput(f"verdict must be {Verdict.KEEP} or {Verdict.REJECT}, got {answer.verdict}")
    check_client_id(answer.client_id)
    action = ClientAction.ANSWER_PROPOSED
    what = {"mask_id": answer.mask_id, "verdict": str(answer.verdict), "missing": answer.missing}
    digest = body_digest(what)
    with campaign.db.write() as db:
        earlier = earlier_action(db, annotator_id, answer.client_id, action, digest)
        if earlier is not None:
            return earlier
        row = _unanswered(db, answer.mask_id)
        check_lease(db, answer.lease_id, annotator_id, row["image_id"])
        _set_state(db, answer.mask_id, STATE_AFTER[answer.verdict], annotator_id)
        if answer.verdict == Verdict.REJECT:
            record_event(
                db,
                EventKind.REJECT_PREFILLED,
                image_id=row["image_id"],
                annotator_id=annotator_id,
                detail={"mask_id": answer.mask_id},
            )
        review_id = _insert_review(
            db,
            row,
            answer.verdict,
            annotator_id=annotator_id,
            client_id=answer.client_id,
            missing=answer.missing,
            seconds=answer.seconds,
        )
        record_action(
            db, annotator_id, answer.client_id, action, digest=digest, result_id=review_id
        )
        return review_id


def correct_proposed(
    campaign: Campaign, annotator_id: int, mask_id: int, submission: Submission
) -> tuple[int, bool]:
    """Store the reviewer's corrected version of proposed mask `mask_id` (a manual mask
    linked to it; its seconds are the review's); returns (the corrected mask's id, created)
    as `masks.submit_mask` does, a retry returning the first. Checked (lease, size, model)
    before it is decoded, as every submitted mask."""
    extra = {"corrects": mask_id}
    checked = check_submission(
        campaign, annotator_id, submission, ClientAction.CORRECT_PROPOSED, extra
    )
    if isinstance(checked, int):
        return checked, False
    with campaign.db.write() as db:
        row = _unanswered(db, mask_id)
        if row["image_id"] != submission.image_id:
            raise Forbidden(f"mask {mask_id} is not on image {submission.image_id}")
        corrected, created = store_submission(db, annotator_id, submission, checked)
        if not created:
            return corrected, False
        db.execute("UPDATE masks SET corrects = ? WHERE mask_id = ?", (mask_id, corrected))
        _set_state(db, mask_id, MaskState.CORRECTED, annotator_id)
        _insert_review(
            db,
            row,
            Verdict.CORRECT,
            annotator_id=annotator_id,
            client_id=submission.client_id,
            seconds=submission.seconds,
        )
        return corrected, True


def record_verifier_answers(
    campaign: Campaign, image_id: int, answers: list[VerifierAnswer], *, verifier_sha256: str
) -> tuple[int, bool]:
    """The verifier accepts `answers` on a queued image (one transaction; masks answered
    meanwhile, or an image leased meanwhile, are left to people). Returns (masks answered,
    whether the image is now done: nothing left on it for people)."""
    with campaign.db.write() as db:
        image = db.execute("SELECT status FROM images WHERE image_id = ?", (image_id,)).fetchone()
        if image is None or image["status"] != ImageStatus.QUEUED:
            return 0, False
        answered = 0
        for answer in answers:
            row = mask_row(db, answer.mask_id)
            if row is None or row["image_id"] != image_id or row["state"] != MaskState.PROPOSED:
                continue
            _set_state(db, answer.mask_id, MaskState.KEPT, None)
            _insert_review(
                db, row, Verdict.KEEP, verifier_sha256=verifier_sha256, score=answer.score
            )
            answered += 1
        done = count_unanswered(db, image_id) == 0
        if done:
            db.execute(
                "UPDATE images SET status = ?, finished_at = ? WHERE image_id = ?",
                (ImageStatus.DONE, now(), image_id),
            )
    return answered, done


def _unanswered(db: sqlite3.Connection, mask_id: int) -> sqlite3.Row:
    row = mask_row(db, mask_id)
    if row is None or row["origin"] != MaskOrigin.PREFILLED:
        raise NotFound(f"no proposed mask {mask_id}")
    if row["state"] != MaskState.PROPOSED:
        raise Conflict(f"mask {mask_id} was answered already ({row['state']})")
    return row


def _set_state(
    db: sqlite3.Connection, mask_id: int, state: MaskState, annotator_id: int | None
) -> None:
    db.execute(
        "UPDATE masks SET state = ?, annotator_id = ?, changed = ? WHERE mask_id = ?",
        (state, annotator_id, now(), mask_id),
    )


def _insert_review(
    db: sqlite3.Connection,
    mask: sqlite3.Row,
    verdict: Verdict,
    *,
    annotator_id: int | None = None,
    client_id: str | None = None,
    missing: bool = False,
    seconds: float | None = None,
    verifier_sha256: str | None = None,
    score: float | None = None,
) -> int:
    cursor = db.execute(
        "INSERT INTO reviews (mask_id, image_id, annotator_id, client_id, verdict, missing, "
        "seconds, verifier_sha256, score, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            mask["mask_id"],
            mask["image_id"],
            annotator_id,
            client_id,
            verdict,
            int(missing),
            seconds,
            verifier_sha256,
            score,
            now(),
        ),
    )
    return int(cursor.lastrowid or 0)


# What other parts read -------------------------------------------------------------------


def count_unanswered(db: sqlite3.Connection, image_id: int) -> int:
    """The image's proposed masks nobody answered yet."""
    row = db.execute(
        "SELECT COUNT(*) FROM masks WHERE image_id = ? AND origin = ? AND state = ?",
        (image_id, MaskOrigin.PREFILLED, MaskState.PROPOSED),
    ).fetchone()
    return int(row[0])


def reviewed_masks(db: sqlite3.Connection) -> list[sqlite3.Row]:
    """Every proposed mask of the finished images with its answer: the mask's columns, the
    review's `verdict`, `missing`, `seconds`, `score` and `reviewer` (the annotator id; None
    for the verifier or an unanswered mask kept when its image was finished), the image's
    `key` and `source`, and the live correction's `corrected_counts` (None without one), by
    image and mask id."""
    return list(
        db.execute(
            "SELECT m.*, r.verdict, r.missing, r.seconds AS review_seconds, r.score, "
            "r.annotator_id AS reviewer, r.verifier_sha256, i.key, i.source, "
            "c.counts AS corrected_counts, c.clicks AS corrected_clicks, "
            "c.brush_strokes AS corrected_strokes FROM masks m "
            "JOIN images i ON i.image_id = m.image_id "
            "LEFT JOIN reviews r ON r.mask_id = m.mask_id "
            "LEFT JOIN masks c ON c.corrects = m.mask_id AND c.state = ? "
            "WHERE m.origin = ? AND i.status = ? ORDER BY m.image_id, m.mask_id",
            (MaskState.ACCEPTED, MaskOrigin.PREFILLED, ImageStatus.DONE),
        ).fetchall()
    )


def added_masks(db: sqlite3.Connection) -> list[sqlite3.Row]:
    """The manual masks of the finished images that correct nothing (what reviewers added:
    what the proposals missed): image_id, counts, height, width, seconds, clicks."""
    return list(
        db.execute(
            "SELECT m.image_id, m.counts, m.height, m.width, m.seconds, m.clicks FROM masks m "
            "JOIN images i ON i.image_id = m.image_id WHERE m.origin = ? AND m.state = ? "
            "AND m.corrects IS NULL AND i.status = ? ORDER BY m.image_id, m.mask_id",
            (MaskOrigin.MANUAL, MaskState.ACCEPTED, ImageStatus.DONE),
        ).fetchall()
    )


def human_answers(db: sqlite3.Connection) -> list[sqlite3.Row]:
    """People's keep / reject answers (what the verifier learns from): the mask's columns,
    `verdict`, the image's `key`, by image and mask id."""
    return list(
        db.execute(
            "SELECT m.*, r.verdict, r.review_id, i.key FROM reviews r "
            "JOIN masks m ON m.mask_id = r.mask_id JOIN images i ON i.image_id = r.image_id "
            "WHERE r.annotator_id IS NOT NULL AND r.verdict IN (?, ?) "
            "ORDER BY r.image_id, r.mask_id",
            (Verdict.KEEP, Verdict.REJECT),
        ).fetchall()
    )


def verifier_waiting(db: sqlite3.Connection) -> list[sqlite3.Row]:
    """The queued images' unanswered proposed masks, for the verifier: the mask's columns
    and the image's `key`, by image and mask id."""
    return list(
        db.execute(
            "SELECT m.*, i.key FROM masks m JOIN images i ON i.image_id = m.image_id "
            "WHERE i.status = ? AND m.origin = ? AND m.state = ? ORDER BY m.image_id, m.mask_id",
            (ImageStatus.QUEUED, MaskOrigin.PREFILLED, MaskState.PROPOSED),
        ).fetchall()
    )


def verifier_counts(db: sqlite3.Connection) -> dict[str, int]:
    """Answers by who gave them, and the images the verifier finished (nothing was left on
    them for people): {"people": n, "verifier": n, "images_finished_by_verifier": n}."""
    row = db.execute(
        "SELECT SUM(annotator_id IS NOT NULL), SUM(annotator_id IS NULL) FROM reviews"
    ).fetchone()
    finished = db.execute(
        "SELECT COUNT(*) FROM images WHERE status = ? AND finished_by IS NULL AND EXISTS "
        "(SELECT 1 FROM reviews r WHERE r.image_id = images.image_id)",
        (ImageStatus.DONE,),
    ).fetchone()
    return {
        "people": int(row[0] or 0),
        "verifier": int(row[1] or 0),
        "images_finished_by_verifier": int(finished[0]),
    }


def people_answers(db: sqlite3.Connection) -> list[sqlite3.Row]:
    """Every answer a person gave: verdict, missing, seconds, image_id."""
    return list(
        db.execute(
            "SELECT verdict, missing, seconds, image_id FROM reviews "
            "WHERE annotator_id IS NOT NULL ORDER BY review_id"
        ).fetchall()
    )
