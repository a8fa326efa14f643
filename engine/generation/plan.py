"""A job's input plan: the listing of its input, written once, sorted and without
duplicates, as `<output>/plan.parquet`, then read back in bounded chunks.

Image i of the plan (0-based) gets image_id i + 1, key sa_<image_id> and shard
i // images_per_shard, so ids depend only on the sorted input, and a rerun reads the same
plan instead of listing the input again. The listing is sorted out of core: runs of at most
`run_rows` sources are sorted in memory and spilled to local Parquet files, then merged,
so the driver's memory does not grow with the number of images. `plan.json` (count and
digest of the sorted sources) is written after the Parquet file and marks the plan complete.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from engine.dataset import image_key
from engine.sources import ImageSource, InputError, iter_sources
from engine.storage import Storage


@dataclass(frozen=True)
class ImagePlan:
    """Where one input image goes: its id, key and shard are fixed by its input position."""

    image_id: int
    source: ImageSource
    shard: int
    key: str


@dataclass(frozen=True)
class PlanBatch:
    """Consecutive images of one shard of the plan, as columns (what a job sends to its
    tasks: plain lists are several times cheaper to send than an object per image)."""

    shard: int
    image_ids: list[int]
    sources: list[str]
    urls: list[str]
    offsets: list[int]
    sizes: list[int]

    def __len__(self) -> int:
        return len(self.image_ids)

    def image_sources(self) -> list[ImageSource]:
        columns = zip(self.sources, self.urls, self.offsets, self.sizes, strict=True)
        return [ImageSource(source=s, url=u, offset=o, size=n) for s, u, o, n in columns]

    def plans(self) -> list[ImagePlan]:
        return [
            ImagePlan(image_id=image_id, source=source, shard=self.shard, key=image_key(image_id))
            for image_id, source in zip(self.image_ids, self.image_sources(), strict=True)
        ]


def plan_batches(plans: Iterable[ImagePlan], size: int) -> Iterator[PlanBatch]:
    """Consecutive images of the plan, at most `size` at a time, never two shards in one."""
    batch: list[ImagePlan] = []
    for plan in plans:
        if batch and (len(batch) == size or plan.shard != batch[0].shard):
            yield _columns_of(batch)
            batch = []
        batch.append(plan)
    if batch:
        yield _columns_of(batch)


def _columns_of(plans: list[ImagePlan]) -> PlanBatch:
    return PlanBatch(
        shard=plans[0].shard,
        image_ids=[plan.image_id for plan in plans],
        sources=[plan.source.source for plan in plans],
        urls=[plan.source.url for plan in plans],
        offsets=[plan.source.offset for plan in plans],
        sizes=[plan.source.size for plan in plans],
    )


PLAN_FILE = "plan.parquet"
PLAN_INFO_FILE = "plan.json"
PLAN_SCHEMA = pa.schema(
    [("source", pa.string()), ("url", pa.string()), ("offset", pa.int64()), ("size", pa.int64())]
)
RUN_ROWS = 500_000  # sources sorted in memory at a time while planning
ROW_GROUP_ROWS = 65_536


@dataclass(frozen=True)
class PlanInfo:
    """input: the input spec as given; num_images; sources_sha256: SHA-256 over the sorted
    source names (what a resumed job must see again)."""

    input: list[str]
    num_images: int
    sources_sha256: str


def read_plan_info(storage: Storage) -> PlanInfo | None:
    """The complete plan in this output, if there is one."""
    if not storage.exists(PLAN_INFO_FILE) or not storage.exists(PLAN_FILE):
        return None
    return PlanInfo(**json.loads(storage.read_bytes(PLAN_INFO_FILE)))


def write_plan(
    storage: Storage,
    spec: list[str],
    storage_options: dict[str, Any],
    *,
    run_rows: int = RUN_ROWS,
    progress: bool = False,
) -> PlanInfo:
    """List `spec` (directories, globs, list files, tars; local or URLs) into the sorted
    plan of this output, replacing any previous one."""
    storage.remove(PLAN_INFO_FILE)
    listed = tqdm(
        iter_sources(spec, storage_options),
        desc="plan: listing input",
        unit="img",
        disable=not progress,
        mininterval=1.0,
    )
    with tempfile.TemporaryDirectory(prefix="saengine-plan-") as spill:
        runs = _sorted_runs(listed, Path(spill), run_rows)
        digest, count = hashlib.sha256(), 0
        with (
            storage.open_atomic(PLAN_FILE) as handle,
            pq.ParquetWriter(handle, PLAN_SCHEMA, compression="zstd") as writer,
        ):
            for batch in _batches(_unique(heapq.merge(*(_read_run(run) for run in runs)))):
                for source in batch["source"]:
                    digest.update(source.encode() + b"\n")
                count += len(batch["source"])
                writer.write_table(pa.table(batch, schema=PLAN_SCHEMA))
    if not count:
        storage.remove(PLAN_FILE)
        raise InputError(f"no images found in input {spec!r}")
    info = PlanInfo(input=list(spec), num_images=count, sources_sha256=digest.hexdigest())
    storage.write_bytes(PLAN_INFO_FILE, json.dumps(asdict(info), indent=2).encode())
    return info


def iter_plan(
    storage: Storage,
    *,
    images_per_shard: int,
    skip_shards: set[int] | frozenset[int] = frozenset(),
    batch_rows: int = ROW_GROUP_ROWS,
) -> Iterator[ImagePlan]:
    """The planned images in order, read `batch_rows` at a time, without those of
    `skip_shards` (committed by an earlier run)."""
    with storage.open_read(PLAN_FILE) as handle:
        index = 0
        for batch in pq.ParquetFile(handle).iter_batches(batch_size=batch_rows):
            columns = batch.to_pydict()
            for source, url, offset, size in zip(
                columns["source"], columns["url"], columns["offset"], columns["size"]
            ):
                shard = index // images_per_shard
                index += 1
                if shard in skip_shards:
                    continue
                yield ImagePlan(
                    image_id=index,
                    source=ImageSource(source=source, url=url, offset=offset, size=size),
                    shard=shard,
                    key=image_key(index),
                )


Row = tuple[str, str, int, int]


def _sorted_runs(sources: Iterable[ImageSource], folder: Path, run_rows: int) -> list[Path]:
    runs: list[Path] = []
    buffer: list[Row] = []
    for source in sources:
        buffer.append((source.source, source.url, source.offset, source.size))
        if len(buffer) >= run_rows:
            runs.append(_spill(buffer, folder / f"run_{len(runs):05d}.parquet"))
            buffer = []
    if buffer or not runs:
        runs.append(_spill(buffer, folder / f"run_{len(runs):05d}.parquet"))
    return runs


def _spill(rows: list[Row], path: Path) -> Path:
    rows.sort()
    table = pa.table(_columns(rows), schema=PLAN_SCHEMA)
    pq.write_table(table, path, compression="zstd", row_group_size=ROW_GROUP_ROWS)
    return path


def _read_run(path: Path) -> Iterator[Row]:
    for batch in pq.ParquetFile(path).iter_batches(batch_size=ROW_GROUP_ROWS):
        columns = batch.to_pydict()
        yield from zip(columns["source"], columns["url"], columns["offset"], columns["size"])


def _unique(rows: Iterator[Row]) -> Iterator[Row]:
    """The first row of each source (the listing may name an image twice)."""
    last = None
    for row in rows:
        if row[0] != last:
            last = row[0]
            yield row


def _batches(rows: Iterator[Row], size: int = ROW_GROUP_ROWS) -> Iterator[dict[str, list[Any]]]:
    batch: list[Row] = []
    for row in rows:
        batch.append(row)
        if len(batch) >= size:
            yield _columns(batch)
            batch = []
    if batch:
        yield _columns(batch)


def _columns(rows: list[Row]) -> dict[str, list[Any]]:
    return {name: [row[i] for row in rows] for i, name in enumerate(PLAN_SCHEMA.names)}
