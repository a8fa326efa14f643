"""Writing SA-1B datasets: every writer (generation jobs, campaign exports, synthetic scenes)
stages each image's two files for its shard, then commits the shard: its tar packed from the
staged files (webdataset's writer, fixed metadata: the same files give the same bytes), then
its manifest part (the commit marker), then the staged files dropped.

`stage_image` and `commit_shard` serve writers that finish images in parallel;
`stage_piece` stages a batch of images as one file (a generation job's finish tasks: one
storage write per batch instead of two per image, which is what object storage charges
for), and `commit_shard(..., pieces=...)` packs the shard from those pieces.
`DatasetWriter` serves writers that write images one after another.
"""

from __future__ import annotations

import io
import json
import tarfile
from dataclasses import dataclass
from typing import IO, Any

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
    image_key,
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
    return ok_row(shard, image_id=image_id, key=key, source=source, record=record)


def ok_row(
    shard: int, *, image_id: int, key: str, source: str, record: dict[str, Any]
) -> ManifestRow:
    """The manifest row of an image written with `record` (its SA-1B JSON)."""
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


StagedFiles = tuple[str, dict[str, bytes]]  # an image's key and its files by extension


def piece_path(shard: int, first_image_id: int) -> str:
    """Where a batch of a shard's images is staged as one file (named by its first image)."""
    return f"{STAGING_DIR}/{shard_name(shard)}/{image_key(first_image_id)}.tar"


def stage_piece(
    storage: Storage, shard: int, first_image_id: int, images: list[StagedFiles]
) -> None:
    """Stage a batch of images (key and files, in image order) for their shard as one file:
    their tar members exactly as the shard's tar holds them, so that committing the shard
    (`commit_shard(..., pieces=[first_image_id, ...])`) only concatenates pieces."""
    buffer = io.BytesIO()
    with _tar_writer(buffer) as writer:
        for key, files in images:
            writer.write({"__key__": key, **files})
        members = writer.tarstream.offset  # what follows is the end of the archive
    storage.write_bytes(piece_path(shard, first_image_id), buffer.getvalue()[:members])


def pack_shard(storage: Storage, shard: int, keys: list[str]) -> int:
    """Write sa_<shard>.tar from the staged files of `keys` (in that order, staged by
    `stage_image`) under a temporary name renamed into place when complete; returns its
    size in bytes."""
    with storage.open_atomic(f"{shard_name(shard)}.tar") as handle:
        with _tar_writer(handle) as writer:
            for key in keys:
                files = {ext: storage.read_bytes(staged_path(shard, key, ext)) for ext in FILES}
                writer.write({"__key__": key, **files})
        size = handle.tell()
    return size


def _tar_writer(handle: IO[bytes]) -> webdataset.TarWriter:
    """The one way this format writes a tar: fixed metadata, so the same files give the
    same bytes."""
    return webdataset.TarWriter(handle, encoder=False, user="", group="", mode=0o644, mtime=0.0)


def pack_pieces(storage: Storage, shard: int, pieces: list[int]) -> int:
    """Write sa_<shard>.tar from its staged pieces (`stage_piece`, named by their first
    image ids) in image order, then the end of the archive as tarfile writes it (two zero
    blocks, zeros up to a whole record): the bytes `pack_shard` gives for the same images.
    Returns the tar's size in bytes."""
    with storage.open_atomic(f"{shard_name(shard)}.tar") as handle:
        for first in sorted(pieces):
            handle.write(storage.read_bytes(piece_path(shard, first)))
        end = handle.tell() + 2 * tarfile.BLOCKSIZE
        handle.write(bytes(2 * tarfile.BLOCKSIZE + -end % tarfile.RECORDSIZE))
        size = handle.tell()
    return size


def commit_shard(
    storage: Storage, shard: int, rows: list[ManifestRow], pieces: list[int] | None = None
) -> ShardInfo:
    """Pack the shard's staged files into its tar, then write its manifest part (the
    commit marker), then drop the staged files. pieces: the first image ids of the pieces
    the ok images were staged in (`stage_piece`); None: staged one by one (`stage_image`)."""
    rows = sorted(rows, key=lambda row: row.image_id)
    ok = [row for row in rows if row.status == STATUS_OK]
    if pieces is None:
        tar_bytes = pack_shard(storage, shard, [row.key for row in ok])
    else:
        tar_bytes = pack_pieces(storage, shard, pieces)
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
