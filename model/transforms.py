"""Resizing images and prompts so that the image's long side equals the model input size."""

from __future__ import annotations

import numpy as np
from PIL import Image


def longest_side_shape(height: int, width: int, long_side: int) -> tuple[int, int]:
    """(h, w) after scaling so that max(h, w) == long_side, rounded half up."""
    scale = long_side / max(height, width)
    return int(height * scale + 0.5), int(width * scale + 0.5)


def resize_image(image: np.ndarray, long_side: int) -> np.ndarray:
    """H x W x 3 uint8 -> h x w x 3 uint8, bilinear (PIL), long side == long_side."""
    height, width = image.shape[:2]
    new_h, new_w = longest_side_shape(height, width, long_side)
    resized = Image.fromarray(image).resize((new_w, new_h), Image.Resampling.BILINEAR)
    return np.array(resized)


def scale_coords(coords: np.ndarray, original_size: tuple[int, int], long_side: int) -> np.ndarray:
    """... x 2 XY in original pixels -> XY in resized pixels (float64)."""
    height, width = original_size
    new_h, new_w = longest_side_shape(height, width, long_side)
    scaled = np.array(coords, dtype=np.float64, copy=True)
    scaled[..., 0] *= new_w / width
    scaled[..., 1] *= new_h / height
    return scaled


def scale_boxes(boxes: np.ndarray, original_size: tuple[int, int], long_side: int) -> np.ndarray:
    """... x 4 XYXY in original pixels -> XYXY in resized pixels."""
    corners = np.asarray(boxes).reshape(-1, 2, 2)
    return scale_coords(corners, original_size, long_side).reshape(-1, 4)
