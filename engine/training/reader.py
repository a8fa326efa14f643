"""Training samples from SA-1B-format data: this project's tar shards, SA-1B's own tars, or
SA-1B's flat layout (`sa_*.jpg` + `sa_*.json` in a folder).

Two ways in:
- Streaming (`stream_samples`): `webdataset.WebDataset` over the tar shards, each read once
  from start to end (local or any fsspec/`pipe:` URL). Per epoch, a seeded permutation of
  the shards (the same on every node), split by node (rank) and by DataLoader worker; a
  stream resumes by skipping the samples it already gave, before they are decoded. For data
  too large to index, e.g. SA-1B's 1000 tars of ~11k images.
- Random access (`build_index` + `load_sample`): every image once (sorted by key) with the
  byte ranges of its jpg and json, so any sample can be read on its own. Where it is
  needed: evaluation (a fixed held-out subset), the stage-2 detector (images by key), and
  the trainer, whose global batch is a slice of one seeded permutation over all images so
  that 1 and N workers see the same samples (the tested reproducibility contract).
"""

from __future__ import annotations

import functools
import io
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import webdataset
from PIL import Image
from pycocotools import mask as mask_utils

from engine.dataset.reader import DatasetError, IndexEntry


@dataclass
class TrainingSample:
    """image: 3 x h x w float RGB 0..255 with the long side = the model's input size;
    masks: N x S x S float {0, 1} at the padded model input; key: the image key."""

    image: torch.Tensor
    masks: torch.Tensor
    key: str


def epoch_order(num_samples: int, *, seed: int, epoch: int) -> np.ndarray:
    """The seeded permutation of sample indices for one epoch."""
    return np.random.default_rng([seed, epoch]).permutation(num_samples)


def global_batch_indices(num_samples: int, *, seed: int, step: int, batch_size: int) -> list[int]:
    """Indices of the samples of global step `step` (epochs follow each other)."""
    indices = []
    for position in range(step * batch_size, (step + 1) * batch_size):
        epoch, offset = divmod(position, num_samples)
        indices.append(int(epoch_order(num_samples, seed=seed, epoch=epoch)[offset]))
    return indices


def worker_share(indices: list[int], rank: int, world_size: int) -> list[int]:
    """This worker's part of a global batch."""
    return indices[rank::world_size]


def load_sample(
    entry: IndexEntry,
    *,
    image_size: int,
    max_masks: int,
    min_mask_area: int = 8,
    rng: np.random.Generator,
) -> TrainingSample:
    """Decode one image and up to `max_masks` of its masks (sampled with rng), resized so
    the long side is `image_size` and padded to image_size x image_size. Masks smaller than
    min_mask_area pixels after resizing are skipped."""
    return decode_sample(
        entry.key,
        entry.image.read_bytes(),
        entry.annotations.read_bytes(),
        image_size=image_size,
        max_masks=max_masks,
        min_mask_area=min_mask_area,
        rng=rng,
    )


def decode_sample(
    key: str,
    jpg: bytes,
    json_bytes: bytes,
    *,
    image_size: int,
    max_masks: int,
    min_mask_area: int = 8,
    rng: np.random.Generator,
) -> TrainingSample:
    """`load_sample` on bytes already read (a streamed sample)."""
    record = json.loads(json_bytes)
    rgb = np.asarray(Image.open(io.BytesIO(jpg)).convert("RGB"))
    height, width = rgb.shape[:2]
    scale = image_size / max(height, width)
    new_h, new_w = max(1, round(height * scale)), max(1, round(width * scale))
    image = torch.from_numpy(rgb.copy()).permute(2, 0, 1)[None].float()
    image = F.interpolate(image, (new_h, new_w), mode="bilinear", align_corners=False)[0]
    annotations = record.get("annotations", [])
    order = rng.permutation(len(annotations))
    masks: list[torch.Tensor] = []
    for index in order:
        if len(masks) >= max_masks:
            break
        mask = _resized_mask(annotations[index]["segmentation"], (new_h, new_w))
        if mask.sum() >= min_mask_area:
            masks.append(F.pad(mask, (0, image_size - new_w, 0, image_size - new_h)))
    stacked = torch.stack(masks) if masks else torch.zeros(0, image_size, image_size)
    return TrainingSample(image=image.clamp(0, 255), masks=stacked, key=key)


def _resized_mask(segmentation: dict[str, Any], size: tuple[int, int]) -> torch.Tensor:
    counts = segmentation["counts"]
    rle = {"size": segmentation["size"], "counts": counts}
    if isinstance(counts, list):
        rle = mask_utils.frPyObjects(rle, *segmentation["size"])
    mask = torch.from_numpy(mask_utils.decode(rle).astype(np.float32))
    resized = F.interpolate(mask[None, None], size, mode="bilinear", align_corners=False)
    return (resized[0, 0] >= 0.5).float()


@dataclass(frozen=True)
class RawSample:
    """One streamed image before decoding: its key and the bytes of its jpg and json."""

    key: str
    jpg: bytes
    json: bytes


def stream_samples(
    urls: list[str],
    *,
    seed: int,
    epoch: int,
    rank: int = 0,
    world_size: int = 1,
    skip: int = 0,
) -> webdataset.WebDataset:
    """The samples of one epoch for one rank: a `webdataset.WebDataset` (an iterable of
    RawSample; a torch IterableDataset, so a DataLoader with workers splits it further by
    worker). Shards follow the seeded permutation of (seed, epoch), the same on every node;
    rank r reads shards r, r + world_size, ... of it. `skip`: samples of this stream (or,
    under a DataLoader, of each worker's stream) already consumed: dropped before they are decoded,
    so a resumed run goes on where it stopped."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
    if len(urls) < world_size:
        raise DatasetError(
            f"{len(urls)} shard(s) for {world_size} ranks: each rank needs at least one"
        )
    order = [urls[i] for i in epoch_order(len(urls), seed=seed, epoch=epoch)]
    dataset = webdataset.WebDataset(
        order,
        shardshuffle=False,  # shuffled above, identically on every node
        nodesplitter=functools.partial(_split_by_rank, rank=rank, world_size=world_size),
        workersplitter=webdataset.split_by_worker,
        empty_check=False,
    )
    return dataset.slice(skip, None).map(_raw_sample)


def _split_by_rank(urls: Iterable[Any], *, rank: int, world_size: int) -> Iterator[Any]:
    for index, url in enumerate(urls):
        if index % world_size == rank:
            yield url


def _raw_sample(sample: dict[str, Any]) -> RawSample:
    key = str(sample["__key__"]).rsplit("/", 1)[-1]
    if "jpg" not in sample or "json" not in sample:
        raise DatasetError(f"{sample.get('__url__', '?')}: {key} lacks its jpg or json")
    return RawSample(key=key, jpg=sample["jpg"], json=sample["json"])
