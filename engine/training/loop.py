"""The one training loop of every model the engine trains (SAM, the stage-2 box detector),
in this process or on Ray Train workers.

A task (`TrainingTask`) says what is trained and how one worker computes its share of a
step's loss; the loop (`TrainingLoop`) does the rest, the same way for every task:

- step s's global batch: a slice of the seeded permutation of the task's examples
  (`global_batch_indices`), split across workers (`worker_share`);
- AdamW with linear warmup, then step decay at fractions of the run (`learning_rate_factor`);
- gradients all-reduced across workers (data parallel: gloo on CPU, NCCL on GPU), clipped
  to grad_clip; the logged values summed across workers the same way;
- rank 0 appends each step's record to `metrics.jsonl` and saves the training state
  atomically to `checkpoints/last.pt` every checkpoint_every steps and at the end; a run
  resumes from it, and refuses a state saved by a run of another identity.

`run_in_process` runs a loop here with a progress bar; `run_on_ray` runs one loop per Ray
Train worker (`TorchTrainer`), each rebuilt there from plain data.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Generic, Protocol, TypeVar

import torch

from engine.files import write_atomic
from engine.models import resolve_device
from engine.training.reader import global_batch_indices, worker_share
from model.checkpoint import save_atomic

STATE_FILE = "checkpoints/last.pt"
METRICS_FILE = "metrics.jsonl"


@dataclass(frozen=True, kw_only=True)
class TrainSettings:
    """What every training run has (a task's settings add their own; defaults are SAM's
    recipe, a task's settings may change them). data: SA-1B-format datasets (folders or
    tars); output: the run's folder; init_checkpoint: what to start from (None: random init
    with seed); steps, batch_size (global examples per step); lr, weight_decay (AdamW),
    warmup_steps, decay_at (fractions of steps where lr is multiplied by decay_factor),
    grad_clip (0: off); checkpoint_every, log_every (steps); device: auto | cpu | cuda ..."""

    data: tuple[str, ...]
    output: str
    init_checkpoint: str | None = None
    steps: int = 200
    batch_size: int = 4
    lr: float = 4e-4
    weight_decay: float = 0.1
    warmup_steps: int = 20
    decay_at: tuple[float, ...] = (0.67, 0.89)
    decay_factor: float = 0.1
    grad_clip: float = 1.0
    seed: int = 0
    checkpoint_every: int = 50
    log_every: int = 10
    device: str = "auto"

    def __post_init__(self) -> None:
        if not self.data:
            raise ValueError("data must name at least one dataset")
        for name in ("steps", "batch_size", "checkpoint_every", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.warmup_steps < 0 or self.grad_clip < 0:
            raise ValueError(
                f"warmup_steps and grad_clip must be >= 0, got {self.warmup_steps}, "
                f"{self.grad_clip}"
            )
        if any(not 0 < f <= 1 for f in self.decay_at):
            raise ValueError(f"decay_at must be fractions in (0, 1], got {list(self.decay_at)}")

    def identity(self) -> dict[str, Any]:
        """What a resumed run must share with the run it continues: every setting but
        those that only say how it runs."""
        skip = {"checkpoint_every", "log_every", "device"}
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in skip}


def learning_rate_factor(step: int, settings: TrainSettings) -> float:
    """Linear warmup, then step decay at the `decay_at` fractions of the run."""
    warm = min(1.0, (step + 1) / settings.warmup_steps) if settings.warmup_steps else 1.0
    drops = sum(step >= math.ceil(f * settings.steps) for f in settings.decay_at)
    return float(warm * settings.decay_factor**drops)


@dataclass(frozen=True)
class BatchShare:
    """One worker's part of a step: step (0-based, the step being taken), indices (the
    global batch: example indices), mine (this worker's share of them) and all_reduce (sums
    a list of values over the workers; every worker must call it the same times)."""

    step: int
    indices: list[int]
    mine: list[int]
    all_reduce: Callable[[list[float]], list[float]]


class StepRecord(Protocol):
    """A step's record: a dataclass, one line of metrics.jsonl."""

    __dataclass_fields__: ClassVar[dict[str, Any]]
    step: int
    loss: float

    def postfix(self) -> dict[str, str]:
        """What the progress bar shows of the step."""
        ...


R = TypeVar("R", bound=StepRecord)
R_co = TypeVar("R_co", bound=StepRecord, covariant=True)


class TrainingTask(Protocol[R_co]):
    """What a model's training brings to the loop.

    name: the progress bar's label and the Ray Train run's name; module_key, identity_key:
    the keys of the module's state_dict and of the identity in the training state (each
    task keeps the keys its states have always had, so older runs still resume);
    config_file: the JSON file in the output folder `config_record` is written to when the
    loop runs; record_type: makes a step's record from step, lr, seconds and the values
    `loss` returns."""

    name: str
    module_key: str
    identity_key: str
    config_file: str

    @property
    def record_type(self) -> Callable[..., R_co]: ...

    @property
    def module(self) -> torch.nn.Module:
        """What is trained (its parameters that require grad) and saved."""
        ...

    def num_examples(self) -> int:
        """How many examples the global batches are drawn from."""
        ...

    def loss(self, share: BatchShare) -> tuple[torch.Tensor, dict[str, Any]]:
        """This worker's share of the step's loss (the all-reduce of the gradients sums the
        shares into the global batch's loss) and the step's values for its record, the same
        on every worker (summed with share.all_reduce)."""
        ...

    def identity(self) -> dict[str, Any]:
        """What a resumed run must share with the run that saved the state."""
        ...

    def config_record(self) -> dict[str, Any]:
        """The run's settings, as written to config_file."""
        ...

    def save_artifacts(self, output: Path) -> None:
        """Write what the task keeps beside the training state (after each save)."""
        ...


def read_state(
    output: str | Path, identity: dict[str, Any], *, key: str, device: torch.device | str
) -> dict[str, Any] | None:
    """The training state saved in `output` (None: none yet); ValueError when a run of
    another identity (state[key]) saved it."""
    path = Path(output) / STATE_FILE
    if not path.exists():
        return None
    state: dict[str, Any] = torch.load(path, map_location=device, weights_only=True)
    if state[key] != identity:
        raise ValueError(
            f"{output} holds a training run with another config (other settings or data); "
            "use another output"
        )
    return state


class TrainingLoop(Generic[R]):
    """The training loop of one worker (rank of world_size). build_task makes the task on
    the worker's device once the random generator is seeded with settings.seed."""

    def __init__(
        self,
        settings: TrainSettings,
        build_task: Callable[[torch.device], TrainingTask[R]],
        *,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if settings.batch_size < world_size:
            raise ValueError(f"batch_size {settings.batch_size} is below the {world_size} workers")
        self.settings, self.rank, self.world_size = settings, rank, world_size
        self.device = resolve_device(settings.device)
        torch.manual_seed(settings.seed)
        self.task = build_task(self.device)
        self.params = [p for p in self.task.module.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(
            self.params, lr=settings.lr, weight_decay=settings.weight_decay
        )
        self.output = Path(settings.output)
        self.step = 0
        self._resume()

    def _resume(self) -> None:
        identity = self.task.identity()
        state = read_state(self.output, identity, key=self.task.identity_key, device=self.device)
        if state is None:
            return
        self.task.module.load_state_dict(state[self.task.module_key])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = int(state["step"])

    def run(self, report: Callable[[R], None] | None = None) -> list[R]:
        """Train until settings.steps (continuing a saved run); rank 0 appends each step to
        metrics.jsonl and saves every checkpoint_every steps and at the end."""
        settings, results = self.settings, []
        if self.rank == 0:
            record = json.dumps(self.task.config_record(), indent=2)
            write_atomic(self.output / self.task.config_file, record)
        while self.step < settings.steps:
            result = self.train_step()
            results.append(result)
            if self.rank == 0:
                with open(self.output / METRICS_FILE, "a") as handle:
                    handle.write(json.dumps(dataclasses.asdict(result)) + "\n")
            if report is not None:
                report(result)
            at_end = self.step == settings.steps
            if self.rank == 0 and (self.step % settings.checkpoint_every == 0 or at_end):
                self.save()
        return results

    def train_step(self) -> R:
        settings, start = self.settings, time.perf_counter()
        lr = settings.lr * learning_rate_factor(self.step, settings)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        indices = global_batch_indices(
            self.task.num_examples(),
            seed=settings.seed,
            step=self.step,
            batch_size=settings.batch_size,
        )
        mine = worker_share(indices, self.rank, self.world_size)
        share = BatchShare(
            step=self.step, indices=indices, mine=mine, all_reduce=self.all_reduce_values
        )
        self.optimizer.zero_grad(set_to_none=False)
        loss, values = self.task.loss(share)
        loss.backward()
        self._all_reduce_gradients()
        if settings.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.params, settings.grad_clip)
        self.optimizer.step()
        self.step += 1
        seconds = time.perf_counter() - start
        return self.task.record_type(step=self.step, lr=lr, seconds=seconds, **values)

    def _all_reduce_gradients(self) -> None:
        if self.world_size == 1:
            return
        import torch.distributed as dist

        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
        flat = torch.cat([g.flatten() for g in grads])
        dist.all_reduce(flat)
        offset = 0
        for param, grad in zip(self.params, grads):
            param.grad = flat[offset : offset + grad.numel()].view_as(grad).clone()
            offset += grad.numel()

    def all_reduce_values(self, values: list[float]) -> list[float]:
        """The sums of `values` over the workers (in float64)."""
        if self.world_size == 1:
            return values
        import torch.distributed as dist

        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor)
        return [float(v) for v in tensor.tolist()]

    def save(self) -> None:
        """The training state (for resume), atomically, then the task's artifacts."""
        state = {
            self.task.module_key: self.task.module.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "step": self.step,
            self.task.identity_key: self.task.identity(),
        }
        save_atomic(state, self.output / STATE_FILE)
        self.task.save_artifacts(self.output)


def read_metrics(output: str | Path) -> list[dict[str, Any]]:
    """The steps recorded in a run's metrics.jsonl (the last record of each step)."""
    path = Path(output) / METRICS_FILE
    if not path.exists():
        return []
    by_step = {}
    for line in path.read_text().splitlines():
        record = json.loads(line)
        by_step[record["step"]] = record
    return [by_step[step] for step in sorted(by_step)]


def run_in_process(loop: TrainingLoop[R], report: Callable[[R], None] | None = None) -> list[R]:
    """Run `loop` in this process with a progress bar (steps/s and the record's postfix)."""
    from tqdm import tqdm

    steps = loop.settings.steps
    with tqdm(total=steps, initial=loop.step, unit="step", desc=loop.task.name) as bar:

        def on_step(result: R) -> None:
            bar.set_postfix(result.postfix())
            bar.update(1)
            if report is not None:
                report(result)

        return loop.run(on_step)


class LoopBuilder(Protocol):
    """Makes the loop of one Ray Train worker from plain data (dicts of the task's
    settings); a module-level function, so that Ray sends it by reference."""

    def __call__(
        self, plain: dict[str, Any], *, rank: int, world_size: int
    ) -> TrainingLoop[Any]: ...


def run_on_ray(
    build: LoopBuilder,
    plain: dict[str, Any],
    *,
    output: str,
    name: str,
    workers: int,
    use_gpu: bool = False,
) -> list[dict[str, Any]]:
    """The loop `build` makes from `plain`, on `workers` Ray Train workers (TorchTrainer:
    gloo on CPU, NCCL on GPU), on the Ray that is initialized (or a local one); Ray Train's
    own files go to `<output>/ray/<name>`. Returns the recorded steps."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    def train_worker(loop_config: dict[str, Any]) -> None:
        _run_worker(build, loop_config)

    folder = Path(output).resolve()
    trainer = TorchTrainer(
        train_worker,
        train_loop_config=plain,
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu),
        run_config=RunConfig(storage_path=str(folder / "ray"), name=name),
    )
    trainer.fit()
    return read_metrics(folder)


def _run_worker(build: LoopBuilder, plain: dict[str, Any]) -> None:
    import ray.train

    context = ray.train.get_context()
    loop = build(plain, rank=context.get_world_rank(), world_size=context.get_world_size())
    settings = loop.settings

    def report(result: StepRecord) -> None:
        if result.step % settings.log_every == 0 or result.step == settings.steps:
            ray.train.report({"step": result.step, "loss": result.loss})

    loop.run(report)
