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
from engine.dataset import JOB_FILE, committed_shards
from engine.dataset.writer import DatasetWriter, image_entry, numbered
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
    writer = DatasetWriter(storage, images_per_shard=images_per_shard)
    for image_id in sorted(images):
        image, key = images[image_id], images[image_id]["key"]
        annotations = [_annotation(mask, image) for mask in masks[image_id]]
        writer.add(
            image_id=image_id,
            key=key,
            source=image["source"],
            jpeg=campaign.storage.read_bytes(campaign.image_path(key)),
            record={
                "image": image_entry(image_id, key, width=image["width"], height=image["height"]),
                "annotations": numbered(image_id, annotations),
            },
        )
    job = {
        "campaign": str(campaign.dir.resolve()),
        "mask_cutoff": mask_cutoff,
        "images": len(images),
    }
    summary = writer.close(job)
    return ExportReport(
        images=len(images), masks=summary["masks"], shards=summary["shards"], url=storage.url()
    )


def _annotation(mask: Any, image: Any) -> dict[str, Any]:
    bbox = json.loads(mask["bbox"])
    prompts = json.loads(mask["prompts"])
    clicks = [p[:2] for p in prompts.get("points") or [] if p[2] == 1]
    point = clicks[0] if clicks else [bbox[0] + bbox[2] / 2, bbox[1] + bbox[3] / 2]
    predicted = mask["predicted_iou"]
    return {
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
