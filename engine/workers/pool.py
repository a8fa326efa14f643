"""Model workers on Ray: the resources they hold (`Resources`, from config), one way to
start a pool of them and check what it loaded (`start_model_workers`), and one bounded
submission loop for jobs that feed them (`run_bounded`).

Actors are restarted by Ray after a crash (`max_restarts`), their calls retried
(`max_task_retries`); a job that needs another model stops the pool and starts a new one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from engine.errors import UsageError
from engine.workers.model import ModelWorker

TASK_RETRIES = 3


class ModelLoadError(UsageError):
    """The model workers could not load the model asked for (one line for the user)."""


@dataclass(frozen=True)
class Resources:
    """model_actors: model workers (one per GPU on a cluster); gpus_per_actor /
    cpus_per_actor / actor_resources (custom Ray resources, e.g. {"model_node": 1}): what
    each holds; cpus_per_task: per decode/finish/commit task; batch_images: images per
    decode/model/finish call of a generation job (the unit of work the driver handles);
    max_in_flight: images between decode and staging (None: 4 per model worker, and for a
    generation job 3 batches per model worker); max_restarts: restarts of a dead model
    worker before the job fails; capacity_wait_s: how long the job waits for a node that
    can host a model worker before it stops; device: 'auto' | 'cpu' | 'cuda'; precision:
    'fp32' (exact) | 'bf16' (fast, CUDA)."""

    model_actors: int = 1
    gpus_per_actor: float = 0.0
    cpus_per_actor: float = 1.0
    actor_resources: dict[str, float] = field(default_factory=dict)
    cpus_per_task: float = 1.0
    batch_images: int = 16
    max_in_flight: int | None = None
    max_restarts: int = 3
    capacity_wait_s: float = 300.0
    device: str = "auto"
    precision: str = "fp32"

    def __post_init__(self) -> None:
        object.__setattr__(self, "actor_resources", dict(self.actor_resources or {}))
        if self.capacity_wait_s <= 0:
            raise ValueError(f"resources.capacity_wait_s must be > 0, got {self.capacity_wait_s}")
        for name, amount in self.actor_resources.items():
            if amount < 0:
                raise ValueError(f"resources.actor_resources.{name} must be >= 0, got {amount}")
        if self.model_actors < 1:
            raise ValueError(f"resources.model_actors must be >= 1, got {self.model_actors}")
        for name in ("gpus_per_actor", "cpus_per_actor", "cpus_per_task"):
            if getattr(self, name) < 0:
                raise ValueError(f"resources.{name} must be >= 0, got {getattr(self, name)}")
        if self.batch_images < 1:
            raise ValueError(f"resources.batch_images must be >= 1, got {self.batch_images}")
        if self.max_in_flight is not None and self.max_in_flight < 1:
            raise ValueError(f"resources.max_in_flight must be >= 1, got {self.max_in_flight}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"resources.device must be auto, cpu or cuda, got {self.device!r}")
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(f"resources.precision must be fp32 or bf16, got {self.precision!r}")

    @property
    def in_flight(self) -> int:
        return self.max_in_flight or 4 * self.model_actors

    @property
    def images_in_flight(self) -> int:
        """A generation job's bound on images between decode and staging."""
        return self.max_in_flight or 3 * self.batch_images * self.model_actors

    @property
    def batch_size(self) -> int:
        """Images per batch of a generation job (never more than may be in flight)."""
        return min(self.batch_images, self.images_in_flight)

    @property
    def actor_device(self) -> str:
        """The device a model worker uses: 'auto' means CUDA when it holds a GPU."""
        if self.device == "auto":
            return "cuda" if self.gpus_per_actor > 0 else "cpu"
        return self.device

    def actor_needs(self) -> dict[str, float]:
        """The Ray resources one model worker holds."""
        needs = {"CPU": self.cpus_per_actor, "GPU": self.gpus_per_actor, **self.actor_resources}
        return {name: amount for name, amount in needs.items() if amount > 0}


@dataclass
class WorkerPool:
    """Started model workers (Ray actor handles) and the identity of the model they loaded
    (`ModelWorker.identity`)."""

    actors: list[Any]
    identity: dict[str, Any]

    def stop(self) -> None:
        import ray

        for actor in self.actors:
            ray.kill(actor)


def start_model_workers(
    *,
    resources: Resources,
    worker_class: type[ModelWorker] = ModelWorker,
    expect_sha256: str | None = None,
    **arguments: Any,
) -> WorkerPool:
    """`resources.model_actors` actors of `worker_class` (keyword `arguments` go to it, with
    the device, precision and torch threads from `resources`). Raises ModelLoadError when
    the model does not load, or (with `expect_sha256`) loads with other weights."""
    import ray

    actor_class: Any = ray.remote(
        num_cpus=resources.cpus_per_actor,
        num_gpus=resources.gpus_per_actor,
        resources=dict(resources.actor_resources),
        max_restarts=resources.max_restarts,
        max_task_retries=TASK_RETRIES,
    )(worker_class)
    actors = [
        actor_class.remote(
            device=resources.actor_device,
            precision=resources.precision,
            threads=max(1, int(resources.cpus_per_actor)),
            **arguments,
        )
        for _ in range(resources.model_actors)
    ]
    pool = WorkerPool(actors=actors, identity=ray.get(actors[0].identity.remote()))
    problem = _identity_problem(pool.identity, expect_sha256)
    if problem:
        pool.stop()
        raise ModelLoadError(problem)
    return pool


def _identity_problem(identity: dict[str, Any], expect_sha256: str | None) -> str | None:
    if "error" in identity:
        return f"cannot load model: {identity['error']}"
    loaded = identity["weights_sha256"]
    if expect_sha256 is not None and loaded != expect_sha256:
        return f"model {expect_sha256[:12]} now loads as {loaded[:12]}: its checkpoint file changed"
    return None


def run_bounded(
    items: Iterable[Any],
    submit: Callable[[Any, int], Any],
    on_done: Callable[[Any, Any], None],
    in_flight: int,
) -> None:
    """Submit each item's Ray work (submit(item, turn) -> the ref of its last step), at most
    `in_flight` at a time, and hand each result to on_done(item, result) as it ends."""
    import ray

    pending: dict[Any, Any] = {}
    queue = iter(items)
    turn = 0
    item = next(queue, None)
    while item is not None or pending:
        while item is not None and len(pending) < in_flight:
            pending[submit(item, turn)] = item
            turn += 1
            item = next(queue, None)
        ready, _ = ray.wait(list(pending), num_returns=1)
        for ref in ready:
            on_done(pending.pop(ref), ray.get(ref))
