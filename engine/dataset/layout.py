"""The SA-1B dataset layout: file names, the manifest, the summary, ids and keys.

    <output>/sa_000000.tar            <key>.jpg + <key>.json pairs, in key order
    <output>/manifest/sa_000000.parquet   one row per input image planned for that shard
    <output>/summary.json             counts, job config, model, package versions
    <output>/job.json                 the job's fingerprint (what a resume must match)
    <output>/runs/<time>/             each run's raw and resolved config and timings

A shard's manifest part is written only after its tar is in place: the part is the commit
marker, so the manifest never claims unwritten work. Tars are written with webdataset's
writer, deterministically (sorted members, fixed metadata), so the same job gives the same
bytes; webdataset reads them as they are (`engine.training.reader`).
"""

from __future__ import annotations

import functools
import io
import json
import os
import time
from dataclasses import dataclass, fields
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from engine.storage import Storage

MANIFEST_DIR = "manifest"
STAGING_DIR = ".staging"
SUMMARY_FILE = "summary.json"
JOB_FILE = "job.json"
RUNS_DIR = "runs"
STATUS_OK = "ok"
STATUS_ERROR = "error"
FILES = ("jpg", "json")  # the files of one image, in their order in the tar
# Annotation ids are image_id * ANNOTATION_ID_STRIDE + rank: unique and deterministic
# (the sa1b preset has at most 3 x 3072 candidates per image).
ANNOTATION_ID_STRIDE = 100_000


@functools.cache
def run_name() -> str:
    """This process's folder under runs/ (`<start time>-<pid>`): its config, timings and,
    after an internal error, error.log with the traceback."""
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"


def shard_name(index: int) -> str:
    return f"sa_{index:06d}"


def image_key(image_id: int) -> str:
    return f"sa_{image_id}"


@dataclass
class ManifestRow:
    """One input image. shard: the shard it was planned for (its files are in that tar when
    status is ok); width/height: of the stored image (0 on error)."""

    image_id: int
    source: str
    shard: str
    key: str
    width: int
    height: int
    num_masks: int
    status: str
    error: str


MANIFEST_SCHEMA = pa.schema(
    [
        ("image_id", pa.int64()),
        ("source", pa.string()),
        ("shard", pa.string()),
        ("key", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("num_masks", pa.int32()),
        ("status", pa.string()),
        ("error", pa.string()),
    ]
)


def manifest_part_path(shard: int) -> str:
    return f"{MANIFEST_DIR}/{shard_name(shard)}.parquet"


def write_manifest_part(storage: Storage, shard: int, rows: list[ManifestRow]) -> None:
    columns = {f.name: [getattr(row, f.name) for row in rows] for f in fields(ManifestRow)}
    table = pa.table(columns, schema=MANIFEST_SCHEMA)
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    storage.write_bytes(manifest_part_path(shard), buffer.getvalue())


def committed_shards(storage: Storage) -> list[int]:
    """Shards whose manifest part exists (so their tar is complete)."""
    names = storage.list(MANIFEST_DIR)
    return sorted(
        int(name[3:-8]) for name in names if name.startswith("sa_") and name.endswith(".parquet")
    )


def read_manifest(storage: Storage) -> pa.Table:
    """All committed manifest rows, in image order."""
    tables = [
        pq.read_table(io.BytesIO(storage.read_bytes(manifest_part_path(shard))))
        for shard in committed_shards(storage)
    ]
    if not tables:
        return MANIFEST_SCHEMA.empty_table()
    return pa.concat_tables(tables).sort_by("image_id")


def staged_path(shard: int, key: str, extension: str) -> str:
    return f"{STAGING_DIR}/{shard_name(shard)}/{key}.{extension}"


def dumps_json(value: Any) -> bytes:
    """The one JSON encoding of this format (compact, key order as built)."""
    return json.dumps(value, separators=(",", ":"), allow_nan=False).encode()


def write_summary(storage: Storage, extra: dict[str, Any]) -> dict[str, Any]:
    """summary.json: counts from the committed manifest, then `extra` (job, model, ...)."""
    manifest = read_manifest(storage).to_pydict()
    ok = [status == STATUS_OK for status in manifest["status"]]
    num_masks = sum(n for n, good in zip(manifest["num_masks"], ok) if good)
    summary = {
        "images": len(ok),
        "images_ok": sum(ok),
        "images_failed": len(ok) - sum(ok),
        "masks": num_masks,
        "masks_per_image": round(num_masks / max(sum(ok), 1), 3),
        "shards": len(committed_shards(storage)),
        **extra,
    }
    storage.write_bytes(SUMMARY_FILE, json.dumps(summary, indent=2).encode() + b"\n")
    return summary
