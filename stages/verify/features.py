"""The verifier's inputs from a proposed mask: the mask in SAM's low-res frame and the mask's
own numbers."""

from __future__ import annotations

import math

import numpy as np
from PIL import Image


def mask_frame(mask: np.ndarray, *, input_hw: tuple[int, int], frame: int) -> np.ndarray:
    """Each pixel's share of the mask in SAM's low-res frame: frame x frame float32 in [0,
    1], one pixel per 4 x 4 model-input pixels of the padded input (the stored H x W bool
    mask resized to the unpadded model input `input_hw`, padded at the bottom and right)."""
    height, width = input_hw
    side = 4 * frame
    if height > side or width > side:
        raise ValueError(f"model input {input_hw} does not fit a frame of {frame}")
    picture = Image.fromarray(mask.astype(np.uint8) * 255)
    resized = np.asarray(picture.resize((width, height), Image.Resampling.BILINEAR), np.float32)
    padded = np.zeros((side, side), np.float32)
    padded[:height, :width] = resized / 255.0
    return padded.reshape(frame, 4, frame, 4).mean(axis=(1, 3))


def mask_scalars(
    predicted_iou: float | None, stability_score: float | None, area: int, size_hw: tuple[int, int]
) -> np.ndarray:
    """[predicted IoU, stability score, square root of the share of the image]: 3 float32
    (a missing score is 0)."""
    share = math.sqrt(area / max(1, size_hw[0] * size_hw[1]))
    return np.array([predicted_iou or 0.0, stability_score or 0.0, share], dtype=np.float32)
