"""Writing SA-1B datasets: every writer (generation jobs, campaign exports, synthetic scenes)
stages each image's two files for its shard, then commits the shard: its tar packed from the
staged files (webdataset's writer, fixed metadata: the same files give the same bytes), then
its manifest part (the commit marker), then the staged files dropped.

`stage_image` and `commit_shard` serve writers that finish images in parallel (a generation
job's tasks); `DatasetWriter` serves those that write images one after another.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import webdataset

from engine.dataset.layout import (
    ANNOTATION_ID_STRIDE,
    FILES,
    JOB_FILE,
    STAGING_DIR,
    STATUS_ERROR,
    STATUS_OK,
    ManifestRow,
    dumps_json,
    shard_name,
    staged_path,
    write_manifest_part,
    write_summary,
)
from engine.storage import Storage

# An annotation's first keys, in SA-1B's order; other keys follow as the writer built them.
ANNOTATION_ORDER = ("id", "segmentation", "bbox", "area", "predicted_iou", "stability_score")


@dataclass(frozen=True)
class ShardInfo:
    shard: int
    num_images: int
    num_ok: int
    num_masks: int
    tar_bytes: int


def image_entry(image_id: int, key: str, *, width: int, height: int) -> dict[str, Any]:
    """The `image` block of an image's SA-1B JSON (sizes of the stored image)."""
    return {"image_id": image_id, "width": width, "height": height, "file_name": f"{key}.jpg"}


def numbered(image_id: int, annotations: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The image's annotations with their ids (image_id * ANNOTATION_ID_STRIDE + rank: unique
    and deterministic), keys in SA-1B's order."""
    ordered = []
    for rank, annotation in enumerate(annotations):
        values = {**annotation, "id": image_id * ANNOTATION_ID_STRIDE + rank}
        first = {name: values[name] for name in ANNOTATION_ORDER}
        ordered.append({**first, **{k: v for k, v in values.items() if k not in first}})
    return ordered


def stage_image(
    storage: Storage,
    shard: int,
    *,
    image_id: int,
    key: str,
    source: str,
    jpeg: bytes,
    record: dict[str, Any],
) -> ManifestRow:
    """Stage one image's JPEG and SA-1B JSON (`record`: image block and annotations) for its
    shard; returns its manifest row."""
    storage.write_bytes(staged_path(shard, key, "jpg"), jpeg)
    storage.write_bytes(staged_path(shard, key, "json"), dumps_json(record))
    image = record["image"]
    return ManifestRow(
        image_id=image_id,
        source=source,
        shard=shard_name(shard),
        key=key,
        width=int(image["width"]),
        height=int(image["height"]),
        num_masks=len(record["annotations"]),
        status=STATUS_OK,
        error="",
    )


def error_row(*, image_id: int, key: str, source: str, shard: int, message: str) -> ManifestRow:
    """The manifest row of an image that could not be processed (nothing is staged)."""
    return ManifestRow(
        image_id=image_id,
        source=source,
        shard=shard_name(shard),
        key=key,
        width=0,
        height=0,
        num_masks=0,
        status=STATUS_ERROR,
        error=message,
    )


def pack_shard(storage: Storage, shard: int, keys: list[str]) -> int:
    """Write sa_<shard>.tar from the staged files of `keys` (in that order) under a
    temporary name renamed into place when complete; returns its size in bytes."""
    with storage.open_atomic(f"{shard_name(shard)}.tar") as handle:
        with webdataset.TarWriter(
            handle, encoder=False, user="", group="", mode=0o644, mtime=0.0
        ) as writer:
            for key in keys:
                files = {ext: storage.read_bytes(staged_path(shard, key, ext)) for ext in FILES}
                writer.write({"__key__": key, **files})
        size = handle.tell()
    return size


def commit_shard(storage: Storage, shard: int, rows: list[ManifestRow]) -> ShardInfo:
    """Pack the shard's staged files into its tar, then write its manifest part (the
    commit marker), then drop the staged files."""
    rows = sorted(rows, key=lambda row: row.image_id)
    ok = [row for row in rows if row.status == STATUS_OK]
    tar_bytes = pack_shard(storage, shard, [row.key for row in ok])
    write_manifest_part(storage, shard, rows)
    storage.remove(f"{STAGING_DIR}/{shard_name(shard)}")
    return ShardInfo(
        shard=shard,
        num_images=len(rows),
        num_ok=len(ok),
        num_masks=sum(row.num_masks for row in ok),
        tar_bytes=tar_bytes,
    )


class DatasetWriter:
    """Images written one after another: `images_per_shard` to a shard, each shard
    committed when full; `close(job)` commits the last one, then writes job.json and
    summary.json (returned)."""

    def __init__(self, storage: Storage, *, images_per_shard: int) -> None:
        if images_per_shard < 1:
            raise ValueError(f"images_per_shard must be >= 1, got {images_per_shard}")
        self.storage = storage
        self.images_per_shard = images_per_shard
        self.shards: list[ShardInfo] = []
        self._rows: list[ManifestRow] = []

    @property
    def shard(self) -> int:
        return len(self.shards)

    def add(
        self, *, image_id: int, key: str, source: str, jpeg: bytes, record: dict[str, Any]
    ) -> ManifestRow:
        row = stage_image(
            self.storage,
            self.shard,
            image_id=image_id,
            key=key,
            source=source,
            jpeg=jpeg,
            record=record,
        )
        self._rows.append(row)
        if len(self._rows) == self.images_per_shard:
            self._commit()
        return row

    def _commit(self) -> None:
        self.shards.append(commit_shard(self.storage, self.shard, self._rows))
        self._rows = []

    def close(self, job: dict[str, Any], summary: dict[str, Any] | None = None) -> dict[str, Any]:
        """Commit the last shard; job.json holds `job`, summary.json the counts and
        `summary` (default: {"job": job})."""
        if self._rows:
            self._commit()
        self.storage.write_bytes(JOB_FILE, json.dumps(job, indent=2).encode())
        return write_summary(self.storage, {"job": job} if summary is None else summary)
