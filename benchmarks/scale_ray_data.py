"""A minimal Ray Data version of the generation pipeline, for `benchmarks.bench_scale` to
measure against the batched Ray Core pipeline with the same stand-in model worker.

The same work per batch (decode_sources -> generate_batch on an actor pool -> finish_batch
staging one piece per shard of the batch) runs as three `map_batches` steps under Ray
Data's streaming executor; the driver takes the manifest rows from `iter_batches` and
commits each shard with the same commit task as the job once all its images are back.
What it leaves out (the job's retries of lost actors, the capacity check, the output lock)
costs nothing here, so it is a lower bound of what a full Ray Data job would cost.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import ray

from benchmarks.bench_scale import InstantModelWorker, Measure, Run, measured
from engine.dataset import STATUS_OK, ManifestRow
from engine.dataset.writer import commit_shard
from engine.generation.finish import finish_batch
from engine.generation.plan import ImagePlan, plan_batches
from engine.images import ImageOptions
from engine.storage import Storage
from engine.workers.decode import decode_sources
from stages.automatic import GeneratorConfig


def _objects(values: list[Any]) -> np.ndarray:
    column = np.empty(len(values), dtype=object)
    column[:] = values
    return column


def decode(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    decoded = decode_sources([plan.source for plan in batch["plan"]], ImageOptions(), {})
    return {"plan": batch["plan"], "decoded": _objects(decoded)}


class StandInModel:
    """The stand-in model worker as a Ray Data callable class (an actor pool)."""

    def __init__(self) -> None:
        self.worker = InstantModelWorker()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        candidates = self.worker.generate_batch(list(batch["decoded"]))
        return {**batch, "candidates": _objects(candidates)}


def finish(batch: dict[str, np.ndarray], storage: Storage) -> dict[str, np.ndarray]:
    """finish_batch on each shard's images of the batch (a Ray Data batch may span two)."""
    rows: list[ManifestRow] = []
    pieces: list[int] = []
    plans: list[ImagePlan] = list(batch["plan"])
    for shard in sorted({plan.shard for plan in plans}):
        mine = [i for i, plan in enumerate(plans) if plan.shard == shard]
        (columns,) = plan_batches([plans[i] for i in mine], len(mine))
        rows += finish_batch(
            columns,
            [batch["decoded"][i] for i in mine],
            [batch["candidates"][i] for i in mine],
            storage=storage,
            generator_config=GeneratorConfig(),
        )
        pieces += [plans[mine[0]].image_id] * len(mine)
    return {"row": _objects(rows), "piece": np.array(pieces, dtype=np.int64)}


def run_ray_data(run: Run, *, batch: int, workers: int) -> Measure:
    from ray.data import DataContext, from_items

    DataContext.get_current().enable_progress_bars = False
    storage = Storage(str(run.out))
    commit = ray.remote(num_cpus=0.5)(commit_shard)
    with measured(run.count) as measure:
        dataset = (
            from_items([{"plan": plan} for plan in run.images()])
            .map_batches(decode, batch_size=batch, num_cpus=0.5)
            .map_batches(StandInModel, batch_size=batch, concurrency=workers, num_cpus=0)
            .map_batches(finish, batch_size=batch, num_cpus=0.5, fn_kwargs={"storage": storage})
        )
        rows: dict[int, list[ManifestRow]] = {}
        pieces: dict[int, set[int]] = {}
        commits = []
        for out in dataset.iter_batches(batch_size=None, batch_format="numpy"):
            for row, piece in zip(out["row"], out["piece"]):
                shard = int(row.shard[3:])
                rows.setdefault(shard, []).append(row)
                if row.status == STATUS_OK:
                    pieces.setdefault(shard, set()).add(int(piece))
                if len(rows[shard]) == run.shard_size(shard):
                    shard_pieces = sorted(pieces.pop(shard, set()))
                    commits.append(commit.remote(storage, shard, rows.pop(shard), shard_pieces))
        ray.get(commits)
    return measure
