"""Training SAM with the paper's interactive recipe, in one process or with Ray Train.

One step: a global batch of images (a slice of the seeded permutation, split across
workers), the image encoder once per image, then for up to `masks_per_image` masks per image
the simulated annotation of `stages.assisted.prompts` (11 iterations by default), each
iteration's loss (focal + dice 20:1, lowest-loss mask of 3 for a single point, IoU MSE)
averaged. Gradients are all-reduced across workers (data parallel, gloo on CPU, NCCL on
GPU). Every random choice is seeded by (seed, step, sample index), so 1 and N workers see
the same prompts and a resumed run continues the same run.

Output folder: `checkpoints/last.pt` (training state, written atomically), `model.pth` (an
official-format state_dict, loadable by build_sam and by the official package),
`metrics.jsonl` (loss per step) and `config.json`.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from engine.training.reader import (
    IndexEntry,
    build_index,
    global_batch_indices,
    load_sample,
    worker_share,
)
from model import Sam, build_sam
from model.losses import sam_loss
from stages.assisted.prompts import error_points, iteration_schedule, noisy_boxes, uniform_points

STATE_FILE = "checkpoints/last.pt"
MODEL_FILE = "model.pth"
METRICS_FILE = "metrics.jsonl"


@dataclass(frozen=True)
class TrainConfig:
    """One training run. data: SA-1B-format datasets (folders or tars); init_checkpoint:
    weights to start from (None: random init with `seed`); steps, batch_size (global images
    per step), masks_per_image (the paper: up to 64 per GPU); lr, weight_decay, warmup_steps,
    decay_at (fractions of steps where lr is multiplied by decay_factor), grad_clip;
    freeze_image_encoder for decoder-only rounds; precision fp32 | bf16 (CUDA autocast)."""

    data: tuple[str, ...]
    output: str
    model: str = "vit_mini"
    init_checkpoint: str | None = None
    steps: int = 200
    batch_size: int = 4
    masks_per_image: int = 16
    num_iterations: int = 11
    lr: float = 4e-4
    weight_decay: float = 0.1
    warmup_steps: int = 20
    decay_at: tuple[float, ...] = (0.67, 0.89)
    decay_factor: float = 0.1
    grad_clip: float = 1.0
    freeze_image_encoder: bool = False
    precision: str = "fp32"
    seed: int = 0
    checkpoint_every: int = 50
    log_every: int = 10
    min_mask_area: int = 8
    device: str = "auto"

    def __post_init__(self) -> None:
        if not self.data:
            raise ValueError("train.data must name at least one dataset")
        for name in ("steps", "batch_size", "masks_per_image", "num_iterations"):
            if getattr(self, name) < 1:
                raise ValueError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"train.lr must be > 0, got {self.lr}")
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(f"train.precision must be fp32 or bf16, got {self.precision!r}")
        if any(not 0 < f <= 1 for f in self.decay_at):
            raise ValueError(f"train.decay_at must be fractions in (0, 1], got {self.decay_at}")

    def identity(self) -> dict[str, Any]:
        """What a resumed run must share with the run it continues."""
        skip = {"checkpoint_every", "log_every", "device"}
        return {k: v for k, v in asdict(self).items() if k not in skip}


def learning_rate_factor(step: int, config: TrainConfig) -> float:
    """Linear warmup, then step decay at the `decay_at` fractions of the run."""
    warm = min(1.0, (step + 1) / config.warmup_steps) if config.warmup_steps else 1.0
    drops = sum(step >= math.ceil(f * config.steps) for f in config.decay_at)
    return warm * config.decay_factor**drops


def sample_rng(config: TrainConfig, step: int, index: int) -> np.random.Generator:
    return np.random.default_rng([config.seed, step, index])


def interactive_loss(
    sam: Sam,
    image_embedding: torch.Tensor,
    masks: torch.Tensor,
    rng: np.random.Generator,
    *,
    num_iterations: int,
    valid_size: tuple[int, int],
) -> tuple[torch.Tensor, dict[str, float]]:
    """Mean loss over the simulated annotation of N masks of one image.

    image_embedding: 1 x C x h x w; masks: N x S x S {0, 1} at model input; valid_size:
    the unpadded image area (points are only sampled there)."""
    use_box = torch.from_numpy(rng.random(len(masks)) < 0.5)
    schedule = iteration_schedule(num_iterations, rng)
    losses, ious = [], []
    for group, is_box in ((~use_box, False), (use_box, True)):
        if group.any():
            loss, iou = _simulate_group(
                sam,
                image_embedding,
                masks[group],
                rng,
                box_first=is_box,
                schedule=schedule,
                valid_size=valid_size,
            )
            losses.append(loss * int(group.sum()))
            ious.append(iou * int(group.sum()))
    total = torch.stack(losses).sum() / len(masks)
    return total, {"first_iou": float(sum(ious) / len(masks))}


def _simulate_group(
    sam: Sam,
    embedding: torch.Tensor,
    targets: torch.Tensor,
    rng: np.random.Generator,
    *,
    box_first: bool,
    schedule: list[bool],
    valid_size: tuple[int, int],
) -> tuple[torch.Tensor, float]:
    count = len(targets)
    target_bool = targets > 0.5
    boxes = noisy_boxes(target_bool, rng) if box_first else None
    coords = torch.zeros(count, 0, 2) if box_first else uniform_points(target_bool, rng)[:, None]
    labels = torch.ones(count, coords.shape[1], dtype=torch.long)
    device = embedding.device
    mask_input = None
    total, first_iou = embedding.new_zeros(()), 0.0
    valid = torch.zeros_like(target_bool)
    valid[:, : valid_size[0], : valid_size[1]] = True
    full_logits = torch.zeros(targets.shape)
    for iteration, add_point in enumerate([True, *schedule]):
        if iteration > 0 and add_point:
            predicted = (full_logits > 0) & valid
            new_points, new_labels = error_points(predicted, target_bool & valid, rng)
            coords = torch.cat([coords, new_points[:, None]], dim=1)
            labels = torch.cat([labels, new_labels[:, None]], dim=1)
        multimask = iteration == 0 and not box_first
        low_res, iou_pred = sam.decode(
            embedding,
            point_coords=coords.to(device) if coords.shape[1] else None,
            point_labels=labels.to(device) if coords.shape[1] else None,
            boxes=boxes.to(device) if boxes is not None else None,
            mask_input=mask_input,
            multimask_output=multimask,
        )
        upscaled = F.interpolate(low_res, targets.shape[-2:], mode="bilinear", align_corners=False)
        loss, best = sam_loss(upscaled, iou_pred, targets.to(device))
        total = total + loss.mean()
        chosen = torch.arange(count, device=device)
        full_logits = upscaled[chosen, best].cpu()
        mask_input = low_res[chosen, best][:, None].detach()
        if iteration == 0:
            first_iou = float(_iou(full_logits > 0, target_bool).mean())
    return total / (1 + len(schedule)), first_iou


def _iou(predicted: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    intersection = (predicted & targets).flatten(1).sum(1).float()
    union = (predicted | targets).flatten(1).sum(1).float()
    return intersection / union.clamp(min=1)


@dataclass
class StepResult:
    step: int
    loss: float
    first_iou: float
    lr: float
    seconds: float
    samples: int = 0
    extra: dict[str, float] = field(default_factory=dict)


class Trainer:
    """The training loop of one worker (rank of world_size)."""

    def __init__(self, config: TrainConfig, *, rank: int = 0, world_size: int = 1) -> None:
        self.config, self.rank, self.world_size = config, rank, world_size
        device = config.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        torch.manual_seed(config.seed)
        from engine.models import resolve_checkpoint_reference

        start = config.init_checkpoint
        start = resolve_checkpoint_reference(start) if start else None
        self.sam = build_sam(config.model, checkpoint=start).to(self.device)
        self.sam.train()
        if config.freeze_image_encoder:
            self.sam.image_encoder.requires_grad_(False)
        self.params = [p for p in self.sam.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(
            self.params, lr=config.lr, weight_decay=config.weight_decay
        )
        self.index: list[IndexEntry] = build_index(config.data)
        self.output = Path(config.output)
        self.step = 0
        self._resume()

    def _resume(self) -> None:
        path = self.output / STATE_FILE
        if not path.exists():
            return
        state = torch.load(path, map_location=self.device, weights_only=False)
        if state["config"] != self.config.identity():
            raise ValueError(
                f"{self.output} holds a training run with another config; use another output"
            )
        self.sam.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = int(state["step"])

    def run(self, report: Callable[[StepResult], None] | None = None) -> list[StepResult]:
        """Train until config.steps (continuing a saved run); rank 0 appends each step to
        metrics.jsonl and saves every checkpoint_every steps and at the end."""
        results = []
        if self.rank == 0:
            self.output.mkdir(parents=True, exist_ok=True)
            (self.output / "config.json").write_text(json.dumps(asdict(self.config), indent=2))
        while self.step < self.config.steps:
            result = self.train_step()
            results.append(result)
            if self.rank == 0:
                with open(self.output / METRICS_FILE, "a") as handle:
                    handle.write(json.dumps(asdict(result)) + "\n")
            if report is not None:
                report(result)
            if self.rank == 0 and (
                self.step % self.config.checkpoint_every == 0 or self.step == self.config.steps
            ):
                self.save()
        return results

    def train_step(self) -> StepResult:
        config, start = self.config, time.perf_counter()
        lr = config.lr * learning_rate_factor(self.step, config)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        indices = global_batch_indices(
            len(self.index), seed=config.seed, step=self.step, batch_size=config.batch_size
        )
        mine = worker_share(indices, self.rank, self.world_size)
        self.optimizer.zero_grad(set_to_none=False)
        loss_sum, iou_sum, used = 0.0, 0.0, 0
        samples = [
            load_sample(
                self.index[i],
                image_size=self.sam.img_size,
                max_masks=config.masks_per_image,
                min_mask_area=config.min_mask_area,
                rng=sample_rng(config, self.step, i),
            )
            for i in mine
        ]
        images = torch.stack(
            [self.sam.preprocess(s.image.to(self.device)[None])[0] for s in samples]
        )
        with self._autocast():
            embeddings = self.sam.image_encoder(images)
            # Zero times the embeddings: a graph to backpropagate even when no image of this
            # share has a mask (every worker must take part in the gradient all-reduce).
            total = embeddings.sum() * 0.0
            for position, (index, sample) in enumerate(zip(mine, samples)):
                if not len(sample.masks):
                    continue
                rng = sample_rng(config, self.step, index + 1_000_000_007)
                loss, stats = interactive_loss(
                    self.sam,
                    embeddings[position : position + 1],
                    sample.masks.to(self.device),
                    rng,
                    num_iterations=config.num_iterations,
                    valid_size=(sample.image.shape[1], sample.image.shape[2]),
                )
                total = total + loss
                loss_sum += float(loss.detach())
                iou_sum += stats["first_iou"]
                used += 1
        # Each worker's share of the global mean; all-reduce sums the shares.
        (total / config.batch_size).backward()
        self._all_reduce_gradients()
        torch.nn.utils.clip_grad_norm_(self.params, config.grad_clip)
        self.optimizer.step()
        self.step += 1
        sums = self._all_reduce_values([loss_sum, iou_sum, float(used)])
        count = max(sums[2], 1.0)
        return StepResult(
            step=self.step,
            loss=sums[0] / count,
            first_iou=sums[1] / count,
            lr=lr,
            seconds=time.perf_counter() - start,
            samples=len(indices),
        )

    def _autocast(self) -> Any:
        if self.config.precision == "bf16" and self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return torch.autocast(self.device.type, enabled=False)

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

    def _all_reduce_values(self, values: list[float]) -> list[float]:
        if self.world_size == 1:
            return values
        import torch.distributed as dist

        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor)
        return tensor.tolist()

    def save(self) -> None:
        """Training state (for resume) and the official-format model, both atomically."""
        state = {
            "model": self.sam.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "step": self.step,
            "config": self.config.identity(),
        }
        _atomic_torch_save(state, self.output / STATE_FILE)
        weights = {k: v.detach().cpu() for k, v in self.sam.state_dict().items()}
        _atomic_torch_save(weights, self.output / MODEL_FILE)


def _atomic_torch_save(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.partial")
    with open(temporary, "wb") as handle:
        torch.save(obj, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


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


def train_in_process(
    config: TrainConfig, report: Callable[[StepResult], None] | None = None
) -> list[StepResult]:
    """Train in this process with a progress bar (steps/s, loss, first-prompt IoU)."""
    from tqdm import tqdm

    trainer = Trainer(config)
    with tqdm(total=config.steps, initial=trainer.step, unit="step", desc="train") as bar:

        def on_step(result: StepResult) -> None:
            bar.set_postfix(loss=f"{result.loss:.3f}", iou=f"{result.first_iou:.3f}")
            bar.update(1)
            if report is not None:
                report(result)

        return trainer.run(on_step)


def train_with_ray(
    config: TrainConfig, *, workers: int, use_gpu: bool = False
) -> list[dict[str, Any]]:
    """The same loop on `workers` Ray Train workers (TorchTrainer: gloo on CPU, NCCL on GPU),
    on the Ray that is initialized (or a local one). Returns the recorded steps."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    output = Path(config.output).resolve()
    trainer = TorchTrainer(
        _ray_train_loop,
        train_loop_config=asdict(config),
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu),
        run_config=RunConfig(storage_path=str(output / "ray"), name="train"),
    )
    trainer.fit()
    return read_metrics(output)


def _ray_train_loop(config_dict: dict[str, Any]) -> None:
    import ray.train

    context = ray.train.get_context()
    config = TrainConfig(
        **{
            **config_dict,
            "data": tuple(config_dict["data"]),
            "decay_at": tuple(config_dict["decay_at"]),
        }
    )
    trainer = Trainer(config, rank=context.get_world_rank(), world_size=context.get_world_size())

    def report(result: StepResult) -> None:
        if result.step % config.log_every == 0 or result.step == config.steps:
            ray.train.report({"step": result.step, "loss": result.loss})

    trainer.run(report)
