"""Scripted reviewers for the audit and verify modes, over the HTTP API as the page works:
`saengine audit simulate` and `saengine verify simulate`.

Both are scripted annotators (`engine.campaigns.simulate`: the lease loop, the truth matched
by source, the log, the time budget) that answer the proposed masks of each image as
`stages.assisted.reviewer` decides: the auditor keeps, corrects (clicks decoded with the
mask as the mask prompt, then brush strokes) or rejects each one, then adds the true objects
nothing covers, as a scripted annotator does; the verifier answers each one with one key
(accept or reject, and "something is missing here" on an image's last mask when a true
object has no proposed mask), then finishes the image. The seconds sent with each answer
are the simulated ones (`ReviewPolicy`), the reports' clock.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np

from engine.campaigns.client import new_client_id
from engine.campaigns.masks import decode_rle
from engine.campaigns.simulate import (
    COVERED_IOU,
    AnnotatorReport,
    ScriptedAnnotator,
    simulate,
)
from engine.campaigns.state import MaskOrigin, MaskState, Verdict
from stages.assisted.annotator import ObjectOutcome, Prediction
from stages.assisted.prompts import mask_iou
from stages.assisted.reviewer import Decision, Review, ReviewPolicy, audit_mask, verify_mask


@dataclass
class ReviewerReport(AnnotatorReport):
    """An annotator's report (masks: the masks added or corrected) with the answers."""

    kept: int = 0
    corrected: int = 0
    answered: int = 0


def proposed_masks(lease: dict[str, Any]) -> list[dict[str, Any]]:
    """The lease's proposed masks nobody answered yet."""
    return [
        m
        for m in lease["masks"]
        if m["origin"] == MaskOrigin.PREFILLED and m["state"] == MaskState.PROPOSED
    ]


class ScriptedAuditor(ScriptedAnnotator):
    """Keeps, corrects or rejects each proposed mask, then adds what is missing."""

    def __init__(self, *, policy_review: ReviewPolicy, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.review = policy_review
        self.report = ReviewerReport(self.report.name)

    def _review_prefilled(
        self, lease: dict[str, Any], targets: np.ndarray | None, decode: Callable[..., Prediction]
    ) -> list[np.ndarray]:
        input_hw = tuple(lease["model"]["input_size"])
        side = max(input_hw) // 4
        final = []
        for mask in proposed_masks(lease):
            pixels = decode_rle(mask["rle"])
            review = audit_mask(
                decode,
                pixels,
                targets,
                self.review,
                low_res_hw=(side, side),
                input_hw=(int(input_hw[0]), int(input_hw[1])),
            )
            self._send(lease, mask["mask_id"], review)
            if review.decision == Decision.KEEP:
                final.append(pixels)
            elif review.mask is not None:
                final.append(review.mask)
        return final

    def _send(self, lease: dict[str, Any], mask_id: int, review: Review) -> None:
        report = self.report
        assert isinstance(report, ReviewerReport)
        report.answered += 1
        report.seconds += review.seconds
        report.clicks += review.clicks
        if review.decision != Decision.CORRECT or review.mask is None or not review.mask.any():
            verdict = Verdict.KEEP if review.decision == Decision.KEEP else Verdict.REJECT
            answer(self.client, lease, mask_id, verdict, seconds=review.seconds)
            report.kept += verdict == Verdict.KEEP
            report.rejected += verdict == Verdict.REJECT
            return
        outcome = ObjectOutcome(
            accepted=True,
            mask=review.mask,
            iou=review.corrected_iou or 0.0,
            clicks=review.clicks,
            strokes=review.strokes,
            seconds=review.seconds,
            points=review.points,
        )
        self._submit(lease, outcome, path=f"/api/proposed/{mask_id}/correct")
        report.corrected += 1


class ScriptedVerifier(ScriptedAnnotator):
    """Answers each proposed mask with one key, then finishes the image (no decoder)."""

    def __init__(self, *, policy_review: ReviewPolicy, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.review = policy_review
        self.report = ReviewerReport(self.report.name)

    def work_on(self, lease: dict[str, Any]) -> None:
        image = lease["image"]
        targets = self.truth.masks(self._source(lease), (image["height"], image["width"]))
        proposed = proposed_masks(lease)
        pixels = [decode_rle(mask["rle"]) for mask in proposed]
        missing = _something_missing(pixels, targets, self.review.min_area)
        report = self.report
        assert isinstance(report, ReviewerReport)
        for index, (mask, shown) in enumerate(zip(proposed, pixels)):
            review = verify_mask(shown, targets, self.review)
            verdict = Verdict.KEEP if review.decision == Decision.KEEP else Verdict.REJECT
            last = index == len(proposed) - 1
            answer(
                self.client,
                lease,
                mask["mask_id"],
                verdict,
                seconds=review.seconds,
                missing=missing and last,
            )
            report.answered += 1
            report.kept += verdict == Verdict.KEEP
            report.rejected += verdict == Verdict.REJECT
            report.seconds += review.seconds
            self._keep_alive(lease)
        self.client.json(
            "POST", f"/api/leases/{lease['lease_id']}/finish", json={"client_id": new_client_id()}
        )
        report.images += 1


def _something_missing(
    proposed: list[np.ndarray], targets: np.ndarray | None, min_area: int
) -> bool:
    """A true object (of at least min_area pixels) that no proposed mask covers."""
    if targets is None:
        return False
    return any(
        target.sum() >= min_area and not any(mask_iou(m, target) >= COVERED_IOU for m in proposed)
        for target in targets
    )


def answer(
    client: Any,
    lease: dict[str, Any],
    mask_id: int,
    verdict: Verdict,
    *,
    seconds: float,
    missing: bool = False,
) -> None:
    client.json(
        "POST",
        f"/api/proposed/{mask_id}/answer",
        json={
            "client_id": new_client_id(),
            "lease_id": lease["lease_id"],
            "verdict": str(verdict),
            "missing": missing,
            "seconds": seconds,
        },
    )


def simulate_reviewers(
    campaign: Any,
    *,
    auditor: bool,
    review: ReviewPolicy,
    **simulation: Any,
) -> list[AnnotatorReport]:
    """`engine.campaigns.simulate.simulate` (its keyword arguments: url, truth, annotators,
    policy (how missing objects are added), seed, max_images) with scripted auditors
    (auditor=True) or verifiers that review as `review` says."""
    kind = ScriptedAuditor if auditor else ScriptedVerifier
    return simulate(campaign, make=partial(kind, policy_review=review), **simulation)
