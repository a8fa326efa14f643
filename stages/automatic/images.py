"""Turning what real folders contain into H x W x 3 uint8 RGB, or a clear error."""

from __future__ import annotations

import numpy as np
from PIL import Image


class ImageInputError(ValueError):
    """An image the generator cannot use."""


def to_rgb_uint8(image: np.ndarray | Image.Image) -> np.ndarray:
    """Grayscale, gray+alpha, RGBA, 16-bit, float in [0, 1] and bool images -> RGB uint8."""
    if isinstance(image, Image.Image):
        image = np.array(image.convert("RGB") if image.mode not in ("I;16", "I") else image)
    if not isinstance(image, np.ndarray):
        raise ImageInputError(
            f"image must be a numpy array or PIL image, got {type(image).__name__}"
        )
    array = _to_uint8(image)
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in (1, 2, 3, 4):
        raise ImageInputError(f"image must be H x W (x 1/2/3/4 channels), got shape {image.shape}")
    if min(array.shape[:2]) < 1:
        raise ImageInputError(f"image is empty: shape {image.shape}")
    channels = array.shape[2]
    if channels in (1, 2):
        array = np.repeat(array[:, :, :1], 3, axis=2)
    return np.ascontiguousarray(array[:, :, :3])


def _to_uint8(image: np.ndarray) -> np.ndarray:
    if image.dtype == np.uint8:
        return image
    if image.dtype == bool:
        return image.astype(np.uint8) * 255
    if image.dtype in (np.uint16, np.int32, np.uint32) and image.size:
        top = 65535 if image.dtype == np.uint16 or image.max() > 255 else 255
        return np.round(image.astype(np.float64) * (255.0 / top)).clip(0, 255).astype(np.uint8)
    if np.issubdtype(image.dtype, np.floating):
        if image.size and not np.isfinite(image).all():
            raise ImageInputError("image has NaN or infinite values")
        return np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)
    raise ImageInputError(f"unsupported image dtype {image.dtype}")
