"""Training the box detector on cached SAM embeddings, in one process or with Ray Train.

One step: a global batch of images (a slice of the seeded permutation, split across
workers, as the SAM trainer does), their embeddings read from the store, FCOS's losses
summed over foreground locations and divided by the foreground count of the whole global
batch, gradients all-reduced (gloo on CPU, NCCL on GPU). The pyramid's layer norms and the
head's group norms work per image, so 1 and N workers compute the same step.

Output folder: `checkpoints/last.pt` (training state, atomic), `metrics.jsonl` (one line
per step), `train_config.json`. The driver writes `detector.pt` once the run is evaluated.
"""

from __future__ import annotations

import hashlib
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

from engine.detection.data import DetectionImage, read_images
from engine.embeddings import EmbeddingStore
from engine.storage import Storage
from engine.training.reader import global_batch_indices, worker_share
from stages.semi.detector import LOSS_NAMES, BoxDetector, DetectorConfig, normalized_loss
from stages.semi.inference import load_detector
from stages.semi.targets import detection_targets, training_boxes

STATE_FILE = "checkpoints/last.pt"
METRICS_FILE = "metrics.jsonl"


@dataclass(frozen=True)
class DetectorTrainConfig:
    """One training run. data: SA-1B-format datasets (folders or tars); output: the run's
    folder; init_checkpoint: a detector file to start from (None: random init with seed);
    steps, batch_size (global images per step); lr, weight_decay (AdamW), warmup_steps,
    decay_at (fractions of steps where lr is multiplied by decay_factor), grad_clip (0: off);
    min_box_side: boxes smaller than this (model-input pixels) are not trained on."""

    data: tuple[str, ...]
    output: str
    init_checkpoint: str | None = None
    steps: int = 3000
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 100
    decay_at: tuple[float, ...] = (0.67, 0.89)
    decay_factor: float = 0.1
    grad_clip: float = 1.0
    min_box_side: float = 2.0
    seed: int = 0
    checkpoint_every: int = 200
    log_every: int = 20
    device: str = "auto"

    def __post_init__(self) -> None:
        if not self.data:
            raise ValueError("data must name at least one dataset")
        for name in ("steps", "batch_size", "checkpoint_every", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.warmup_steps < 0 or self.grad_clip < 0 or self.min_box_side < 0:
            raise ValueError(
                "warmup_steps, grad_clip and min_box_side must be >= 0, got "
                f"{self.warmup_steps}, {self.grad_clip}, {self.min_box_side}"
            )
        if any(not 0 < f <= 1 for f in self.decay_at):
            raise ValueError(f"decay_at must be fractions in (0, 1], got {list(self.decay_at)}")

    def identity(self) -> dict[str, Any]:
        """What a resumed run must share with the run it continues."""
        skip = {"checkpoint_every", "log_every", "device", "output"}
        return {k: v for k, v in asdict(self).items() if k not in skip}


@dataclass(frozen=True)
class TrainingInputs:
    """What the driver prepared: the images file (Parquet, `engine.detection.data`), the
    embedding store (storage root, options, SAM SHA-256) and the detector's architecture."""

    images_file: str
    embeddings_root: str
    sam_weights_sha256: str
    detector: DetectorConfig
    embeddings_options: dict[str, Any] = field(default_factory=dict)

    def store(self) -> EmbeddingStore:
        storage = Storage(self.embeddings_root, self.embeddings_options)
        return EmbeddingStore(storage, self.sam_weights_sha256)


@dataclass
class DetectorStep:
    step: int
    loss: float
    classification: float
    bbox_regression: float
    bbox_ctrness: float
    num_foreground: float
    lr: float
    seconds: float
    images: int


def resolve_device(name: str) -> torch.device:
    """'auto': CUDA when there is a GPU, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def learning_rate_factor(step: int, config: DetectorTrainConfig) -> float:
    """Linear warmup, then step decay at the `decay_at` fractions of the run."""
    warm = min(1.0, (step + 1) / config.warmup_steps) if config.warmup_steps else 1.0
    drops = sum(step >= math.ceil(f * config.steps) for f in config.decay_at)
    return warm * config.decay_factor**drops


def run_identity(
    config: DetectorTrainConfig, inputs: TrainingInputs, images: list[DetectionImage]
) -> dict[str, Any]:
    """What a resumed run must share with the run it continues: its settings, the
    architecture, the SAM, and every image's digest and training boxes."""
    digest = hashlib.sha256()
    size = inputs.detector.image_size
    for image in images:
        boxes = training_boxes(
            image.boxes_xyxy, image.original_size, size, min_side=config.min_box_side
        )
        digest.update(image.digest.encode())
        digest.update(boxes.numpy().tobytes())
    plain = {**config.identity(), "data": list(config.data), "decay_at": list(config.decay_at)}
    return {
        "config": plain,
        "detector": {**asdict(inputs.detector), "scales": list(inputs.detector.scales)},
        "sam_weights_sha256": inputs.sam_weights_sha256,
        "targets": digest.hexdigest(),
    }


def saved_state(
    config: DetectorTrainConfig,
    inputs: TrainingInputs,
    images: list[DetectionImage],
    *,
    device: torch.device | str = "cpu",
) -> dict[str, Any] | None:
    """The saved training state of the run in config.output (None: none yet); ValueError
    when it is another run's (other settings, SAM or data)."""
    path = Path(config.output) / STATE_FILE
    if not path.exists():
        return None
    state: dict[str, Any] = torch.load(path, map_location=device, weights_only=True)
    if state["identity"] != run_identity(config, inputs, images):
        raise ValueError(
            f"{config.output} holds a detector training run with other settings or data; "
            "use another output"
        )
    return state


class DetectorTrainer:
    """The training loop of one worker (rank of world_size)."""

    def __init__(
        self,
        config: DetectorTrainConfig,
        inputs: TrainingInputs,
        *,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if config.batch_size < world_size:
            raise ValueError(f"batch_size {config.batch_size} is below the {world_size} workers")
        self.config, self.inputs, self.rank, self.world_size = config, inputs, rank, world_size
        self.device = resolve_device(config.device)
        torch.manual_seed(config.seed)
        self.detector = BoxDetector(inputs.detector).to(self.device)
        if config.init_checkpoint:
            self._start_from(config.init_checkpoint)
        self.detector.train()
        self.optimizer = torch.optim.AdamW(
            self.detector.parameters(), lr=config.lr, weight_decay=config.weight_decay
        )
        self.images = read_images(inputs.images_file)
        if not self.images:
            raise ValueError("no training images")
        size = inputs.detector.image_size
        self.boxes = [
            training_boxes(i.boxes_xyxy, i.original_size, size, min_side=config.min_box_side)
            for i in self.images
        ]
        self.store = inputs.store()
        self.output = Path(config.output)
        self.step = 0
        self._resume()

    def _start_from(self, path: str) -> None:
        start, _ = load_detector(path, device=self.device)
        if start.config != self.inputs.detector:
            raise ValueError(f"{path} has another architecture than detector=... asks for")
        self.detector.load_state_dict(start.state_dict())

    def identity(self) -> dict[str, Any]:
        return run_identity(self.config, self.inputs, self.images)

    def _resume(self) -> None:
        state = saved_state(self.config, self.inputs, self.images, device=self.device)
        if state is None:
            return
        self.detector.load_state_dict(state["detector"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = int(state["step"])

    def run(self, report: Callable[[DetectorStep], None] | None = None) -> list[DetectorStep]:
        """Train until config.steps (continuing a saved run); rank 0 appends each step to
        metrics.jsonl and saves every checkpoint_every steps and at the end."""
        results = []
        if self.rank == 0:
            self.output.mkdir(parents=True, exist_ok=True)
            config = json.dumps(self.identity(), indent=2)
            (self.output / "train_config.json").write_text(config)
        while self.step < self.config.steps:
            result = self.train_step()
            results.append(result)
            if self.rank == 0:
                with open(self.output / METRICS_FILE, "a") as handle:
                    handle.write(json.dumps(asdict(result)) + "\n")
            if report is not None:
                report(result)
            at_end = self.step == self.config.steps
            if self.rank == 0 and (self.step % self.config.checkpoint_every == 0 or at_end):
                self.save()
        return results

    def load_batch(self, indices: list[int]) -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
        arrays = [self.store.read(self.images[i].digest) for i in indices]
        embeddings = torch.from_numpy(np.stack(arrays)).to(self.device, torch.float32)
        targets = [detection_targets(self.boxes[i].to(self.device)) for i in indices]
        return embeddings, targets

    def train_step(self) -> DetectorStep:
        config, start = self.config, time.perf_counter()
        lr = config.lr * learning_rate_factor(self.step, config)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        indices = global_batch_indices(
            len(self.images), seed=config.seed, step=self.step, batch_size=config.batch_size
        )
        embeddings, targets = self.load_batch(worker_share(indices, self.rank, self.world_size))
        self.optimizer.zero_grad(set_to_none=False)
        sums = self.detector.losses(embeddings, targets)
        local = [float(sums["num_foreground"])] + [float(sums[n].detach()) for n in LOSS_NAMES]
        totals = self._all_reduce_values(local)
        # Each worker's share of the global loss; all-reducing the gradients sums the shares.
        loss, _ = normalized_loss(sums, totals[0])
        loss.backward()
        self._all_reduce_gradients()
        if config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.detector.parameters(), config.grad_clip)
        self.optimizer.step()
        self.step += 1
        terms = [value / max(1.0, totals[0]) for value in totals[1:]]
        return DetectorStep(
            step=self.step,
            loss=sum(terms),
            classification=terms[0],
            bbox_regression=terms[1],
            bbox_ctrness=terms[2],
            num_foreground=totals[0],
            lr=lr,
            seconds=time.perf_counter() - start,
            images=len(indices),
        )

    def _all_reduce_gradients(self) -> None:
        if self.world_size == 1:
            return
        import torch.distributed as dist

        params = list(self.detector.parameters())
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.flatten() for g in grads])
        dist.all_reduce(flat)
        offset = 0
        for param, grad in zip(params, grads):
            param.grad = flat[offset : offset + grad.numel()].view_as(grad).clone()
            offset += grad.numel()

    def _all_reduce_values(self, values: list[float]) -> list[float]:
        if self.world_size == 1:
            return values
        import torch.distributed as dist

        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor)
        return [float(v) for v in tensor.tolist()]

    def save(self) -> None:
        """The training state, atomically (a temporary name, then a rename)."""
        state = {
            "detector": self.detector.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "step": self.step,
            "identity": self.identity(),
        }
        path = self.output / STATE_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.partial")
        with open(temporary, "wb") as handle:
            torch.save(state, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)


def trained_detector(
    output: str | Path, inputs: TrainingInputs, *, device: str = "auto"
) -> BoxDetector:
    """The detector of a finished (or interrupted) run, from its saved state, in eval mode."""
    state = torch.load(Path(output) / STATE_FILE, map_location="cpu", weights_only=True)
    detector = BoxDetector(inputs.detector)
    detector.load_state_dict(state["detector"])
    return detector.to(resolve_device(device)).eval()


def read_steps(output: str | Path) -> list[dict[str, Any]]:
    """The steps recorded in a run's metrics.jsonl (the last record of each step)."""
    path = Path(output) / METRICS_FILE
    if not path.exists():
        return []
    by_step = {}
    for line in path.read_text().splitlines():
        record = json.loads(line)
        by_step[record["step"]] = record
    return [by_step[step] for step in sorted(by_step)]
