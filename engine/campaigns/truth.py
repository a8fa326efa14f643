"""The true masks of a campaign's images, for the scripted annotators: from any SA-1B-format
dataset (tar shards or folders), matched to the campaign's images by source.

A campaign image whose source is a tar member `<tar>#<key>.jpg` matches that tar's
`<key>.json`; an image given as a file matches the dataset image whose manifest names the
same source (a dataset written by `saengine generate` from that file). An image of a dataset
written by `saengine generate` (an audit's sample of a generation job's output) matches the
truth of the image it was generated from, which that dataset's manifest names.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from PIL import Image

from engine.dataset import read_manifest
from engine.dataset.reader import IndexEntry, build_index
from engine.storage import Storage
from stages.automatic.rle import coco_decode


class TruthIndex:
    def __init__(self, datasets: list[str]) -> None:
        self.by_source: dict[str, IndexEntry] = {}
        self.origins: dict[str, dict[str, str]] = {}  # a generated dataset: key -> its input
        for dataset in datasets:
            entries = build_index([dataset])
            for entry in entries:
                self.by_source[entry.image.source] = entry
            by_key = {entry.key: entry for entry in entries}
            for row in _manifest_rows(dataset):
                if row["status"] == "ok" and row["key"] in by_key:
                    self.by_source.setdefault(row["source"], by_key[row["key"]])

    def masks(self, source: str, size_hw: tuple[int, int]) -> np.ndarray | None:
        """The true masks of the image named `source`, N x H x W bool at `size_hw` (the
        campaign's stored size), largest first; None when the truth does not know it."""
        entry = self.by_source.get(source) or self.by_source.get(self._origin(source))
        if entry is None:
            return None
        record: dict[str, Any] = json.loads(entry.annotations.read_bytes())
        masks = [coco_decode(a["segmentation"]) for a in record.get("annotations", [])]
        if not masks:
            return np.zeros((0, *size_hw), dtype=bool)
        resized = [resize_mask(mask, size_hw) for mask in masks]
        resized.sort(key=lambda mask: -int(mask.sum()))
        return np.stack(resized)

    def __len__(self) -> int:
        return len(self.by_source)

    def _origin(self, source: str) -> str:
        """The input a generated dataset's image `<folder>/<shard>.tar#<key>.jpg` was made
        from, as that dataset's manifest names it ("" when there is none)."""
        tar, _, member = source.partition("#")
        folder = tar.rpartition("/")[0]
        if not member or not folder:
            return ""
        if folder not in self.origins:
            rows = _manifest_rows(folder)
            self.origins[folder] = {r["key"]: r["source"] for r in rows if r["status"] == "ok"}
        return self.origins[folder].get(member.rpartition(".")[0], "")


def resize_mask(mask: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """An H x W bool mask at another size (bilinear, thresholded at one half)."""
    if mask.shape == size_hw:
        return mask
    image = Image.fromarray(mask.astype(np.uint8) * 255)
    resized = image.resize((size_hw[1], size_hw[0]), Image.Resampling.BILINEAR)
    return np.asarray(resized) >= 128


def _manifest_rows(dataset: str) -> list[dict[str, Any]]:
    if dataset.endswith(".tar"):
        return []
    try:
        return list(read_manifest(Storage(dataset)).to_pylist())
    except (OSError, ValueError):
        return []
