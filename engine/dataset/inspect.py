"""`saengine inspect <output>`: verify an SA-1B dataset and print its statistics.

Checks, per committed shard: the tar holds exactly the manifest's ok images as jpg + json
pairs in order; each JSON follows the SA-1B schema; image sizes match the JPEG and the
manifest; every RLE decodes to the image size, its area is its pixel count and its bbox its
pixels' extent; annotation ids are unique; mask counts match the manifest. With
pictures=true it writes mask overlays and the SA-1B paper's statistics plots.
"""

from __future__ import annotations

import io
import json
import tarfile
from typing import Any

import numpy as np
from omegaconf import DictConfig
from PIL import Image
from pycocotools import mask as mask_utils
from tqdm import tqdm

from engine.dataset.layout import (
    JOB_FILE,
    STATUS_OK,
    SUMMARY_FILE,
    committed_shards,
    read_manifest,
    shard_name,
)
from engine.dataset.reader import iter_shard_records
from engine.dataset.stats import DatasetStats
from engine.storage import Storage

IMAGE_FIELDS = {"image_id": int, "width": int, "height": int, "file_name": str}
ANNOTATION_FIELDS = {
    "id": int,
    "segmentation": dict,
    "bbox": list,
    "area": int,
    "predicted_iou": float,
    "stability_score": float,
    "crop_box": list,
    "point_coords": list,
}
MAX_PROBLEMS_SHOWN = 10


def verify_dataset(storage: Storage, *, max_images: int | None = None) -> DatasetStats:
    stats = DatasetStats()
    if not storage.exists(JOB_FILE):
        stats.problem(storage.url(), f"no {JOB_FILE}: not a dataset written by saengine")
    manifest = read_manifest(storage).to_pylist()
    by_shard: dict[str, list[dict[str, Any]]] = {}
    for row in manifest:
        by_shard.setdefault(row["shard"], []).append(row)
    shards = committed_shards(storage)
    for shard in tqdm(shards, desc="inspect", unit="shard", disable=len(shards) < 2):
        if max_images is not None and stats.images >= max_images:
            break
        _verify_shard(storage, shard, by_shard.get(shard_name(shard), []), stats)
    if storage.exists(SUMMARY_FILE):
        _verify_summary(json.loads(storage.read_bytes(SUMMARY_FILE)), manifest, stats)
    else:
        stats.problem(SUMMARY_FILE, "missing (the job has not finished)")
    return stats


def _verify_shard(
    storage: Storage, shard: int, rows: list[dict[str, Any]], stats: DatasetStats
) -> None:
    name = f"{shard_name(shard)}.tar"
    if not storage.exists(name):
        stats.problem(name, "missing although its manifest part is committed")
        return
    expected = {row["key"]: row for row in rows if row["status"] == STATUS_OK}
    seen: list[str] = []
    try:
        for key, jpg, raw in iter_shard_records(storage, shard):
            seen.append(key)
            _verify_image(f"{name}/{key}", jpg, raw, expected.get(key), stats)
    except (tarfile.TarError, OSError) as error:
        stats.problem(name, f"unreadable tar: {error}")
        return
    if seen != list(expected):
        missing = sorted(set(expected) - set(seen))
        extra = sorted(set(seen) - set(expected))
        stats.problem(
            name,
            f"keys differ from the manifest (missing {missing[:3]}, "
            f"extra {extra[:3]}, or out of order)",
        )


def _verify_image(
    where: str, jpg: bytes, raw: bytes, row: dict[str, Any] | None, stats: DatasetStats
) -> None:
    stats.images += 1
    if not jpg or not raw:
        stats.problem(where, "jpg or json missing")
        return
    try:
        record = json.loads(raw)
        width, height = Image.open(io.BytesIO(jpg)).size
    except (ValueError, OSError) as error:
        stats.problem(where, f"unreadable: {error}")
        return
    image = record.get("image", {}) if isinstance(record, dict) else {}
    if not _has_fields(image, IMAGE_FIELDS):
        stats.problem(where, "image record does not follow the SA-1B schema")
        return
    if (image["width"], image["height"]) != (width, height):
        stats.problem(
            where, f"json size {image['width']}x{image['height']} != jpg {width}x{height}"
        )
    annotations = record.get("annotations")
    if not isinstance(annotations, list):
        stats.problem(where, "annotations missing")
        return
    if row is not None and (row["width"], row["height"], row["num_masks"]) != (
        width,
        height,
        len(annotations),
    ):
        stats.problem(where, "size or mask count differs from the manifest")
    stats.masks_per_image.append(len(annotations))
    for annotation in annotations:
        _verify_annotation(where, annotation, (height, width), stats)


def _verify_annotation(
    where: str, annotation: Any, size: tuple[int, int], stats: DatasetStats
) -> None:
    if not _has_fields(annotation, ANNOTATION_FIELDS):
        stats.problem(where, "annotation does not follow the SA-1B schema")
        return
    where = f"{where} annotation {annotation['id']}"
    if annotation["id"] in stats.annotation_ids:
        stats.problem(where, "duplicate annotation id")
    stats.annotation_ids.add(annotation["id"])
    segmentation = annotation["segmentation"]
    if list(segmentation.get("size", [])) != list(size):
        stats.problem(where, f"RLE size {segmentation.get('size')} != image {list(size)}")
        return
    try:
        mask = mask_utils.decode({"size": segmentation["size"], "counts": segmentation["counts"]})
    except (TypeError, ValueError, KeyError) as error:
        stats.problem(where, f"RLE does not decode: {error}")
        return
    area = int(mask.sum())
    if area != annotation["area"]:
        stats.problem(where, f"area {annotation['area']} != mask pixels {area}")
    ys, xs = np.nonzero(mask)
    bbox = [0, 0, 0, 0]
    if area:
        bbox = [int(xs.min()), int(ys.min()), int(xs.max() - xs.min()), int(ys.max() - ys.min())]
        stats.centres.append((float(xs.mean()) / size[1], float(ys.mean()) / size[0]))
    if [int(v) for v in annotation["bbox"]] != bbox:
        stats.problem(where, f"bbox {annotation['bbox']} != mask extent {bbox}")
    stats.relative_sizes.append(float(np.sqrt(area / (size[0] * size[1]))))


def _has_fields(record: Any, expected: dict[str, type]) -> bool:
    if not isinstance(record, dict):
        return False
    for name, kind in expected.items():
        value = record.get(name)
        allowed: tuple[type, ...] = (int, float) if kind is float else (kind,)
        if value is None or not isinstance(value, allowed) or isinstance(value, bool):
            return False
    return True


def _verify_summary(
    summary: dict[str, Any], manifest: list[dict[str, Any]], stats: DatasetStats
) -> None:
    ok = [row for row in manifest if row["status"] == STATUS_OK]
    expected = {
        "images": len(manifest),
        "images_ok": len(ok),
        "masks": sum(row["num_masks"] for row in ok),
    }
    for name, value in expected.items():
        if summary.get(name) != value:
            stats.problem(SUMMARY_FILE, f"{name} is {summary.get(name)}, manifest says {value}")


def format_report(storage: Storage, stats: DatasetStats) -> str:
    manifest = read_manifest(storage).to_pydict()
    failed = sum(status != STATUS_OK for status in manifest["status"])
    counts = np.array(stats.masks_per_image or [0])
    sizes = np.array(stats.relative_sizes or [0.0])
    lines = [
        f"dataset: {storage.url()}",
        f"manifest: {len(manifest['status'])} images ({failed} failed), "
        f"{len(committed_shards(storage))} shards",
        f"verified: {stats.images} images, {len(stats.relative_sizes)} masks",
        f"masks per image: mean {counts.mean():.1f}, median {np.median(counts):.0f}, "
        f"max {counts.max()}",
        "mask size (sqrt of area / image area): "
        + ", ".join(f"p{q} {np.percentile(sizes, q):.3f}" for q in (10, 50, 90)),
    ]
    if stats.problems:
        lines.append(f"PROBLEMS: {len(stats.problems)}")
        lines += [f"  {p}" for p in stats.problems[:MAX_PROBLEMS_SHOWN]]
    else:
        lines.append("no problems found")
    return "\n".join(lines)


def run_inspect(cfg: DictConfig) -> bool:
    """Verify, print the report, optionally write pictures; True when no problems."""
    storage = Storage(str(cfg.path), dict(cfg.storage_options or {}))
    stats = verify_dataset(storage, max_images=cfg.max_images)
    print(format_report(storage, stats))
    if cfg.pictures:
        from engine.dataset.pictures import write_pictures

        # pictures=true: into <dataset>/inspect; pictures=<dir or URL>: there.
        where = storage.url("inspect") if cfg.pictures is True else str(cfg.pictures)
        destination = Storage(where, dict(cfg.storage_options or {}))
        written = write_pictures(storage, stats, destination, num_overlays=int(cfg.num_pictures))
        print(f"pictures: {len(written)} files in {destination.url()}")
    return not stats.problems
