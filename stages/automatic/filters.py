"""Mask filters as pure functions returning keep masks, and greedy box NMS (torchvision)."""

from __future__ import annotations

import torch
from torchvision.ops import batched_nms, box_iou


def stability_score(logits: torch.Tensor, mask_threshold: float, offset: float) -> torch.Tensor:
    """IoU of the masks thresholded at threshold+offset and threshold-offset: N x H x W -> N."""
    return _count_above(logits, mask_threshold + offset) / _count_above(
        logits, mask_threshold - offset
    )


def _count_above(logits: torch.Tensor, threshold: float) -> torch.Tensor:
    """Pixels above `threshold` per mask, as float."""
    return count_true(logits > threshold).float()


def count_true(masks: torch.Tensor) -> torch.Tensor:
    """True pixels per mask, N x H x W bool -> N int32. Rows are summed into int16 when
    they fit (3x faster than widening every pixel), then the row counts into int32."""
    row_type = torch.int16 if masks.shape[-1] < 2**15 else torch.int32
    return masks.sum(dim=-1, dtype=row_type).sum(dim=-1, dtype=torch.int32)


def keep_by_predicted_iou(iou_preds: torch.Tensor, thresh: float) -> torch.Tensor:
    """Keep masks whose predicted IoU is above `thresh` (0 keeps all)."""
    if thresh <= 0.0:
        return torch.ones_like(iou_preds, dtype=torch.bool)
    return iou_preds > thresh


def keep_by_stability(scores: torch.Tensor, thresh: float) -> torch.Tensor:
    if thresh <= 0.0:
        return torch.ones_like(scores, dtype=torch.bool)
    return scores >= thresh


def keep_by_area_fraction(
    areas: torch.Tensor, image_area: int, max_frac: float | None
) -> torch.Tensor:
    """Drop masks covering `max_frac` of the image or more (None keeps all)."""
    if max_frac is None:
        return torch.ones_like(areas, dtype=torch.bool)
    return areas < max_frac * image_area


def box_iou_matrix(boxes: torch.Tensor) -> torch.Tensor:
    """N x 4 XYXY float -> N x N IoU (areas without +1): torchvision's `box_iou`."""
    return box_iou(boxes, boxes)


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_thresh: float) -> torch.Tensor:
    """Greedy NMS with torchvision's compiled op (what the official generator uses):
    indices of kept boxes by descending score; a box is suppressed by a kept, higher-ranked
    box whose IoU with it exceeds iou_thresh. All boxes form one category."""
    if boxes.shape[0] == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    categories = torch.zeros(boxes.shape[0], dtype=torch.long, device=boxes.device)
    return batched_nms(boxes.float(), scores.float(), categories, iou_thresh)
