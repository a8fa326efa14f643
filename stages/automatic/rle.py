"""Run-length encoding of masks (column-major, COCO's order), batched with one device
transfer per batch, and COCO compressed strings through pycocotools."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from pycocotools import mask as mask_utils

Rle = dict[str, Any]  # {"size": [h, w], "counts": list[int]} (uncompressed)


def masks_to_rles(masks: torch.Tensor) -> list[Rle]:
    """N x H x W bool -> N uncompressed RLEs. Counts alternate 0-runs and 1-runs,
    starting with 0-runs, in column-major order."""
    count, height, width = masks.shape
    if count == 0:
        return []
    flat = masks.transpose(1, 2).reshape(count, -1)
    changes = (flat[:, 1:] != flat[:, :-1]).nonzero().cpu().numpy()
    first_pixels = flat[:, 0].cpu().numpy()
    splits = np.searchsorted(changes[:, 0], np.arange(1, count))
    total = height * width
    rles = []
    for index, positions in enumerate(np.split(changes[:, 1], splits)):
        bounds = np.concatenate(([0], positions + 1, [total]))
        runs = np.diff(bounds).tolist()
        rles.append(
            {"size": [height, width], "counts": ([0] + runs) if first_pixels[index] else runs}
        )
    return rles


def rle_to_mask(rle: Rle) -> np.ndarray:
    """Uncompressed RLE -> H x W bool."""
    height, width = rle["size"]
    values = np.zeros(len(rle["counts"]), dtype=bool)
    values[1::2] = True
    flat = np.repeat(values, rle["counts"])
    return flat.reshape(width, height).T


def rle_area(rle: Rle) -> int:
    return int(sum(rle["counts"][1::2]))


def coco_encode(rle: Rle) -> dict[str, Any]:
    """Uncompressed RLE -> {"size": [h, w], "counts": <COCO compressed string>}."""
    height, width = rle["size"]
    encoded = mask_utils.frPyObjects(rle, height, width)
    return {"size": [height, width], "counts": encoded["counts"].decode("utf-8")}


def coco_decode(segmentation: dict[str, Any]) -> np.ndarray:
    """COCO compressed RLE -> H x W bool."""
    rle = {"size": segmentation["size"], "counts": segmentation["counts"].encode("utf-8")}
    return mask_utils.decode(rle).astype(bool)
