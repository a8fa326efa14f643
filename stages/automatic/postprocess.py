"""Removing small islands and filling small holes (the paper's 100 px rule)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def _components(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """8-connected labels (0 = outside) and the pixel count of labels 1..n."""
    labels, count = ndimage.label(mask, structure=_EIGHT_CONNECTED)
    sizes = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    return labels, sizes


def fill_small_holes(mask: np.ndarray, min_area: int) -> tuple[np.ndarray, bool]:
    """Fill background components smaller than `min_area`. Returns (mask, changed)."""
    labels, sizes = _components(~mask)
    small = np.flatnonzero(sizes < min_area) + 1
    if small.size == 0:
        return mask, False
    return mask | np.isin(labels, small), True


def remove_small_islands(mask: np.ndarray, min_area: int) -> tuple[np.ndarray, bool]:
    """Remove foreground components smaller than `min_area`; if all are, keep the largest.
    Returns (mask, changed)."""
    labels, sizes = _components(mask)
    small = sizes < min_area
    if not small.any():
        return mask, False
    keep = np.flatnonzero(~small) + 1
    if keep.size == 0:
        keep = np.array([int(np.argmax(sizes)) + 1])
    return np.isin(labels, keep), True


def clean_mask(mask: np.ndarray, min_area: int) -> tuple[np.ndarray, bool]:
    """Holes first, then islands, as the official post-processing does."""
    mask, holes_changed = fill_small_holes(mask, min_area)
    mask, islands_changed = remove_small_islands(mask, min_area)
    return mask, holes_changed or islands_changed
