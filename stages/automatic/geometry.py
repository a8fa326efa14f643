"""Point grids, crop boxes and moving results between crop and image coordinates."""

from __future__ import annotations

import math
from itertools import product

import numpy as np
import torch


def build_point_grid(n_per_side: int) -> np.ndarray:
    """(n*n) x 2 XY points in [0, 1], cell centres of an n x n grid, row by row."""
    half_step = 1.0 / (2 * n_per_side)
    ticks = np.linspace(half_step, 1.0 - half_step, n_per_side)
    xs, ys = np.meshgrid(ticks, ticks, indexing="xy")
    return np.stack([xs, ys], axis=-1).reshape(-1, 2)


def build_all_layer_point_grids(
    n_per_side: int, n_layers: int, scale_per_layer: int
) -> list[np.ndarray]:
    """One grid per crop layer; layer i has n_per_side / scale_per_layer**i points a side."""
    return [build_point_grid(int(n_per_side / scale_per_layer**i)) for i in range(n_layers + 1)]


def _crop_length(full: int, n_crops: int, overlap: int) -> int:
    return int(math.ceil((overlap * (n_crops - 1) + full) / n_crops))


def generate_crop_boxes(
    image_size: tuple[int, int], n_layers: int, overlap_ratio: float
) -> tuple[list[list[int]], list[int]]:
    """Crop boxes XYXY and their layer: the full image, then 2^i x 2^i overlapping crops
    for layer i = 1..n_layers (x-major order inside a layer)."""
    height, width = image_size
    boxes, layers = [[0, 0, width, height]], [0]
    for layer in range(1, n_layers + 1):
        per_side = 2**layer
        overlap = int(overlap_ratio * min(height, width) * (2 / per_side))
        crop_w = _crop_length(width, per_side, overlap)
        crop_h = _crop_length(height, per_side, overlap)
        x_starts = [int((crop_w - overlap) * i) for i in range(per_side)]
        y_starts = [int((crop_h - overlap) * i) for i in range(per_side)]
        for x0, y0 in product(x_starts, y_starts):
            boxes.append([x0, y0, min(x0 + crop_w, width), min(y0 + crop_h, height)])
            layers.append(layer)
    return boxes, layers


def uncrop_boxes_xyxy(boxes: torch.Tensor, crop_box: list[int]) -> torch.Tensor:
    """N x 4 XYXY boxes in crop pixels -> image pixels."""
    x0, y0 = crop_box[0], crop_box[1]
    return boxes + boxes.new_tensor([x0, y0, x0, y0])


def uncrop_points(points: torch.Tensor, crop_box: list[int]) -> torch.Tensor:
    """N x 2 XY points in crop pixels -> image pixels."""
    return points + points.new_tensor([crop_box[0], crop_box[1]])


def uncrop_masks(masks: torch.Tensor, crop_box: list[int], height: int, width: int) -> torch.Tensor:
    """N x h x w masks of a crop -> N x height x width masks of the image (zero outside)."""
    x0, y0, x1, y1 = crop_box
    if (x0, y0, x1, y1) == (0, 0, width, height):
        return masks
    pad = (x0, width - x1, y0, height - y1)
    return torch.nn.functional.pad(masks, pad, value=False)


def masks_to_boxes_xyxy(masks: torch.Tensor) -> torch.Tensor:
    """N x H x W bool -> N x 4 XYXY of the mask pixels (inclusive max, no +1);
    [0, 0, 0, 0] for an empty mask."""
    if masks.numel() == 0:
        return torch.zeros(masks.shape[0], 4, dtype=torch.long, device=masks.device)
    rows = masks.any(dim=2)
    cols = masks.any(dim=1)
    boxes = torch.stack([*_extent(cols), *_extent(rows)], dim=1)[:, [0, 2, 1, 3]]
    return boxes * (rows.any(dim=1, keepdim=True))


def _extent(occupied: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """First and last True index along dim 1 of an N x L bool tensor."""
    length = occupied.shape[1]
    index = torch.arange(length, device=occupied.device)
    first = torch.where(occupied, index, length).amin(dim=1)
    last = torch.where(occupied, index, -1).amax(dim=1)
    return first, last


def is_box_near_crop_edge(
    boxes: torch.Tensor, crop_box: list[int], image_box: list[int], atol: float = 20.0
) -> torch.Tensor:
    """N bool: a side of the box (crop pixels) lies within `atol` of an inner crop edge,
    i.e. a crop edge that is not also an image edge."""
    crop = torch.as_tensor(crop_box, dtype=torch.float, device=boxes.device)
    image = torch.as_tensor(image_box, dtype=torch.float, device=boxes.device)
    in_image = uncrop_boxes_xyxy(boxes, crop_box).float()
    near_crop = (in_image - crop).abs() <= atol
    near_image = (in_image - image).abs() <= atol
    return (near_crop & ~near_image).any(dim=1)


def box_xyxy_to_xywh(box: list[float] | list[int]) -> list[float | int]:
    return [box[0], box[1], box[2] - box[0], box[3] - box[1]]
