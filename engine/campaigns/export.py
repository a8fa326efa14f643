"""Exporting a campaign's masks as an SA-1B dataset, through the dataset writer that
generation jobs use (tar shards, Parquet manifest, summary), so `saengine inspect`,
`saengine round` and the training reader read it.

Exported: accepted manual masks and kept prefilled ones. Images keep their campaign id
and key; annotation ids are image_id * 100000 + rank. Besides the SA-1B fields each
annotation says how it was made: origin (manual | prefilled), annotator, model_sha256,
clicks, brush_strokes, seconds. A manual mask's predicted_iou is the decoder's prediction
for the accepted mask when the client sent it (else 1.0); its stability_score is 1.0.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from engine.campaigns.campaign import Campaign, CampaignError
from engine.campaigns.masks import exported_rows
from engine.campaigns.queue import stored_images
from engine.dataset import (
    ANNOTATION_ID_STRIDE,
    JOB_FILE,
    STATUS_OK,
    ManifestRow,
    committed_shards,
    dumps_json,
    shard_name,
    staged_path,
    write_summary,
)
from engine.dataset.writer import commit_shard
from engine.storage import Storage


@dataclass(frozen=True)
class ExportReport:
    images: int
    masks: int
    shards: int
    url: str


def exported_masks(campaign: Campaign, mask_cutoff: int | None = None) -> dict[int, list[Any]]:
    """The masks to export by image id (those with mask_id <= mask_cutoff, if given)."""
    with campaign.db.read() as db:
        rows = exported_rows(db, mask_cutoff)
    grouped: dict[int, list[Any]] = {}
    for row in rows:
        grouped.setdefault(row["image_id"], []).append(row)
    return grouped


def export_dataset(
    campaign: Campaign,
    output: str,
    *,
    mask_cutoff: int | None = None,
    keep_image: Callable[[int], bool] = lambda image_id: True,
    images_per_shard: int = 1000,
    storage_options: dict[str, Any] | None = None,
    force: bool = False,
) -> ExportReport:
    """Write the campaign's masks (see the module docstring) as a dataset at `output`."""
    storage = Storage(output, storage_options)
    if committed_shards(storage) or storage.exists(JOB_FILE):
        if not force:
            raise CampaignError(f"{storage.url()} holds a dataset already (force=true to replace)")
        storage.remove("")
    masks = {k: v for k, v in exported_masks(campaign, mask_cutoff).items() if keep_image(k)}
    with campaign.db.read() as db:
        images = stored_images(db, masks)
    order = sorted(images)
    for first in range(0, len(order), images_per_shard):
        shard = first // images_per_shard
        rows = [
            _stage_image(campaign, storage, shard, images[image_id], masks[image_id])
            for image_id in order[first : first + images_per_shard]
        ]
        commit_shard(storage, shard, rows)
    job = {
        "campaign": str(campaign.dir.resolve()),
        "mask_cutoff": mask_cutoff,
        "images": len(order),
    }
    storage.write_bytes(JOB_FILE, json.dumps(job, indent=2).encode())
    summary = write_summary(storage, {"job": job})
    return ExportReport(
        images=len(order), masks=summary["masks"], shards=summary["shards"], url=storage.url()
    )


def _stage_image(
    campaign: Campaign, storage: Storage, shard: int, image: Any, masks: list[Any]
) -> ManifestRow:
    key, image_id = image["key"], image["image_id"]
    record = {
        "image": {
            "image_id": image_id,
            "width": image["width"],
            "height": image["height"],
            "file_name": f"{key}.jpg",
        },
        "annotations": [
            _annotation(mask, image_id * ANNOTATION_ID_STRIDE + rank, image)
            for rank, mask in enumerate(masks)
        ],
    }
    storage.write_bytes(
        staged_path(shard, key, "jpg"), campaign.storage.read_bytes(campaign.image_path(key))
    )
    storage.write_bytes(staged_path(shard, key, "json"), dumps_json(record))
    return ManifestRow(
        image_id=image_id,
        source=image["source"],
        shard=shard_name(shard),
        key=key,
        width=image["width"],
        height=image["height"],
        num_masks=len(masks),
        status=STATUS_OK,
        error="",
    )


def _annotation(mask: Any, annotation_id: int, image: Any) -> dict[str, Any]:
    bbox = json.loads(mask["bbox"])
    prompts = json.loads(mask["prompts"])
    clicks = [p[:2] for p in prompts.get("points") or [] if p[2] == 1]
    point = clicks[0] if clicks else [bbox[0] + bbox[2] / 2, bbox[1] + bbox[3] / 2]
    predicted = mask["predicted_iou"]
    return {
        "id": annotation_id,
        "segmentation": {"size": [mask["height"], mask["width"]], "counts": mask["counts"]},
        "bbox": bbox,
        "area": mask["area"],
        "predicted_iou": float(predicted) if predicted is not None else 1.0,
        "stability_score": float(mask["stability_score"] or 1.0),
        "crop_box": [0, 0, image["width"], image["height"]],
        "point_coords": [[float(point[0]), float(point[1])]],
        "origin": mask["origin"],
        "annotator": mask["annotator"],
        "model_sha256": mask["model_sha256"],
        "clicks": mask["clicks"],
        "brush_strokes": mask["brush_strokes"],
        "seconds": mask["seconds"],
    }
