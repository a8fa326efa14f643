"""The generation pipeline on Ray.

Per image: a decode task (CPU) -> the model worker actor with the fewest images queued
(encoder, decoder, filters, NMS, RLE) -> a finish task (CPU: holes/islands, SA-1B JSON,
files staged for the shard). When every image of a shard is finished, a commit task packs
its tar and writes its manifest part. The driver only moves object references: images flow
between workers through the object store. At most `max_in_flight` images are between decode
and staging at any time, and the plan is read as the pipeline goes, so memory stays flat
however large the input. Tasks are retried after worker failures, and dead model workers
are restarted (their queued images retried). When the cluster has no node left that can
host a model worker (a lost node, and no autoscaler bringing one back within
`capacity_wait_s`), the job stops with an error; committed shards are kept.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import ray
from ray.exceptions import ActorUnavailableError, RayActorError, RayTaskError

from engine.dataset import ManifestRow
from engine.dataset.writer import ShardInfo, commit_shard
from engine.errors import first_line
from engine.generation.finish import failed_row, finish_image
from engine.generation.plan import ImagePlan
from engine.images import ImageOptions
from engine.storage import Storage
from engine.workers.decode import decode_source
from engine.workers.pool import TASK_RETRIES, Resources
from stages.automatic import GeneratorConfig

CHECK_S = 10.0  # how often the driver looks at the cluster while nothing finishes


@dataclass
class PipelineResult:
    shards: list[ShardInfo] = field(default_factory=list)
    worker_stats: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0


class JobStopped(RuntimeError):
    """The pipeline cannot go on (no capacity left, a model worker dead for good, the output
    lock lost); committed shards are kept and a rerun resumes."""


class Pipeline:
    """Processes `plans` (images of uncommitted shards, in order, read as needed) and commits
    their shards. Holds the scheduling state: what is in flight and finished per shard.
    shard_size(shard): how many images the plan puts in that shard."""

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
        on_image: Callable[[ManifestRow], None] = lambda row: None,
        on_shard: Callable[[ShardInfo], None] = lambda info: None,
        should_stop: Callable[[], str | None] = lambda: None,
    ) -> None:
        self.queue: Iterator[ImagePlan] = iter(plans)
        self.pending: ImagePlan | None = next(self.queue, None)
        self.shard_size = shard_size
        self.workers = workers
        self.queued = [0] * len(workers)
        self.remaining: dict[int, int] = {}
        self.rows: dict[int, list[ManifestRow]] = {}
        self.images: dict[Any, tuple[ImagePlan, int]] = {}
        self.commits: dict[Any, int] = {}
        self.storage = storage
        self.resources = resources
        self.on_image, self.on_shard, self.should_stop = on_image, on_shard, should_stop
        self.stalled_since: float | None = None
        self.retries: dict[int, int] = {}
        cpus = resources.cpus_per_task
        task: Any = ray.remote(num_cpus=cpus, max_retries=TASK_RETRIES)
        self.decode = task(decode_source)
        self.finish = task(finish_image)
        self.commit = task(commit_shard)
        self.image_options = ray.put(image_options)
        self.storage_options = storage_options
        self.generator_config = ray.put(generator_config)

    def run(self) -> PipelineResult:
        start = time.perf_counter()
        shards = self._schedule()
        stats = ray.get([worker.stats.remote() for worker in self.workers])
        return PipelineResult(
            shards=shards, worker_stats=stats, seconds=time.perf_counter() - start
        )

    def _schedule(self) -> list[ShardInfo]:
        shards: list[ShardInfo] = []
        while self.pending is not None or self.images or self.commits:
            while self.pending is not None and len(self.images) < self.resources.in_flight:
                self._submit(self.pending)
                self.pending = next(self.queue, None)
            ready, _ = ray.wait([*self.images, *self.commits], num_returns=1, timeout=CHECK_S)
            self._check(progress=bool(ready))
            for ref in ready:
                if ref in self.images:
                    self._image_done(ref)
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

    def _submit(self, plan: ImagePlan) -> None:
        if plan.shard not in self.remaining:
            self.remaining[plan.shard] = self.shard_size(plan.shard)
            self.rows[plan.shard] = []
        worker = min(range(len(self.workers)), key=lambda i: self.queued[i])
        decoded = self.decode.remote(plan.source, self.image_options, self.storage_options)
        candidates = self.workers[worker].generate.remote(decoded)
        row = self.finish.remote(
            plan,
            decoded,
            candidates,
            storage=self.storage,
            generator_config=self.generator_config,
        )
        self.queued[worker] += 1
        self.images[row] = (plan, worker)

    def _image_done(self, ref: Any) -> None:
        plan, worker = self.images.pop(ref)
        self.queued[worker] -= 1
        try:
            row: ManifestRow = ray.get(ref)
        except RayActorError as error:
            cause = getattr(error, "cause", None) or error
            if isinstance(cause, ActorUnavailableError) and self._retry(plan):
                return  # the worker is restarting (its node was lost?): send the image again
            raise JobStopped(
                f"a model worker is gone ({type(cause).__name__}: {first_line(cause)}); "
                "committed shards are kept: rerun the job to resume"
            ) from error
        except RayTaskError as error:
            # An unexpected failure on one image: an error row, and the job goes on.
            row = failed_row(plan, f"internal error: {first_line(error)}")
        self.rows[plan.shard].append(row)
        self.on_image(row)
        self.remaining[plan.shard] -= 1
        if self.remaining[plan.shard] == 0:
            del self.remaining[plan.shard]
            commit = self.commit.remote(self.storage, plan.shard, self.rows.pop(plan.shard))
            self.commits[commit] = plan.shard

    def _retry(self, plan: ImagePlan) -> bool:
        tries = self.retries.get(plan.image_id, 0)
        if tries >= TASK_RETRIES:
            return False
        self.retries[plan.image_id] = tries + 1
        self._submit(plan)
        return True


def _can_host(needs: dict[str, float]) -> bool:
    """Whether some alive node of the cluster has (in total) what a model worker needs."""
    for node in ray.nodes():
        total = node.get("Resources", {})
        if node.get("Alive") and all(total.get(k, 0.0) >= v for k, v in needs.items()):
            return True
    return False
