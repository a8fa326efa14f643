"""A scripted annotator: how a simulated person segments one object with SAM's help.

It prompts as the paper's training simulation does: a first prompt that is, with equal
chance by default, a uniform foreground point or the object's box with noise; then clicks
at the centre of the largest error region (foreground where the mask misses the object,
background where it spills over), each feeding the previous low-res logits back; once the
click budget is spent, brush strokes that each fix the largest wrong region. It accepts
when the mask reaches `iou_target`, and moves on (skips the object) when the object takes
longer than `skip_after_s` without reaching `min_accept_iou`. Every action has a simulated
cost, which gives the time per mask.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch
from scipy import ndimage

from model import SamPredictor
from stages.assisted.prompts import largest_error_click, mask_iou, noisy_boxes, uniform_points

if TYPE_CHECKING:  # onnxruntime is imported only where a decoder file is run
    from stages.assisted.onnx_decoder import OnnxDecoder


@dataclass(frozen=True)
class AnnotatorPolicy:
    """How the simulated person works (seconds are simulated, not waited).

    iou_target: accept once the mask reaches this IoU with the true object; max_clicks:
    click budget per object, then max_strokes brush strokes; min_accept_iou: below this
    when time is up, skip the object; first_prompt_box: chance that the first prompt is a
    noisy box rather than a point; seconds_per_click / seconds_per_stroke /
    seconds_to_find (per object): the simulated costs that make time per mask;
    seconds_per_image: time budget per image (then finish it: masks per image follow);
    skip_after_s: move on from an object after this long (the paper's 30 s); min_area:
    true objects smaller than this (pixels) are not annotated."""

    iou_target: float = 0.9
    max_clicks: int = 6
    max_strokes: int = 4
    min_accept_iou: float = 0.75
    first_prompt_box: float = 0.5
    seconds_per_click: float = 2.0
    seconds_per_stroke: float = 4.0
    seconds_to_find: float = 2.0
    seconds_per_image: float = 300.0
    skip_after_s: float = 30.0
    min_area: int = 16

    def __post_init__(self) -> None:
        for name in ("iou_target", "min_accept_iou", "first_prompt_box"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"annotator.{name} must be in [0, 1], got {getattr(self, name)}")
        for name in ("max_clicks", "max_strokes", "min_area"):
            if getattr(self, name) < 0:
                raise ValueError(f"annotator.{name} must be >= 0, got {getattr(self, name)}")
        if self.max_clicks < 1:
            raise ValueError(f"annotator.max_clicks must be >= 1, got {self.max_clicks}")


@dataclass(frozen=True)
class Prediction:
    """What the decoder shows: masks M x H x W bool, predicted IoUs M, low-res logits
    M x h x w (fed back with the next prompt)."""

    masks: np.ndarray
    iou: np.ndarray
    low_res: np.ndarray


# (points N x 2 XY or None, labels N or None, box XYXY or None, previous low-res logits
# h x w or None, multimask) -> Prediction, in stored-image pixels.
Decode = Callable[
    [np.ndarray | None, np.ndarray | None, np.ndarray | None, np.ndarray | None, bool], Prediction
]


@dataclass
class ObjectOutcome:
    accepted: bool
    mask: np.ndarray | None
    iou: float
    clicks: int
    strokes: int
    seconds: float
    points: list[list[float]] = field(default_factory=list)
    box: list[float] | None = None
    predicted_iou: float | None = None


def annotate_object(
    decode: Decode, target: np.ndarray, policy: AnnotatorPolicy, rng: np.random.Generator
) -> ObjectOutcome:
    """Segment `target` (H x W bool) with the decoder's help; see the module docstring."""
    outcome = ObjectOutcome(False, None, 0.0, 0, 0, policy.seconds_to_find)
    box = None
    points: list[list[float]] = []
    if rng.random() < policy.first_prompt_box:
        box = noisy_boxes(torch.from_numpy(target)[None], rng)[0].numpy().astype(np.float64)
        outcome.box = box.tolist()
    else:
        xy = uniform_points(torch.from_numpy(target)[None], rng)[0].tolist()
        points.append([xy[0], xy[1], 1])
    predicted, logits, predicted_iou = _decode_first(decode, points, box, target, outcome)
    _spend(outcome, policy.seconds_per_click)
    while outcome.iou < policy.iou_target and outcome.clicks < policy.max_clicks:
        if outcome.seconds > policy.skip_after_s:
            break
        x, y, label = largest_error_click(predicted, target)
        points.append([x, y, label])
        shown = decode(*_as_arrays(points), box, logits, False)
        predicted, logits, predicted_iou = shown.masks[0], shown.low_res[0], float(shown.iou[0])
        outcome.iou = mask_iou(predicted, target)
        _spend(outcome, policy.seconds_per_click)
    while outcome.iou < policy.iou_target and outcome.strokes < policy.max_strokes:
        if outcome.seconds > policy.skip_after_s:
            break
        predicted = brush_stroke(predicted, target)
        outcome.iou = mask_iou(predicted, target)
        outcome.strokes += 1
        outcome.seconds += policy.seconds_per_stroke
    outcome.points = points
    outcome.predicted_iou = predicted_iou
    outcome.accepted = outcome.iou >= policy.iou_target or (
        outcome.iou >= policy.min_accept_iou and outcome.seconds <= policy.skip_after_s
    )
    outcome.mask = predicted if outcome.accepted and predicted.any() else None
    outcome.accepted = outcome.mask is not None
    return outcome


def _decode_first(
    decode: Decode,
    points: list[list[float]],
    box: np.ndarray | None,
    target: np.ndarray,
    outcome: ObjectOutcome,
) -> tuple[np.ndarray, np.ndarray, float]:
    """The first prompt: with a single point, the best of the three multimask outputs (the
    page lets the annotator cycle through them)."""
    single_point = box is None and len(points) == 1
    shown = decode(*_as_arrays(points), box, None, single_point)
    ious = [mask_iou(mask, target) for mask in shown.masks]
    chosen = int(np.argmax(ious)) if single_point else 0
    outcome.iou = ious[chosen]
    return shown.masks[chosen], shown.low_res[chosen], float(shown.iou[chosen])


def _spend(outcome: ObjectOutcome, seconds: float) -> None:
    outcome.clicks += 1
    outcome.seconds += seconds


def _as_arrays(points: list[list[float]]) -> tuple[np.ndarray | None, np.ndarray | None]:
    if not points:
        return None, None
    array = np.asarray(points, dtype=np.float64)
    return array[:, :2], array[:, 2].astype(np.int64)


def brush_stroke(predicted: np.ndarray, target: np.ndarray) -> np.ndarray:
    """One brush or eraser stroke: the largest connected wrong region set right."""
    errors = predicted ^ target
    labels, count = ndimage.label(errors)
    if count == 0:
        return predicted
    sizes = np.bincount(labels.ravel())[1:]
    largest = labels == int(np.argmax(sizes)) + 1
    fixed = predicted.copy()
    fixed[largest] = target[largest]
    return fixed


def onnx_decode(session: OnnxDecoder, embedding: np.ndarray, size: tuple[int, int]) -> Decode:
    """The decoder as the page runs it: the exported decoder on one image's stored
    embedding (C x h x w), for an image of `size` (H, W); its first output is the single
    mask, the next three the multimask ones."""

    def decode(
        points: np.ndarray | None,
        labels: np.ndarray | None,
        box: np.ndarray | None,
        mask_input: np.ndarray | None,
        multimask: bool,
    ) -> Prediction:
        out = session.run(
            embedding, points=points, labels=labels, box=box, mask_input=mask_input, orig_size=size
        )
        chosen = slice(1, 4) if multimask else slice(0, 1)
        return Prediction(out.masks[chosen] > 0, out.iou[chosen], out.low_res[chosen])

    return decode


def predictor_decode(predictor: SamPredictor) -> Decode:
    """The same decoder run by `predictor` in this process on its set image (torch, for
    scripted measurements outside a campaign)."""

    def decode(
        points: np.ndarray | None,
        labels: np.ndarray | None,
        box: np.ndarray | None,
        mask_input: np.ndarray | None,
        multimask: bool,
    ) -> Prediction:
        logits, iou, low_res = predictor.predict(
            points,
            labels,
            box,
            None if mask_input is None else mask_input[None],
            multimask_output=multimask,
            return_logits=True,
        )
        return Prediction(logits > 0, iou, low_res)

    return decode
