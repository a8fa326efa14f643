"""Training SAM with the paper's interactive recipe, in one process or with Ray Train.

One step: a global batch of images (a slice of the seeded permutation, split across
workers), the image encoder once per image, then for up to `masks_per_image` masks per image
the simulated annotation of `stages.assisted.prompts` (11 iterations by default), each
iteration's loss (focal + dice 20:1, lowest-loss mask of 3 for a single point, IoU MSE)
averaged. Every random choice is seeded by (seed, step, sample index), so 1 and N workers
see the same prompts and a resumed run continues the same run. `SamTask` is this recipe;
the loop around it (optimizer, schedule, all-reduce, metrics, checkpoints, resume, Ray
Train) is `engine.training.loop`.

Output folder: `checkpoints/last.pt` (training state, written atomically), `model.pth` (an
official-format state_dict, loadable by build_sam and by the official package),
`metrics.jsonl` (loss per step) and `config.json`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from engine.config import from_config
from engine.dataset.reader import IndexEntry, build_index
from engine.models import resolve_checkpoint_reference
from engine.training.loop import (
    BatchShare,
    TrainingLoop,
    TrainSettings,
    run_in_process,
    run_on_ray,
)
from engine.training.reader import TrainingSample, load_sample
from model import Sam, build_sam
from model.checkpoint import save_atomic
from model.losses import sam_loss
from stages.assisted.prompts import error_points, iteration_schedule, noisy_boxes, uniform_points

MODEL_FILE = "model.pth"


@dataclass(frozen=True, kw_only=True)
class TrainConfig(TrainSettings):
    """One SAM training run: the shared settings (`TrainSettings`: data, output, steps,
    batch_size of global images per step, lr, schedule, ...; init_checkpoint: weights to
    start from, a path, 'bundled' or a registry reference) and model (a `build_sam` name),
    masks_per_image (the paper: up to 64 per GPU), num_iterations (of the simulated
    annotation), freeze_image_encoder for decoder-only rounds, precision fp32 | bf16 (CUDA
    autocast), min_mask_area (pixels at model input)."""

    model: str = "vit_mini"
    masks_per_image: int = 16
    num_iterations: int = 11
    freeze_image_encoder: bool = False
    precision: str = "fp32"
    min_mask_area: int = 8

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("masks_per_image", "num_iterations"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be fp32 or bf16, got {self.precision!r}")


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


def share_loss(
    sam: Sam,
    config: TrainConfig,
    share: BatchShare,
    samples: Sequence[TrainingSample],
    embedding: Callable[[int], torch.Tensor],
    total: torch.Tensor,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """This worker's images (`samples[k]` is image `share.mine[k]`, `embedding(k)` its image
    embedding, asked only for images with masks): each one's mean interactive loss, added to
    `total` and divided by the global batch size; logged: the mean loss and first-prompt IoU
    of the images of the whole batch that have masks."""
    loss_sum, iou_sum, used = 0.0, 0.0, 0
    for position, (index, sample) in enumerate(zip(share.mine, samples)):
        if not len(sample.masks):
            continue
        loss, stats = interactive_loss(
            sam,
            embedding(position),
            sample.masks.to(total.device),
            sample_rng(config, share.step, index + 1_000_000_007),
            num_iterations=config.num_iterations,
            valid_size=(sample.image.shape[1], sample.image.shape[2]),
        )
        total = total + loss
        loss_sum += float(loss.detach())
        iou_sum += stats["first_iou"]
        used += 1
    sums = share.all_reduce([loss_sum, iou_sum, float(used)])
    count = max(sums[2], 1.0)
    values = {"loss": sums[0] / count, "first_iou": sums[1] / count}
    # Each worker's share of the global mean; all-reducing the gradients sums the shares.
    return total / config.batch_size, {**values, "samples": len(share.indices)}


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

    def postfix(self) -> dict[str, str]:
        return {"loss": f"{self.loss:.3f}", "iou": f"{self.first_iou:.3f}"}


class SamTask:
    """SAM's interactive recipe as a training task (`engine.training.loop.TrainingTask`):
    the model built from config (random init, or init_checkpoint), the index of its data."""

    name = "train"
    module_key = "model"
    identity_key = "config"
    config_file = "config.json"
    record_type = StepResult

    def __init__(self, config: TrainConfig, device: torch.device) -> None:
        self.config, self.device = config, device
        start = config.init_checkpoint
        start = resolve_checkpoint_reference(start) if start else None
        self.sam = build_sam(config.model, checkpoint=start).to(device)
        self.sam.train()
        if config.freeze_image_encoder:
            self.sam.image_encoder.requires_grad_(False)
        self.index: list[IndexEntry] = build_index(config.data)

    @property
    def module(self) -> torch.nn.Module:
        return self.sam

    def num_examples(self) -> int:
        return len(self.index)

    def identity(self) -> dict[str, Any]:
        return self.config.identity()

    def config_record(self) -> dict[str, Any]:
        return asdict(self.config)

    def save_artifacts(self, output: Path) -> None:
        """The official-format model, atomically."""
        weights = {k: v.detach().cpu() for k, v in self.sam.state_dict().items()}
        save_atomic(weights, output / MODEL_FILE)

    def loss(self, share: BatchShare) -> tuple[torch.Tensor, dict[str, Any]]:
        """This worker's images: each one's mean interactive loss, summed and divided by
        the global batch size; logged: the mean loss and first-prompt IoU of the images of
        the whole batch that have masks."""
        config, step = self.config, share.step
        samples = [
            load_sample(
                self.index[i],
                image_size=self.sam.img_size,
                max_masks=config.masks_per_image,
                min_mask_area=config.min_mask_area,
                rng=sample_rng(config, step, i),
            )
            for i in share.mine
        ]
        images = torch.stack(
            [self.sam.preprocess(s.image.to(self.device)[None])[0] for s in samples]
        )
        with self._autocast():
            embeddings = self.sam.image_encoder(images)
            # Zero times the embeddings: a graph to backpropagate even when no image of this
            # share has a mask (every worker must take part in the gradient all-reduce).
            return share_loss(
                self.sam,
                config,
                share,
                samples,
                lambda position: embeddings[position : position + 1],
                embeddings.sum() * 0.0,
            )

    def _autocast(self) -> Any:
        if self.config.precision == "bf16" and self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return torch.autocast(self.device.type, enabled=False)


class Trainer(TrainingLoop[StepResult]):
    """SAM's training loop of one worker (rank of world_size)."""

    task: SamTask

    def __init__(self, config: TrainConfig, *, rank: int = 0, world_size: int = 1) -> None:
        def build(device: torch.device) -> SamTask:
            return SamTask(config, device)

        super().__init__(config, build, rank=rank, world_size=world_size)

    @property
    def sam(self) -> Sam:
        return self.task.sam


def train_in_process(
    config: TrainConfig, report: Callable[[StepResult], None] | None = None
) -> list[StepResult]:
    """Train in this process with a progress bar (steps/s, loss, first-prompt IoU)."""
    return run_in_process(Trainer(config), report)


def train_with_ray(
    config: TrainConfig, *, workers: int, use_gpu: bool = False
) -> list[dict[str, Any]]:
    """The same loop on `workers` Ray Train workers (TorchTrainer: gloo on CPU, NCCL on GPU),
    on the Ray that is initialized (or a local one). Returns the recorded steps."""
    plain = {"config": asdict(config)}
    output, name = config.output, SamTask.name
    return run_on_ray(
        _worker_trainer, plain, output=output, name=name, workers=workers, use_gpu=use_gpu
    )


def _worker_trainer(plain: dict[str, Any], *, rank: int, world_size: int) -> Trainer:
    config = from_config(TrainConfig, plain["config"])
    return Trainer(config, rank=rank, world_size=world_size)
