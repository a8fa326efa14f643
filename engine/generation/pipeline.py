"""The generation pipeline on Ray.

Per image: a decode task (CPU) -> the model worker actor with the fewest images queued
(encoder, decoder, filters, NMS, RLE) -> a finish task (CPU: holes/islands, SA-1B JSON,
files staged for the shard). When every image of a shard is finished, a commit task packs
its tar and writes its manifest part. The driver only moves object references: images flow
between workers through the object store. At most `max_in_flight` images are between decode
and staging at any time, so memory stays flat however large the input. Tasks are retried
after worker failures, and dead model workers are restarted (their queued images retried).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import ray
from ray.exceptions import RayTaskError

from engine.dataset import STATUS_ERROR, ManifestRow, shard_name
from engine.generation.workers import (
    ImagePlan,
    ModelWorker,
    ShardInfo,
    commit_shard,
    decode_source,
    finish_image,
)
from engine.images import ImageOptions
from engine.storage import Storage
from stages.automatic import GeneratorConfig

TASK_RETRIES = 3


@dataclass(frozen=True)
class Resources:
    """model_actors: model workers (one per GPU on a cluster); gpus_per_actor /
    cpus_per_actor: what each holds; cpus_per_task: per decode/finish/commit task;
    max_in_flight: images between decode and staging (None: 4 per model worker);
    max_restarts: restarts of a dead model worker before the job fails;
    device: 'auto' | 'cpu' | 'cuda'; precision: 'fp32' (exact) | 'bf16' (fast, CUDA)."""

    model_actors: int = 1
    gpus_per_actor: float = 0.0
    cpus_per_actor: float = 1.0
    cpus_per_task: float = 1.0
    max_in_flight: int | None = None
    max_restarts: int = 3
    device: str = "auto"
    precision: str = "fp32"

    def __post_init__(self) -> None:
        if self.model_actors < 1:
            raise ValueError(f"resources.model_actors must be >= 1, got {self.model_actors}")
        for name in ("gpus_per_actor", "cpus_per_actor", "cpus_per_task"):
            if getattr(self, name) < 0:
                raise ValueError(f"resources.{name} must be >= 0, got {getattr(self, name)}")
        if self.max_in_flight is not None and self.max_in_flight < 1:
            raise ValueError(f"resources.max_in_flight must be >= 1, got {self.max_in_flight}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"resources.device must be auto, cpu or cuda, got {self.device!r}")
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(f"resources.precision must be fp32 or bf16, got {self.precision!r}")

    @property
    def in_flight(self) -> int:
        return self.max_in_flight or 4 * self.model_actors


@dataclass
class PipelineResult:
    shards: list[ShardInfo] = field(default_factory=list)
    worker_stats: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0


def start_model_workers(
    *,
    model_config: dict[str, Any],
    generator_config: GeneratorConfig,
    resources: Resources,
) -> list[Any]:
    device = resources.device
    if device == "auto":
        device = "cuda" if resources.gpus_per_actor > 0 else "cpu"
    actor_class = ray.remote(
        num_cpus=resources.cpus_per_actor,
        num_gpus=resources.gpus_per_actor,
        max_restarts=resources.max_restarts,
        max_task_retries=TASK_RETRIES,
    )(ModelWorker)
    threads = max(1, int(resources.cpus_per_actor))
    return [
        actor_class.remote(
            model_config=model_config,
            generator_config=generator_config,
            device=device,
            precision=resources.precision,
            threads=threads,
        )
        for _ in range(resources.model_actors)
    ]


class Pipeline:
    """Processes `plans` (images of uncommitted shards, in order) and commits their shards.
    Holds the scheduling state: what is queued, in flight and finished per shard."""

    def __init__(
        self,
        plans: Sequence[ImagePlan],
        *,
        workers: list[Any],
        storage: Storage,
        generator_config: GeneratorConfig,
        image_options: ImageOptions,
        storage_options: dict[str, Any],
        resources: Resources,
        on_image: Callable[[ManifestRow], None] = lambda row: None,
        on_shard: Callable[[ShardInfo], None] = lambda info: None,
    ) -> None:
        self.queue = deque(plans)
        self.workers = workers
        self.queued = [0] * len(workers)
        self.remaining: dict[int, int] = {}
        for plan in plans:
            self.remaining[plan.shard] = self.remaining.get(plan.shard, 0) + 1
        self.rows: dict[int, list[ManifestRow]] = {shard: [] for shard in self.remaining}
        self.images: dict[Any, tuple[ImagePlan, int]] = {}
        self.commits: dict[Any, int] = {}
        self.storage = storage
        self.resources = resources
        self.on_image, self.on_shard = on_image, on_shard
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
        while self.queue or self.images or self.commits:
            while self.queue and len(self.images) < self.resources.in_flight:
                self._submit(self.queue.popleft())
            ready, _ = ray.wait([*self.images, *self.commits], num_returns=1)
            for ref in ready:
                if ref in self.images:
                    self._image_done(ref)
                else:
                    self.commits.pop(ref)
                    info = ray.get(ref)
                    shards.append(info)
                    self.on_shard(info)
        return sorted(shards, key=lambda info: info.shard)

    def _submit(self, plan: ImagePlan) -> None:
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
        except RayTaskError as error:
            # An unexpected failure on one image: an error row, and the job goes on.
            message = str(error.cause if error.cause else error).strip().splitlines()
            row = ManifestRow(
                image_id=plan.image_id,
                source=plan.source.source,
                shard=shard_name(plan.shard),
                key=plan.key,
                width=0,
                height=0,
                num_masks=0,
                status=STATUS_ERROR,
                error=f"internal error: {message[0] if message else type(error).__name__}",
            )
        self.rows[plan.shard].append(row)
        self.on_image(row)
        self.remaining[plan.shard] -= 1
        if self.remaining[plan.shard] == 0:
            commit = self.commit.remote(self.storage, plan.shard, self.rows.pop(plan.shard))
            self.commits[commit] = plan.shard
