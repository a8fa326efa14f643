"""Detector targets from masks: one box per mask, and the change of frame between the stored
image's pixels and the model input's.

Boxes are XYXY pixel extents: x1 is the mask's first column and x2 its last column + 1 (so a
one-pixel mask is a 1 x 1 box). SA-1B's `bbox` field has no +1 on its far side; extents are
what a detector's continuous coordinates mean, and scaling them keeps small boxes non-empty.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from pycocotools import mask as mask_utils
from torchvision.ops import masks_to_boxes

from model.transforms import longest_side_shape

MASK_CHUNK = 16  # masks decoded at a time (full-resolution SA-1B masks are large)


def boxes_from_masks(masks: torch.Tensor) -> torch.Tensor:
    """N x H x W masks (bool or {0, 1}) -> N x 4 float32 XYXY pixel extents; empty masks
    give an all-zero row."""
    if len(masks) == 0:
        return torch.zeros(0, 4)
    boxes = masks_to_boxes(masks.to(torch.uint8)).float()
    boxes[:, 2:] += 1
    empty = ~masks.flatten(1).bool().any(dim=1)
    boxes[empty] = 0
    return boxes


def _coco_rle(segmentation: dict[str, Any]) -> dict[str, Any]:
    height, width = segmentation["size"]
    if isinstance(segmentation["counts"], list):
        return dict(mask_utils.frPyObjects(segmentation, height, width))
    return {"size": [height, width], "counts": segmentation["counts"]}


def boxes_from_segmentations(
    segmentations: Sequence[dict[str, Any]],
) -> tuple[np.ndarray, np.ndarray]:
    """COCO RLEs (compressed or not, as in SA-1B JSON) -> (N x 4 float32 XYXY pixel extents,
    N int64 mask areas in pixels). Decoded MASK_CHUNK masks at a time."""
    boxes, areas = [np.zeros((0, 4), np.float32)], [np.zeros(0, np.int64)]
    for start in range(0, len(segmentations), MASK_CHUNK):
        rles = [_coco_rle(s) for s in segmentations[start : start + MASK_CHUNK]]
        decoded = mask_utils.decode(rles)  # H x W x n, Fortran order
        masks = torch.from_numpy(np.ascontiguousarray(decoded.transpose(2, 0, 1)))
        boxes.append(boxes_from_masks(masks).numpy())
        areas.append(masks.flatten(1).sum(1, dtype=torch.int64).numpy())
    return np.concatenate(boxes), np.concatenate(areas)


def frame_factors(original_size: tuple[int, int], image_size: int) -> tuple[float, float]:
    """(x, y) factors from stored-image pixels to model-input pixels (long side = image_size,
    each side rounded as SAM's predictor resizes)."""
    height, width = original_size
    new_h, new_w = longest_side_shape(height, width, image_size)
    return new_w / width, new_h / height


def to_model_frame(
    boxes_xyxy: np.ndarray, original_size: tuple[int, int], image_size: int
) -> np.ndarray:
    """N x 4 XYXY in stored-image pixels -> model-input pixels (float32)."""
    fx, fy = frame_factors(original_size, image_size)
    return (np.asarray(boxes_xyxy, np.float64) * [fx, fy, fx, fy]).astype(np.float32)


def to_original_frame(
    boxes_xyxy: np.ndarray, original_size: tuple[int, int], image_size: int
) -> np.ndarray:
    """N x 4 XYXY in model-input pixels -> stored-image pixels, clipped to the image."""
    fx, fy = frame_factors(original_size, image_size)
    boxes = np.asarray(boxes_xyxy, np.float64) / [fx, fy, fx, fy]
    height, width = original_size
    return np.clip(boxes, 0, [width, height, width, height]).astype(np.float32)


def training_boxes(
    boxes_xyxy: np.ndarray, original_size: tuple[int, int], image_size: int, *, min_side: float
) -> torch.Tensor:
    """The boxes a detector trains on: in model-input pixels, those whose both sides are at
    least min_side there (smaller ones cannot be localized at the pyramid's finest stride,
    and degenerate ones break the GIoU loss). M x 4 float32."""
    scaled = to_model_frame(boxes_xyxy, original_size, image_size)
    sides = scaled[:, 2:] - scaled[:, :2]
    keep = (sides >= max(min_side, 1e-3)).all(axis=1)
    return torch.from_numpy(np.ascontiguousarray(scaled[keep]))


def detection_targets(boxes: torch.Tensor) -> dict[str, torch.Tensor]:
    """The target dict FCOS takes: boxes and the single "object" label."""
    labels = torch.zeros(len(boxes), dtype=torch.int64, device=boxes.device)
    return {"boxes": boxes, "labels": labels}
