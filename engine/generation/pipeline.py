"""The generation pipeline on Ray.

The unit of work is a batch of images of one shard (`resources.batch_images`), not an image:
per batch, a decode task (CPU) -> the model worker actor with the fewest images queued
(encoder, decoder, filters, NMS, RLE; one call for the batch) -> a finish task (CPU:
holes/islands, SA-1B JSON, the batch's files staged as one piece of its shard), whose one
result holds the batch's manifest rows. When every image of a shard is finished, a commit
task packs its tar from the pieces and writes its manifest part. The driver only moves
object references, three calls per batch (and one per shard): images flow between workers
through the object store, so one driver can feed many model workers. At most
`resources.images_in_flight` images are between decode and staging at any time, and the
plan is read as the pipeline goes, so memory stays flat however large the input. Tasks are
retried after worker failures, and dead model workers are restarted (their queued batches
retried). When the cluster has no node left that can host a model worker (a lost node, and
no autoscaler bringing one back within `capacity_wait_s`), the job stops with an error;
committed shards are kept.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import ray
from ray.exceptions import ActorUnavailableError, RayActorError, RayTaskError

from engine.dataset import STATUS_OK, ManifestRow
from engine.dataset.writer import ShardInfo, commit_shard
from engine.errors import first_line
from engine.generation.finish import failed_row, finish_batch
from engine.generation.plan import ImagePlan, PlanBatch, plan_batches
from engine.images import DecodedImage, ImageOptions
from engine.storage import Storage
from engine.workers.decode import Failure, decode_sources
from engine.workers.pool import TASK_RETRIES, Resources
from stages.automatic import GeneratorConfig

CHECK_S = 10.0  # how often the driver looks at the cluster while nothing finishes


@dataclass
class PipelineResult:
    shards: list[ShardInfo] = field(default_factory=list)
    worker_stats: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    ray_calls: int = 0  # tasks and actor calls the driver submitted


class JobStopped(RuntimeError):
    """The pipeline cannot go on (no capacity left, a model worker dead for good, the output
    lock lost); committed shards are kept and a rerun resumes."""


@dataclass
class ShardState:
    """What the driver knows of a shard being processed: images not yet finished, the
    manifest rows of those that are, and the pieces their files were staged in."""

    remaining: int
    rows: list[ManifestRow] = field(default_factory=list)
    pieces: list[int] = field(default_factory=list)


def decode_batch(
    batch: PlanBatch, options: ImageOptions, storage_options: dict[str, Any]
) -> list[DecodedImage | Failure]:
    """The decode task of a batch."""
    return decode_sources(batch.image_sources(), options, storage_options)


class Pipeline:
    """Processes `plans` (images of uncommitted shards, in order, read as needed) and commits
    their shards. Holds the scheduling state: the batches in flight and the shards being
    processed. shard_size(shard): how many images the plan puts in that shard; on_rows:
    called with the manifest rows of each finished batch."""

    def __init__(
        self,
        plans: Iterable[ImagePlan],
        *,
        shard_size: Callable[[int], int],
        workers: list[Any],
        storage: Storage,
        generator_config: GeneratorConfig,
        image_options: ImageOptions,
        storage_options: dict[str, Any],
        resources: Resources,
        on_rows: Callable[[list[ManifestRow]], None] = lambda rows: None,
        on_shard: Callable[[ShardInfo], None] = lambda info: None,
        should_stop: Callable[[], str | None] = lambda: None,
    ) -> None:
        self.queue: Iterator[PlanBatch] = plan_batches(plans, resources.batch_size)
        self.pending: PlanBatch | None = next(self.queue, None)
        self.shard_size = shard_size
        self.workers = workers
        self.queued = [0] * len(workers)
        self.shards: dict[int, ShardState] = {}
        self.batches: dict[Any, tuple[PlanBatch, int]] = {}
        self.in_flight = 0
        self.commits: dict[Any, int] = {}
        self.storage = storage
        self.resources = resources
        self.on_rows, self.on_shard, self.should_stop = on_rows, on_shard, should_stop
        self.stalled_since: float | None = None
        self.retries: dict[int, int] = {}
        self.ray_calls = 0
        cpus = resources.cpus_per_task
        task: Any = ray.remote(num_cpus=cpus, max_retries=TASK_RETRIES)
        self.decode = task(decode_batch)
        self.finish = task(finish_batch)
        self.commit = task(commit_shard)
        self.storage_ref = ray.put(storage)
        self.image_options = ray.put(image_options)
        self.storage_options = ray.put(storage_options)
        self.generator_config = ray.put(generator_config)

    def run(self) -> PipelineResult:
        start = time.perf_counter()
        shards = self._schedule()
        stats = ray.get([worker.stats.remote() for worker in self.workers])
        return PipelineResult(
            shards=shards,
            worker_stats=stats,
            seconds=time.perf_counter() - start,
            ray_calls=self.ray_calls,
        )

    def _schedule(self) -> list[ShardInfo]:
        shards: list[ShardInfo] = []
        limit = self.resources.images_in_flight
        while self.pending is not None or self.batches or self.commits:
            while self.pending is not None and self.in_flight + len(self.pending) <= limit:
                self._submit(self.pending)
                self.pending = next(self.queue, None)
            ready, _ = ray.wait([*self.batches, *self.commits], num_returns=1, timeout=CHECK_S)
            self._check(progress=bool(ready))
            for ref in ready:
                if ref in self.batches:
                    self._batch_done(ref)
                else:
                    self.commits.pop(ref)
                    info = ray.get(ref)
                    shards.append(info)
                    self.on_shard(info)
        return sorted(shards, key=lambda info: info.shard)

    def _check(self, *, progress: bool) -> None:
        """Stop when told to, or when no node can host a model worker for too long."""
        reason = self.should_stop()
        if reason:
            raise JobStopped(reason)
        if progress:
            self.stalled_since = None
            return
        now = time.monotonic()
        self.stalled_since = self.stalled_since or now
        if now - self.stalled_since < CHECK_S or _can_host(self.resources.actor_needs()):
            return
        if now - self.stalled_since >= self.resources.capacity_wait_s:
            needs = ", ".join(f"{k}={v:g}" for k, v in self.resources.actor_needs().items())
            raise JobStopped(
                f"no node of the cluster can host a model worker ({needs}) for "
                f"{self.resources.capacity_wait_s:g} s (a node was lost?); committed shards "
                "are kept: rerun the job when the capacity is back"
            )

    def _submit(self, batch: PlanBatch) -> None:
        if batch.shard not in self.shards:
            self.shards[batch.shard] = ShardState(remaining=self.shard_size(batch.shard))
        worker = min(range(len(self.workers)), key=lambda i: self.queued[i])
        decoded = self.decode.remote(batch, self.image_options, self.storage_options)
        candidates = self.workers[worker].generate_batch.remote(decoded)
        rows = self.finish.remote(
            batch,
            decoded,
            candidates,
            storage=self.storage_ref,
            generator_config=self.generator_config,
        )
        self.ray_calls += 3
        self.queued[worker] += len(batch)
        self.in_flight += len(batch)
        self.batches[rows] = (batch, worker)

    def _batch_done(self, ref: Any) -> None:
        batch, worker = self.batches.pop(ref)
        self.queued[worker] -= len(batch)
        self.in_flight -= len(batch)
        try:
            rows: list[ManifestRow] = ray.get(ref)
        except RayActorError as error:
            cause = getattr(error, "cause", None) or error
            if isinstance(cause, ActorUnavailableError) and self._retry(batch):
                return  # the worker is restarting (its node was lost?): send the batch again
            raise JobStopped(
                f"a model worker is gone ({type(cause).__name__}: {first_line(cause)}); "
                "committed shards are kept: rerun the job to resume"
            ) from error
        except RayTaskError as error:
            # An unexpected failure of the whole batch: error rows, and the job goes on.
            message = f"internal error: {first_line(error)}"
            rows = [failed_row(plan, message) for plan in batch.plans()]
        shard = batch.shard
        state = self.shards[shard]
        state.rows += rows
        if any(row.status == STATUS_OK for row in rows):
            state.pieces.append(batch.image_ids[0])
        self.on_rows(rows)
        state.remaining -= len(batch)
        if state.remaining == 0:
            del self.shards[shard]
            commit = self.commit.remote(self.storage_ref, shard, state.rows, state.pieces)
            self.ray_calls += 1
            self.commits[commit] = shard

    def _retry(self, batch: PlanBatch) -> bool:
        first = batch.image_ids[0]
        tries = self.retries.get(first, 0)
        if tries >= TASK_RETRIES:
            return False
        self.retries[first] = tries + 1
        self._submit(batch)
        return True


def _can_host(needs: dict[str, float]) -> bool:
    """Whether some alive node of the cluster has (in total) what a model worker needs."""
    for node in ray.nodes():
        total = node.get("Resources", {})
        if node.get("Alive") and all(total.get(k, 0.0) >= v for k, v in needs.items()):
            return True
    return False
