"""Pictures of a dataset: mask overlays and the SA-1B paper's statistics plots (masks per
image, relative mask size, mask-centre density)."""

from __future__ import annotations

import io
import itertools
import json

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from engine.dataset.reader import iter_records
from engine.dataset.stats import DatasetStats
from engine.storage import Storage


def overlay_masks(rgb: np.ndarray, masks: list[np.ndarray], *, seed: int = 0) -> np.ndarray:
    """H x W x 3 uint8 with each mask blended in its own colour, largest first."""
    colours = np.random.default_rng(seed).integers(0, 255, (max(len(masks), 1), 3))
    out = rgb.astype(np.float32)
    for colour, mask in sorted(zip(colours.tolist(), masks), key=lambda cm: -int(cm[1].sum())):
        out[mask] = 0.45 * out[mask] + 0.55 * np.asarray(colour, dtype=np.float32)
    return out.astype(np.uint8)


def write_pictures(
    storage: Storage, stats: DatasetStats, destination: Storage, *, num_overlays: int
) -> list[str]:
    """Overlays of the first `num_overlays` images and three plots; returns file names."""
    written = []
    for key, jpg, raw in _first_images(storage, num_overlays):
        rgb = np.asarray(Image.open(io.BytesIO(jpg)).convert("RGB"))
        masks = [
            mask_utils.decode(a["segmentation"]).astype(bool)
            for a in json.loads(raw)["annotations"]
        ]
        buffer = io.BytesIO()
        Image.fromarray(overlay_masks(rgb, masks)).save(buffer, format="JPEG", quality=90)
        destination.write_bytes(f"{key}_masks.jpg", buffer.getvalue())
        written.append(f"{key}_masks.jpg")
    for name, png in _plots(stats).items():
        destination.write_bytes(name, png)
        written.append(name)
    return written


def _first_images(storage: Storage, count: int) -> list[tuple[str, bytes, bytes]]:
    return list(itertools.islice(iter_records(storage), count))


def _plots(stats: DatasetStats) -> dict[str, bytes]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots: dict[str, bytes] = {}
    figure, axis = plt.subplots(figsize=(5, 3.5))
    axis.hist(stats.masks_per_image or [0], bins=20, color="tab:blue")
    axis.set(xlabel="masks per image", ylabel="images", title="Masks per image")
    plots["masks_per_image.png"] = _png(figure)
    figure, axis = plt.subplots(figsize=(5, 3.5))
    axis.hist(stats.relative_sizes or [0.0], bins=30, range=(0, 1), color="tab:green")
    axis.set(xlabel="sqrt(mask area / image area)", ylabel="masks", title="Relative mask size")
    plots["mask_sizes.png"] = _png(figure)
    figure, axis = plt.subplots(figsize=(4.5, 4))
    centres = np.array(stats.centres or [(0.5, 0.5)])
    axis.hist2d(centres[:, 0], centres[:, 1], bins=20, range=[[0, 1], [0, 1]], cmap="magma")
    axis.invert_yaxis()
    axis.set(xlabel="x / width", ylabel="y / height", title="Mask-centre density")
    plots["mask_centres.png"] = _png(figure)
    return plots


def _png(figure: object) -> bytes:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")  # type: ignore[attr-defined]
    plt.close(figure)  # type: ignore[arg-type]
    return buffer.getvalue()
