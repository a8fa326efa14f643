"""Which detections are right, and the "confident" score threshold for a stated precision.

A detection is right when it matches an annotated object at IoU >= 0.5: detections are taken
best score first and each one takes the unmatched object it overlaps most (COCO's greedy
rule), so an object counts once. The confident threshold is the lowest score at which the
detections scoring at least that much reach the target precision on held-out data: the most
recall the precision allows. Prefilled masks come from detections above it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torchvision.ops import box_iou

MATCH_IOU = 0.5


def match_detections(
    boxes_xyxy: np.ndarray, scores: np.ndarray, objects_xyxy: np.ndarray, *, iou_thresh: float
) -> np.ndarray:
    """For each detection (N x 4, N scores), whether it matches an object (M x 4) at IoU >=
    iou_thresh, each object matched at most once, detections taken best score first.
    Returns N bool in the detections' given order."""
    right = np.zeros(len(scores), dtype=bool)
    if len(scores) == 0 or len(objects_xyxy) == 0:
        return right
    ious = box_iou(
        torch.as_tensor(np.asarray(boxes_xyxy, np.float64)),
        torch.as_tensor(np.asarray(objects_xyxy, np.float64)),
    ).numpy()
    free = np.ones(len(objects_xyxy), dtype=bool)
    for index in np.argsort(-np.asarray(scores), kind="stable"):
        candidates = np.where(free & (ious[index] >= iou_thresh), ious[index], -1.0)
        best = int(np.argmax(candidates))
        if candidates[best] >= 0:
            right[index], free[best] = True, False
    return right


@dataclass(frozen=True)
class ThresholdChoice:
    """score_thresh: detections with score >= it are confident; precision and recall of
    the confident detections on the data it was chosen on; achieved: whether any threshold
    reaches target_precision (if not, score_thresh is above every score seen)."""

    score_thresh: float
    target_precision: float
    precision: float
    recall: float
    num_confident: int
    achieved: bool


def precision_recall_at(
    scores: np.ndarray, right: np.ndarray, num_objects: int, score_thresh: float
) -> tuple[float, float, int]:
    """(precision, recall, count) of the detections scoring >= score_thresh; precision is 1
    when there are none."""
    chosen = np.asarray(scores) >= score_thresh
    count = int(chosen.sum())
    hits = int(np.asarray(right)[chosen].sum())
    precision = hits / count if count else 1.0
    return precision, (hits / num_objects if num_objects else 0.0), count


def choose_threshold(
    scores: np.ndarray, right: np.ndarray, num_objects: int, *, target_precision: float
) -> ThresholdChoice:
    """The lowest score threshold whose detections (score >= it) have precision >=
    target_precision. scores, right: every detection of the held-out images (N each)."""
    if not 0 < target_precision <= 1:
        raise ValueError(f"target_precision must be in (0, 1], got {target_precision}")
    scores = np.asarray(scores, np.float64)
    order = np.argsort(-scores, kind="stable")
    ranked, hits = scores[order], np.cumsum(np.asarray(right)[order])
    counts = np.arange(1, len(ranked) + 1)
    # A threshold keeps every detection tied with it: only the last of each tie counts.
    last_of_tie = np.append(ranked[1:] != ranked[:-1], True) if len(ranked) else ranked > 0
    good = last_of_tie & (hits >= target_precision * counts - 1e-9)
    if not good.any():
        above_all = math.nextafter(float(ranked[0]), math.inf) if len(ranked) else 1.0
        return ThresholdChoice(above_all, target_precision, 1.0, 0.0, 0, False)
    last = int(np.nonzero(good)[0][-1])
    recall = float(hits[last]) / num_objects if num_objects else 0.0
    return ThresholdChoice(
        score_thresh=float(ranked[last]),
        target_precision=target_precision,
        precision=float(hits[last]) / (last + 1),
        recall=recall,
        num_confident=last + 1,
        achieved=True,
    )
