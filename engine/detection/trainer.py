"""Training the box detector on cached SAM embeddings, in one process or with Ray Train.

One step: a global batch of images (a slice of the seeded permutation, split across
workers, as for SAM), their embeddings read from the store, FCOS's losses summed over
foreground locations and divided by the foreground count of the whole global batch. The
pyramid's layer norms and the head's group norms work per image, so 1 and N workers compute
the same step. `DetectorTask` is this step; the loop around it (optimizer, schedule,
all-reduce, metrics, checkpoints, resume, Ray Train) is `engine.training.loop`.

Output folder: `checkpoints/last.pt` (training state, atomic), `metrics.jsonl` (one line
per step), `train_config.json`. The driver writes `detector.pt` once the run is evaluated.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.config import from_config
from engine.detection.data import DetectionImage, read_images
from engine.embeddings import EmbeddingStore
from engine.models import resolve_device
from engine.storage import Storage
from engine.training.loop import (
    STATE_FILE,
    BatchShare,
    TrainingLoop,
    TrainSettings,
    read_state,
    run_in_process,
    run_on_ray,
)
from stages.semi.detector import LOSS_NAMES, BoxDetector, DetectorConfig, normalized_loss
from stages.semi.inference import load_detector
from stages.semi.targets import detection_targets, training_boxes


@dataclass(frozen=True, kw_only=True)
class DetectorTrainConfig(TrainSettings):
    """One detector training run: the shared settings (`TrainSettings`: data, output, steps,
    batch_size of global images per step, lr, schedule, ...; init_checkpoint: a detector
    file to start from), with the detector's own defaults, and min_box_side: boxes smaller
    than this (model-input pixels) are not trained on."""

    steps: int = 3000
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 100
    checkpoint_every: int = 200
    log_every: int = 20
    min_box_side: float = 2.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.min_box_side < 0:
            raise ValueError(f"min_box_side must be >= 0, got {self.min_box_side}")

    def identity(self) -> dict[str, Any]:
        """What a resumed run must share with the run it continues (not its folder)."""
        return {k: v for k, v in super().identity().items() if k != "output"}


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

    def postfix(self) -> dict[str, str]:
        return {"loss": f"{self.loss:.3f}", "cls": f"{self.classification:.3f}"}


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
    identity = run_identity(config, inputs, images)
    return read_state(config.output, identity, key=DetectorTask.identity_key, device=device)


class DetectorTask:
    """The detector's step as a training task (`engine.training.loop.TrainingTask`): the
    detector (random init, or init_checkpoint), the training images and their boxes at the
    model's input size, the embedding store."""

    name = "detector"
    module_key = "detector"
    identity_key = "identity"
    config_file = "train_config.json"
    record_type = DetectorStep

    def __init__(
        self, config: DetectorTrainConfig, inputs: TrainingInputs, device: torch.device
    ) -> None:
        self.config, self.inputs, self.device = config, inputs, device
        self.detector = BoxDetector(inputs.detector).to(device)
        if config.init_checkpoint:
            self._start_from(config.init_checkpoint)
        self.detector.train()
        self.images = read_images(inputs.images_file)
        if not self.images:
            raise ValueError("no training images")
        size = inputs.detector.image_size
        self.boxes = [
            training_boxes(i.boxes_xyxy, i.original_size, size, min_side=config.min_box_side)
            for i in self.images
        ]
        self.store = inputs.store()

    def _start_from(self, path: str) -> None:
        start, _ = load_detector(path, device=self.device)
        if start.config != self.inputs.detector:
            raise ValueError(f"{path} has another architecture than detector=... asks for")
        self.detector.load_state_dict(start.state_dict())

    @property
    def module(self) -> torch.nn.Module:
        return self.detector

    def num_examples(self) -> int:
        return len(self.images)

    def identity(self) -> dict[str, Any]:
        return run_identity(self.config, self.inputs, self.images)

    def config_record(self) -> dict[str, Any]:
        return self.identity()

    def save_artifacts(self, output: Path) -> None:
        """Nothing: the driver writes detector.pt once the run is evaluated."""

    def load_batch(self, indices: list[int]) -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
        """Embeddings (B x C x h x w, float32 on the device) and FCOS targets (boxes XYXY in
        model-input pixels) of the images `indices`."""
        arrays = [self.store.read(self.images[i].digest) for i in indices]
        embeddings = torch.from_numpy(np.stack(arrays)).to(self.device, torch.float32)
        targets = [detection_targets(self.boxes[i].to(self.device)) for i in indices]
        return embeddings, targets

    def loss(self, share: BatchShare) -> tuple[torch.Tensor, dict[str, Any]]:
        """This worker's loss sums over the foreground count of the whole global batch;
        logged: the loss terms of the global batch and its foreground count."""
        embeddings, targets = self.load_batch(share.mine)
        sums = self.detector.losses(embeddings, targets)
        local = [float(sums["num_foreground"])] + [float(sums[n].detach()) for n in LOSS_NAMES]
        totals = share.all_reduce(local)
        # Each worker's share of the global loss; all-reducing the gradients sums the shares.
        loss, _ = normalized_loss(sums, totals[0])
        terms = [value / max(1.0, totals[0]) for value in totals[1:]]
        return loss, {
            "loss": sum(terms),
            "classification": terms[0],
            "bbox_regression": terms[1],
            "bbox_ctrness": terms[2],
            "num_foreground": totals[0],
            "images": len(share.indices),
        }


class DetectorTrainer(TrainingLoop[DetectorStep]):
    """The detector's training loop of one worker (rank of world_size)."""

    task: DetectorTask

    def __init__(
        self,
        config: DetectorTrainConfig,
        inputs: TrainingInputs,
        *,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        def build(device: torch.device) -> DetectorTask:
            return DetectorTask(config, inputs, device)

        super().__init__(config, build, rank=rank, world_size=world_size)

    @property
    def detector(self) -> BoxDetector:
        return self.task.detector


def trained_detector(
    output: str | Path, inputs: TrainingInputs, *, device: str = "auto"
) -> BoxDetector:
    """The detector of a finished (or interrupted) run, from its saved state, in eval mode."""
    state = torch.load(Path(output) / STATE_FILE, map_location="cpu", weights_only=True)
    detector = BoxDetector(inputs.detector)
    detector.load_state_dict(state[DetectorTask.module_key])
    return detector.to(resolve_device(device)).eval()


def train_in_process(
    config: DetectorTrainConfig,
    inputs: TrainingInputs,
    report: Callable[[DetectorStep], None] | None = None,
) -> list[DetectorStep]:
    """Train in this process with a progress bar (loss and its classification term)."""
    return run_in_process(DetectorTrainer(config, inputs), report)


def train_with_ray(
    config: DetectorTrainConfig, inputs: TrainingInputs, *, workers: int, use_gpu: bool = False
) -> list[dict[str, Any]]:
    """The same loop on `workers` Ray Train workers (TorchTrainer: gloo on CPU, NCCL on GPU),
    on the Ray that is initialized (or a local one). Returns the recorded steps."""
    plain = {"config": asdict(config), "inputs": asdict(inputs)}
    output, name = config.output, DetectorTask.name
    return run_on_ray(
        _worker_trainer, plain, output=output, name=name, workers=workers, use_gpu=use_gpu
    )


def _worker_trainer(plain: dict[str, Any], *, rank: int, world_size: int) -> DetectorTrainer:
    config = from_config(DetectorTrainConfig, plain["config"])
    inputs = from_config(TrainingInputs, plain["inputs"])
    return DetectorTrainer(config, inputs, rank=rank, world_size=world_size)
