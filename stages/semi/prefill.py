"""Stage 2's prefilled masks: SAM turns the detector's confident boxes into masks, and only
good, distinct ones are kept for the annotators to review.

Each box is a box prompt (the single-mask output); a mask is kept when its predicted IoU and
stability pass their thresholds and it is not tiny; box NMS on the masks' own boxes, ranked
by predicted IoU, removes duplicates; then, in that order, a mask mostly covered by masks
kept before it (over `max_covered` of its area) is dropped.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from model import SamPredictor
from model.transforms import scale_boxes
from stages.automatic.filters import (
    keep_by_predicted_iou,
    keep_by_stability,
    nms,
    stability_score,
)
from stages.automatic.geometry import masks_to_boxes_xyxy


@dataclass(frozen=True)
class PrefillFilter:
    """pred_iou_thresh / stability_score_thresh / stability_score_offset / box_nms_thresh:
    as the automatic generator's; max_covered: drop a mask whose area is covered by the
    masks kept before it over this fraction; min_area: smallest mask kept (pixels)."""

    pred_iou_thresh: float = 0.88
    stability_score_thresh: float = 0.95
    stability_score_offset: float = 1.0
    box_nms_thresh: float = 0.7
    max_covered: float = 0.9
    min_area: int = 16

    def __post_init__(self) -> None:
        for name in ("pred_iou_thresh", "stability_score_thresh", "box_nms_thresh", "max_covered"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"prefill.{name} must be in [0, 1], got {getattr(self, name)}")
        if self.min_area < 0:
            raise ValueError(f"prefill.min_area must be >= 0, got {self.min_area}")


@dataclass
class PrefilledMask:
    """mask: H x W bool at the image's size; box_xyxy: the box prompt; the scores
    (detector_score None for a box that came from a label file)."""

    mask: np.ndarray
    box_xyxy: list[float]
    detector_score: float | None
    predicted_iou: float
    stability_score: float


@torch.inference_mode()
def masks_from_boxes(
    predictor: SamPredictor,
    boxes_xyxy: np.ndarray,
    detector_scores: np.ndarray,
    settings: PrefillFilter,
) -> list[PrefilledMask]:
    """The kept masks of the predictor's current image for N boxes (N x 4 XYXY in the
    image's pixels), best first (see the module docstring)."""
    if len(boxes_xyxy) == 0:
        return []
    logits, iou = _box_logits(predictor, boxes_xyxy)
    stability = stability_score(logits, 0.0, settings.stability_score_offset)
    binary = logits > 0
    keep = keep_by_predicted_iou(iou, settings.pred_iou_thresh)
    keep &= keep_by_stability(stability, settings.stability_score_thresh)
    keep &= binary.flatten(1).sum(1) >= max(settings.min_area, 1)
    index = keep.nonzero().flatten()
    if len(index) == 0:
        return []
    ranked = index[
        nms(masks_to_boxes_xyxy(binary[index]).float(), iou[index], settings.box_nms_thresh)
    ]
    return [
        PrefilledMask(
            mask=binary[i].cpu().numpy(),
            box_xyxy=[float(v) for v in boxes_xyxy[i]],
            detector_score=float(detector_scores[i]),
            predicted_iou=float(iou[i]),
            stability_score=float(stability[i]),
        )
        for i in _not_covered(binary, ranked.tolist(), settings.max_covered)
    ]


@torch.inference_mode()
def masks_for_boxes(
    predictor: SamPredictor, boxes_xyxy: np.ndarray, *, stability_offset: float = 1.0
) -> list[PrefilledMask]:
    """One mask per given box (a person's box from a label file, not a detection): no
    filter, no NMS; only a box whose mask is empty gives none. detector_score is None."""
    if len(boxes_xyxy) == 0:
        return []
    logits, iou = _box_logits(predictor, boxes_xyxy)
    stability = stability_score(logits, 0.0, stability_offset)
    binary = logits > 0
    return [
        PrefilledMask(
            mask=binary[i].cpu().numpy(),
            box_xyxy=[float(v) for v in boxes_xyxy[i]],
            detector_score=None,
            predicted_iou=float(iou[i]),
            stability_score=float(stability[i]),
        )
        for i in range(len(boxes_xyxy))
        if bool(binary[i].any())
    ]


def _box_logits(predictor: SamPredictor, boxes_xyxy: np.ndarray) -> tuple[torch.Tensor, ...]:
    """The single-mask logits (N x H x W at the image's size) and predicted IoUs (N) of the
    predictor's current image for N boxes (XYXY in the image's pixels)."""
    assert predictor.original_size is not None
    model_boxes = scale_boxes(boxes_xyxy, predictor.original_size, predictor.model.img_size)
    boxes = torch.as_tensor(model_boxes, dtype=torch.float32, device=predictor.device)
    logits, iou, _ = predictor.predict_torch(
        None, None, boxes=boxes, multimask_output=False, return_logits=True
    )
    return logits[:, 0].float(), iou[:, 0].float()


def _not_covered(binary: torch.Tensor, order: list[int], max_covered: float) -> list[int]:
    """The masks in `order` that masks kept before them cover at most `max_covered` of."""
    kept: list[int] = []
    union = torch.zeros_like(binary[0])
    for i in order:
        mask = binary[i]
        covered = (mask & union).sum().item() / max(mask.sum().item(), 1)
        if covered > max_covered:
            continue
        kept.append(i)
        union |= mask
    return kept
