"""Training the verifier on people's answers, on the one training loop
(`engine.training.loop`), in this process.

One step: a global batch of answers (a slice of the seeded permutation of the train part),
each answer's image embedding (read once per image from the embedding store and kept in
memory), its mask in SAM's low-res frame and its numbers; the loss is binary cross-entropy
against accepted (1) / rejected (0), averaged over the global batch.

Output folder: `checkpoints/last.pt` (training state, atomic), `metrics.jsonl`,
`train_config.json`; the round writes `verifier.pt` once the run is evaluated.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from engine.embeddings import EmbeddingStore
from engine.models import resolve_device
from engine.storage import Storage
from engine.training.loop import (
    STATE_FILE,
    BatchShare,
    TrainingLoop,
    TrainSettings,
    run_in_process,
)
from engine.verification.examples import TRAIN, VerifyExample, examples_digest, read_examples
from stages.verify import MaskVerifier, VerifierConfig, load_verifier


@dataclass(frozen=True, kw_only=True)
class VerifierTrainConfig(TrainSettings):
    """One verifier training run: the shared settings (`TrainSettings`; data: the examples
    files, their train part is used; init_checkpoint: a verifier file to start from) with
    the verifier's own defaults."""

    steps: int = 300
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 20
    checkpoint_every: int = 100
    log_every: int = 20

    def identity(self) -> dict[str, Any]:
        """What a resumed run must share with the run it continues (not its folder)."""
        return {k: v for k, v in super().identity().items() if k != "output"}


@dataclass(frozen=True)
class VerifierInputs:
    """The embedding store (storage root, options, the SAM's SHA-256) and the architecture."""

    embeddings_root: str
    sam_weights_sha256: str
    verifier: VerifierConfig = VerifierConfig()
    embeddings_options: dict[str, Any] = field(default_factory=dict)

    def store(self) -> EmbeddingStore:
        storage = Storage(self.embeddings_root, self.embeddings_options)
        return EmbeddingStore(storage, self.sam_weights_sha256)


@dataclass
class VerifierStep:
    step: int
    loss: float
    accuracy: float
    lr: float
    seconds: float
    examples: int

    def postfix(self) -> dict[str, str]:
        return {"loss": f"{self.loss:.3f}", "acc": f"{self.accuracy:.2f}"}


@dataclass(frozen=True)
class ExampleTensors:
    """Examples as the network takes them: frames N x F x F, scalars N x S, labels N,
    keys N (each example's embedding key) and the embeddings by key (E x h x w float16)."""

    frames: np.ndarray
    scalars: np.ndarray
    labels: np.ndarray
    keys: list[str]
    embeddings: dict[str, np.ndarray]

    def batch(
        self, indices: list[int], device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(embeddings B x E x h x w, frames B x 1 x F x F, scalars B x S, labels B) on the
        device, float32."""
        stacked = np.stack([self.embeddings[self.keys[i]] for i in indices])

        def to(array: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(array).to(device, torch.float32)

        return (
            to(stacked),
            to(self.frames[indices])[:, None],
            to(self.scalars[indices]),
            to(self.labels[indices]),
        )


def example_tensors(examples: list[VerifyExample], store: EmbeddingStore) -> ExampleTensors:
    """Read each image's embedding once and each example's inputs."""
    embeddings = {key: store.read(key) for key in dict.fromkeys(e.key for e in examples)}
    frame = 4 * next(iter(embeddings.values())).shape[-1] if embeddings else 4
    inputs = [example.inputs(frame) for example in examples]
    return ExampleTensors(
        frames=np.stack([i[0] for i in inputs]) if inputs else np.zeros((0, frame, frame)),
        scalars=np.stack([i[1] for i in inputs]) if inputs else np.zeros((0, 3)),
        labels=np.array([e.label for e in examples], np.float32),
        keys=[e.key for e in examples],
        embeddings=embeddings,
    )


class VerifierTask:
    """The verifier's step as a training task (`engine.training.loop.TrainingTask`)."""

    name = "verifier"
    module_key = "verifier"
    identity_key = "identity"
    config_file = "train_config.json"
    record_type = VerifierStep

    def __init__(
        self, config: VerifierTrainConfig, inputs: VerifierInputs, device: torch.device
    ) -> None:
        self.config, self.inputs, self.device = config, inputs, device
        self.verifier = MaskVerifier(inputs.verifier).to(device)
        if config.init_checkpoint:
            start, _ = load_verifier(config.init_checkpoint, device=device)
            self.verifier.load_state_dict(start.state_dict())
        self.verifier.train()
        self.examples = [e for path in config.data for e in read_examples(path, TRAIN)]
        if not self.examples:
            raise ValueError("no answers to train the verifier on (the train part is empty)")
        self.tensors = example_tensors(self.examples, inputs.store())

    @property
    def module(self) -> torch.nn.Module:
        return self.verifier

    def num_examples(self) -> int:
        return len(self.examples)

    def identity(self) -> dict[str, Any]:
        plain = {**self.config.identity(), "data": list(self.config.data)}
        plain["decay_at"] = list(self.config.decay_at)
        return {
            "config": plain,
            "verifier": asdict(self.inputs.verifier),
            "sam_weights_sha256": self.inputs.sam_weights_sha256,
            "examples": examples_digest(self.examples),
        }

    def config_record(self) -> dict[str, Any]:
        return self.identity()

    def save_artifacts(self, output: Path) -> None:
        """Nothing: the round writes verifier.pt once the run is evaluated."""

    def loss(self, share: BatchShare) -> tuple[torch.Tensor, dict[str, Any]]:
        """This worker's share of the global batch's mean binary cross-entropy."""
        embeddings, frames, scalars, labels = self.tensors.batch(share.mine, self.device)
        logits = self.verifier(embeddings, frames, scalars)
        summed = F.binary_cross_entropy_with_logits(logits, labels, reduction="sum")
        right = float(((logits > 0) == (labels > 0.5)).sum())
        totals = share.all_reduce([float(summed.detach()), right])
        count = len(share.indices)
        values = {"loss": totals[0] / count, "accuracy": totals[1] / count, "examples": count}
        return summed / count, values


class VerifierTrainer(TrainingLoop[VerifierStep]):
    task: VerifierTask

    def __init__(self, config: VerifierTrainConfig, inputs: VerifierInputs) -> None:
        def build(device: torch.device) -> VerifierTask:
            return VerifierTask(config, inputs, device)

        super().__init__(config, build)


def train_in_process(
    config: VerifierTrainConfig,
    inputs: VerifierInputs,
    report: Callable[[VerifierStep], None] | None = None,
) -> list[VerifierStep]:
    """Train in this process with a progress bar (loss and accuracy)."""
    return run_in_process(VerifierTrainer(config, inputs), report)


def trained_verifier(
    output: str | Path, inputs: VerifierInputs, *, device: str = "auto"
) -> MaskVerifier:
    """The verifier of a finished run, from its saved state, in eval mode."""
    state = torch.load(Path(output) / STATE_FILE, map_location="cpu", weights_only=True)
    verifier = MaskVerifier(inputs.verifier)
    verifier.load_state_dict(state[VerifierTask.module_key])
    return verifier.to(resolve_device(device)).eval()
