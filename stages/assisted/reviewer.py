"""A scripted reviewer: how a simulated person answers a proposed mask, given the true objects.

Audit (the paper's section 5, where professionals corrected each automatic mask): the mask is
compared with the true object it overlaps most; kept when it is already that object (IoU >=
`keep_iou`), rejected when it is no object at all (IoU < `correct_from_iou`), else corrected
as the page corrects a mask: starting from the mask, clicks at the centre of the largest error
region decoded with the mask as the decoder's mask prompt (a click that does not help is
undone), then brush and eraser strokes that each fix the largest wrong region, until the mask
reaches `correct_iou` or the budget is spent. Verify (SAM 3's verification queue): one key,
accept when the mask is at least `accept_iou` close to a true object. Every action has a
simulated cost (seconds), which gives masks reviewed per minute.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

import numpy as np

from stages.assisted.annotator import Decode, brush_stroke
from stages.assisted.prompts import largest_error_click, mask_iou

MASK_PROMPT_LOGIT = 10.0  # a binary mask as the decoder's mask prompt: +inside, -outside


class Decision(Enum):
    KEEP = "keep"
    CORRECT = "correct"
    REJECT = "reject"


@dataclass(frozen=True)
class ReviewPolicy:
    """How the simulated reviewer works (seconds are simulated, not waited).

    keep_iou: keep a mask at least this close (IoU) to its true object; correct_from_iou:
    below this the mask is rejected, between the two it is corrected; correct_iou: correct
    until the mask reaches this IoU, with at most max_clicks clicks then max_strokes strokes;
    accept_iou: verify mode, accept a mask at least this close to a true object;
    seconds_to_look (per mask shown), seconds_per_key (keep, reject, accept),
    seconds_per_click, seconds_per_stroke: the simulated costs; min_area: true objects
    smaller than this (pixels) are not added when missing."""

    keep_iou: float = 0.95
    correct_from_iou: float = 0.5
    correct_iou: float = 0.97
    max_clicks: int = 2
    max_strokes: int = 8
    accept_iou: float = 0.9
    seconds_to_look: float = 1.0
    seconds_per_key: float = 0.5
    seconds_per_click: float = 2.0
    seconds_per_stroke: float = 4.0
    min_area: int = 16

    def __post_init__(self) -> None:
        for name in ("keep_iou", "correct_from_iou", "correct_iou", "accept_iou"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"reviewer.{name} must be in [0, 1], got {getattr(self, name)}")
        if self.correct_from_iou > self.keep_iou:
            raise ValueError(
                f"reviewer.correct_from_iou ({self.correct_from_iou}) must be <= keep_iou "
                f"({self.keep_iou})"
            )
        for name in ("max_clicks", "max_strokes", "min_area"):
            if getattr(self, name) < 0:
                raise ValueError(f"reviewer.{name} must be >= 0, got {getattr(self, name)}")


@dataclass
class Review:
    """A reviewer's answer: decision; mask: the corrected mask (H x W bool, CORRECT only);
    iou: of the proposed mask with its true object (0 without any), corrected_iou: of the
    correction; clicks (prompt points in stored-image pixels with labels) and strokes made;
    seconds spent."""

    decision: Decision
    iou: float
    seconds: float
    mask: np.ndarray | None = None
    corrected_iou: float | None = None
    points: list[list[float]] = field(default_factory=list)
    strokes: int = 0
    clicks: int = 0


def best_match(mask: np.ndarray, targets: np.ndarray | None) -> tuple[int, float]:
    """The true object (index into targets, N x H x W bool) the mask overlaps most, and the
    IoU; (-1, 0.0) without any."""
    if targets is None or len(targets) == 0:
        return -1, 0.0
    ious = [mask_iou(mask, target) for target in targets]
    best = int(np.argmax(ious))
    return best, float(ious[best])


def audit_mask(
    decode: Decode,
    proposed: np.ndarray,
    targets: np.ndarray | None,
    policy: ReviewPolicy,
    *,
    low_res_hw: tuple[int, int],
    input_hw: tuple[int, int],
) -> Review:
    """Keep, correct or reject `proposed` (H x W bool) against the true objects (see the
    module docstring). low_res_hw, input_hw: the decoder's low-res frame and the unpadded
    model-input size, for the mask prompt."""
    index, iou = best_match(proposed, targets)
    seconds = policy.seconds_to_look
    if iou >= policy.keep_iou:
        return Review(Decision.KEEP, iou, seconds + policy.seconds_per_key)
    if index < 0 or iou < policy.correct_from_iou:
        return Review(Decision.REJECT, iou, seconds + policy.seconds_per_key)
    assert targets is not None
    prompt = mask_prompt(proposed, low_res_hw=low_res_hw, input_hw=input_hw)
    review = correct_mask(decode, proposed, targets[index], policy, prompt)
    review.iou, review.seconds = iou, review.seconds + seconds
    return review


def correct_mask(
    decode: Decode,
    start: np.ndarray,
    target: np.ndarray,
    policy: ReviewPolicy,
    prompt: np.ndarray,
) -> Review:
    """`start` corrected toward `target`: clicks decoded with the previous logits as mask
    prompt (first: `prompt`, the start mask's), each kept only if it helps; then strokes."""
    mask, logits, iou = start, prompt, mask_iou(start, target)
    review = Review(Decision.CORRECT, iou, 0.0)
    while iou < policy.correct_iou and review.clicks < policy.max_clicks:
        x, y, label = largest_error_click(mask, target)
        points = [*review.points, [x, y, label]]
        array = np.asarray(points, dtype=np.float64)
        shown = decode(array[:, :2], array[:, 2].astype(np.int64), None, logits, False)
        review.clicks += 1
        review.seconds += policy.seconds_per_click
        better = mask_iou(shown.masks[0], target)
        if better <= iou:
            break  # the click made it worse: undone, on to the brush
        mask, logits, iou, review.points = shown.masks[0], shown.low_res[0], better, points
    while iou < policy.correct_iou and review.strokes < policy.max_strokes:
        mask = brush_stroke(mask, target)
        iou = mask_iou(mask, target)
        review.strokes += 1
        review.seconds += policy.seconds_per_stroke
    review.mask, review.corrected_iou = mask, iou
    return review


def verify_mask(proposed: np.ndarray, targets: np.ndarray | None, policy: ReviewPolicy) -> Review:
    """Accept (KEEP) or reject with one key."""
    _, iou = best_match(proposed, targets)
    decision = Decision.KEEP if iou >= policy.accept_iou else Decision.REJECT
    return Review(decision, iou, policy.seconds_to_look + policy.seconds_per_key)


def mask_prompt(
    mask: np.ndarray, *, low_res_hw: tuple[int, int], input_hw: tuple[int, int]
) -> np.ndarray:
    """A binary H x W mask as the decoder's mask prompt (low-res logits, h x w float32):
    low-res pixel (u, v) covers model-input pixels [4u, 4u + 4) x [4v, 4v + 4); it takes the
    stored pixel under its centre, +MASK_PROMPT_LOGIT inside the mask and -MASK_PROMPT_LOGIT
    outside it and over the padding. The page does the same (static/js/correction.js)."""
    height, width = mask.shape
    rows, cols = low_res_hw
    centre_y = 4 * np.arange(rows) + 2
    centre_x = 4 * np.arange(cols) + 2
    ys = np.floor(centre_y * height / input_hw[0]).astype(np.int64)
    xs = np.floor(centre_x * width / input_hw[1]).astype(np.int64)
    inside_y, inside_x = centre_y < input_hw[0], centre_x < input_hw[1]
    picked = mask[np.clip(ys, 0, height - 1)][:, np.clip(xs, 0, width - 1)]
    picked &= inside_y[:, None] & inside_x[None, :]
    return np.where(picked, MASK_PROMPT_LOGIT, -MASK_PROMPT_LOGIT).astype(np.float32)
