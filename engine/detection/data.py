"""The detector's data: every image of SA-1B-format datasets with one box per mask, and the
SAM embedding of each image cached on storage.

Embeddings are cached in an `EmbeddingStore` keyed by the SHA-256 of the image file's bytes
(not by its key: `sa_1` exists in every dataset this project writes, while equal bytes are the
same pixels), under the SAM weights' SHA-256. Targets are kept in a Parquet file beside the
training run (one row per image), so Ray Train workers read them without the masks.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from engine.dataset.reader import DatasetError, IndexEntry, build_index
from engine.embeddings import EmbeddingStore
from engine.files import atomic_path
from stages.semi.targets import boxes_from_segmentations


@dataclass(frozen=True)
class DetectionImage:
    """One image's objects. digest: SHA-256 of the image file's bytes (its embedding's key);
    key: its key in its dataset; source: where the image is; original_size: the stored
    image's (H, W); boxes_xyxy: N x 4 float32 pixel extents in stored-image pixels, one per
    non-empty mask; areas: N int64 mask areas (pixels)."""

    digest: str
    key: str
    source: str
    original_size: tuple[int, int]
    boxes_xyxy: np.ndarray
    areas: np.ndarray


@dataclass(frozen=True)
class PendingEmbedding:
    """An image whose embedding is not cached yet: its digest, file bytes and (H, W)."""

    digest: str
    data: bytes
    original_size: tuple[int, int]


def image_digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_detection_image(entry: IndexEntry) -> tuple[DetectionImage, bytes]:
    """One indexed image's boxes (from its masks) and its file's bytes."""
    record = json.loads(entry.annotations.read_bytes())
    data = entry.image.read_bytes()
    info = record.get("image", {})
    segmentations = [a["segmentation"] for a in record.get("annotations", [])]
    if "height" in info and "width" in info:
        size = (int(info["height"]), int(info["width"]))
    elif segmentations:
        size = (int(segmentations[0]["size"][0]), int(segmentations[0]["size"][1]))
    else:
        size = Image.open(io.BytesIO(data)).size[::-1]
    for segmentation in segmentations:
        if tuple(segmentation["size"]) != size:
            raise DatasetError(
                f"{entry.annotations.source}: a mask of size {segmentation['size']} on an "
                f"image of size {list(size)}"
            )
    boxes, areas = boxes_from_segmentations(segmentations)
    keep = areas > 0
    image = DetectionImage(
        digest=image_digest(data),
        key=entry.key,
        source=entry.image.source,
        original_size=size,
        boxes_xyxy=boxes[keep],
        areas=areas[keep],
    )
    return image, data


def decode_rgb(pending: PendingEmbedding) -> np.ndarray:
    """The stored pixels (H x W x 3 uint8), checked against the annotations' size."""
    rgb = np.asarray(Image.open(io.BytesIO(pending.data)).convert("RGB"))
    if rgb.shape[:2] != tuple(pending.original_size):
        raise DatasetError(
            f"image {pending.digest[:12]} decodes to {rgb.shape[1]}x{rgb.shape[0]} but its "
            f"annotations are for {pending.original_size[1]}x{pending.original_size[0]}"
        )
    return rgb


Embedder = Callable[[Iterable[PendingEmbedding], EmbeddingStore], int]


def collect_images(
    data: list[str],
    *,
    store: EmbeddingStore,
    embedder: Embedder,
    progress: Callable[[Iterable[IndexEntry], int], Iterable[IndexEntry]] | None = None,
) -> list[DetectionImage]:
    """Every image of the datasets with its boxes; embeddings missing from the store are
    computed by `embedder` as the images are read (each distinct image once)."""
    index = build_index(data)
    images: list[DetectionImage] = []

    def pending() -> Iterator[PendingEmbedding]:
        seen: set[str] = set()
        entries = progress(index, len(index)) if progress else index
        for entry in entries:
            image, file_bytes = read_detection_image(entry)
            images.append(image)
            if image.digest not in seen and not store.exists(image.digest):
                yield PendingEmbedding(image.digest, file_bytes, image.original_size)
            seen.add(image.digest)

    embedder(pending(), store)
    return images


def dataset_files(data: list[str]) -> list[str]:
    """The files the datasets' images come from (tar shards or image files), sorted."""
    return sorted({entry.image.url for entry in build_index(data)})


def write_images(path: str | Path, images: list[DetectionImage]) -> None:
    """A Parquet file of the images and their boxes, written atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.table(
        {
            "digest": [i.digest for i in images],
            "key": [i.key for i in images],
            "source": [i.source for i in images],
            "height": [i.original_size[0] for i in images],
            "width": [i.original_size[1] for i in images],
            "boxes": [i.boxes_xyxy.reshape(-1).tolist() for i in images],
            "areas": [i.areas.tolist() for i in images],
        },
        schema=_SCHEMA,
    )
    with atomic_path(path) as temporary:
        pq.write_table(table, temporary)


def read_images(path: str | Path) -> list[DetectionImage]:
    rows: list[dict[str, Any]] = pq.read_table(path).to_pylist()
    return [
        DetectionImage(
            digest=row["digest"],
            key=row["key"],
            source=row["source"],
            original_size=(int(row["height"]), int(row["width"])),
            boxes_xyxy=np.asarray(row["boxes"], np.float32).reshape(-1, 4),
            areas=np.asarray(row["areas"], np.int64),
        )
        for row in rows
    ]


_SCHEMA = pa.schema(
    [
        ("digest", pa.string()),
        ("key", pa.string()),
        ("source", pa.string()),
        ("height", pa.int64()),
        ("width", pa.int64()),
        ("boxes", pa.list_(pa.float32())),
        ("areas", pa.list_(pa.int64())),
    ]
)
