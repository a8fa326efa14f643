"""`saengine audit create` and `saengine verify create`: a review campaign over a random
sample of an SA-1B dataset's images (a generation job's output first of all), each image's
masks stored as proposed masks for the reviewers.

The sample is drawn once from the dataset's index (`engine.dataset.reader.build_index`,
every image sorted by key) with a seeded generator, and planned like `campaign create`'s
input (image i of the sample gets id i + 1 and key sa_<id>; the image is decoded and stored
with the same rules). Each stored image then gets its dataset masks as prefilled masks
(state proposed, with their predicted IoU, stability score, point and annotation id), in
one transaction with the image's prefill mark: the images are stage-2 images, leased only
once their proposals are stored, and creating again stores nothing twice.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

import numpy as np
from omegaconf import DictConfig
from tqdm import tqdm

from engine.campaigns.campaign import Campaign
from engine.campaigns.errors import BadInput, CampaignError
from engine.campaigns.masks import insert_prefilled, mask_shape
from engine.campaigns.plan import create_campaign
from engine.campaigns.queue import mark_prefilled, stored_images
from engine.campaigns.truth import resize_mask
from engine.dataset import SUMMARY_FILE
from engine.dataset.reader import IndexEntry, build_index
from engine.storage import Storage
from stages.automatic.rle import coco_decode

DATASET_MARK = "dataset"


def create_review_campaign(cfg: DictConfig) -> tuple[Campaign, str | None, int]:
    """Create (or finish creating) the review campaign of `cfg.dataset`; returns it, the
    admin token (None when it existed) and how many proposed masks were stored now."""
    dataset = str(cfg.dataset)
    entries = sample_entries(build_index([dataset]), sample=cfg.sample, seed=int(cfg.seed))
    campaign, token = create_campaign(cfg, sources=[entry.image for entry in entries])
    stored = store_proposals(
        campaign, entries, model_sha256=dataset_model(dataset), progress=bool(cfg.progress)
    )
    return campaign, token, stored


def sample_entries(entries: list[IndexEntry], *, sample: Any, seed: int) -> list[IndexEntry]:
    """`sample` of the entries drawn at random without replacement (seeded), kept in the
    dataset's order; all of them when `sample` is None or not below their number."""
    if sample is None or int(sample) >= len(entries):
        return entries
    if int(sample) < 1:
        raise CampaignError(f"sample must be >= 1, got {sample}")
    chosen = np.random.default_rng(seed).choice(len(entries), size=int(sample), replace=False)
    return [entries[i] for i in sorted(int(i) for i in chosen)]


def dataset_model(dataset: str) -> str:
    """The SHA-256 of the weights that generated the dataset (its summary's), or ""."""
    try:
        summary = json.loads(Storage(dataset).read_bytes(SUMMARY_FILE))
    except (OSError, ValueError):
        return ""
    return str((summary.get("model") or {}).get("weights_sha256") or "")


def store_proposals(
    campaign: Campaign, entries: list[IndexEntry], *, model_sha256: str, progress: bool = False
) -> int:
    """The masks of each stored image (entries[i] is image i + 1) as proposed masks, once
    per image; returns how many were stored now."""
    with campaign.db.read() as db:
        images = stored_images(db, range(1, len(entries) + 1))
    mark = f"{DATASET_MARK}:{model_sha256 or 'unknown'}"
    stored = 0
    for image_id, row in tqdm(sorted(images.items()), desc="proposals", disable=not progress):
        if row["prefill_model"] is not None:
            continue
        masks = read_proposals(entries[image_id - 1], (row["height"], row["width"]))
        with campaign.db.write() as db:
            if not mark_prefilled(db, image_id, mark):
                continue
            for mask in masks:
                insert_prefilled(db, image_id, mask, model_sha256=model_sha256)
            stored += len(masks)
    return stored


def read_proposals(entry: IndexEntry, size_hw: tuple[int, int]) -> list[dict[str, Any]]:
    """The non-empty masks of a dataset image at the stored size `size_hw` (H, W): shape,
    prompts (its point, stored-image pixels), scores and annotation id."""
    record = json.loads(entry.annotations.read_bytes())
    proposals = []
    for annotation in record.get("annotations", []):
        mask = coco_decode(annotation["segmentation"])
        scale_xy = (size_hw[1] / mask.shape[1], size_hw[0] / mask.shape[0])
        try:
            shape = mask_shape(resize_mask(mask, size_hw))
        except BadInput:  # empty (at this size)
            continue
        points = [
            [float(x) * scale_xy[0], float(y) * scale_xy[1], 1]
            for x, y in annotation.get("point_coords") or []
        ]
        proposals.append(
            {
                **asdict(shape),
                "prompts": {"points": points, "box": None},
                "predicted_iou": annotation.get("predicted_iou"),
                "stability_score": annotation.get("stability_score"),
                "annotation_id": annotation.get("id"),
            }
        )
    return proposals
