"""Simulated interactive annotation (the paper's appendix A), shared by training and the
scripted annotators of campaigns.

Per mask: a first prompt, with equal chance a uniform foreground point or the mask's box
with noise (std 10% of the side, at most 20 px, per coordinate); then iterations that each
add a point sampled uniformly from the error region of the previous prediction (label 1 for
a false negative, 0 for a false positive) with the previous low-res logits fed back as the
mask prompt; and iterations with only the mask prompt: the last one and one at random among
the others. All coordinates are XY in model-input pixels.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

BOX_NOISE_FRACTION = 0.1
BOX_NOISE_MAX_PX = 20.0


def iteration_schedule(num_iterations: int, rng: np.random.Generator) -> list[bool]:
    """For each iteration after the first: True to add a point, False for mask only.
    11 iterations -> 8 with a new point and 2 without (the last, one random)."""
    later = num_iterations - 1
    if later <= 0:
        return []
    schedule = [True] * later
    schedule[-1] = False
    if later >= 3:
        schedule[int(rng.integers(1, later - 1))] = False
    return schedule


def uniform_points(regions: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """One uniformly chosen pixel of each region: N x H x W bool -> N x 2 XY (float).
    An empty region gives the image centre."""
    points = torch.empty(len(regions), 2)
    height, width = regions.shape[-2:]
    for index, region in enumerate(regions):
        ys, xs = torch.nonzero(region, as_tuple=True)
        if len(xs) == 0:
            points[index] = torch.tensor([width / 2, height / 2])
            continue
        pick = int(rng.integers(len(xs)))
        points[index] = torch.stack([xs[pick], ys[pick]]).float()
    return points


def noisy_boxes(masks: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """Each mask's tight box, each coordinate moved by N(0, 10% of the side, <= 20 px),
    clipped to the image: N x H x W -> N x 4 XYXY."""
    boxes = torch.zeros(len(masks), 4)
    height, width = masks.shape[-2:]
    for index, mask in enumerate(masks):
        ys, xs = torch.nonzero(mask, as_tuple=True)
        if len(xs) == 0:
            continue
        box = np.array([xs.min(), ys.min(), xs.max(), ys.max()], dtype=np.float64)
        sides = np.array([box[2] - box[0], box[3] - box[1]] * 2)
        std = np.minimum(BOX_NOISE_FRACTION * sides, BOX_NOISE_MAX_PX)
        box = box + rng.normal(0.0, 1.0, 4) * std
        box = np.clip(box, 0, [width - 1, height - 1, width - 1, height - 1])
        x0, x1 = sorted((box[0], box[2]))
        y0, y1 = sorted((box[1], box[3]))
        boxes[index] = torch.tensor([x0, y0, x1, y1], dtype=torch.float32)
    return boxes


def error_points(
    predicted: torch.Tensor, targets: torch.Tensor, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """A point sampled uniformly from each error region and its label.

    predicted, targets: N x H x W bool (restricted to the valid image area by the caller).
    Returns N x 2 XY and N labels: 1 where the point is a false negative, 0 where it is a
    false positive. Without any error, a uniform foreground point with label 1."""
    errors = predicted ^ targets
    fallback = errors.flatten(1).sum(1) == 0
    regions = torch.where(fallback[:, None, None], targets, errors)
    points = uniform_points(regions, rng)
    xs, ys = points[:, 0].long(), points[:, 1].long()
    labels = targets[torch.arange(len(targets)), ys, xs].long()
    return points, labels


def centre_point(region: np.ndarray) -> tuple[float, float]:
    """XY of the region's pixel farthest from its boundary (the image centre if empty)."""
    if not region.any():
        return region.shape[1] / 2, region.shape[0] / 2
    distance = ndimage.distance_transform_edt(np.pad(region, 1))[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(distance)), distance.shape)
    return float(x), float(y)


def largest_error_click(predicted: np.ndarray, target: np.ndarray) -> tuple[float, float, int]:
    """XY and label of a click at the centre of the largest error region (label 1 in a
    missed part, 0 in an extra part): the interactive evaluation's and the scripted
    annotators' corrective click. Without any error, the centre of the target."""
    false_neg, false_pos = target & ~predicted, predicted & ~target
    best: tuple[float, float, int] = (*centre_point(target), 1)
    best_depth = -1.0
    for region, label in ((false_neg, 1), (false_pos, 0)):
        if not region.any():
            continue
        distance = ndimage.distance_transform_edt(np.pad(region, 1))[1:-1, 1:-1]
        depth = float(distance.max())
        if depth > best_depth:
            y, x = np.unravel_index(int(np.argmax(distance)), distance.shape)
            best, best_depth = (float(x), float(y), label), depth
    return best


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two H x W bool masks (1 when both are empty)."""
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0
