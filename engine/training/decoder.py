"""Decoder rounds: the paper's interactive recipe on the prompt encoder and mask decoder only,
on image embeddings that are already computed (a campaign's, from its embed job).

`DecoderTask` is a `TrainingTask` of the one loop (`engine.training.loop`): the same
simulated annotation, focal + dice 20:1 and IoU head as `SamTask` (`interactive_loss`), but
no image encoder pass: each image's embedding is read from an `EmbeddingStore` (C x h x w
fp16, keyed by the image key, which a campaign's export keeps), or, for an image the store
lacks (or without a store), computed once by the frozen encoder and kept in memory. The
image encoder's weights are not trained, so the model it saves has the same encoder as the
one it started from, and the same embeddings: a campaign that switches to it keeps them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from engine.config import from_config
from engine.embeddings import EmbeddingStore
from engine.storage import Storage
from engine.training.loop import BatchShare, TrainingLoop, run_in_process, run_on_ray
from engine.training.reader import TrainingSample, load_sample
from engine.training.trainer import SamTask, StepResult, TrainConfig, sample_rng, share_loss

KINDS = ("full", "decoder")


def check_kind(kind: str) -> str:
    """A round's kind: full (the whole model) or decoder (prompt encoder and mask decoder on
    stored embeddings); ValueError otherwise."""
    if kind not in KINDS:
        raise ValueError(f"rounds kind must be one of {' | '.join(KINDS)}, got {kind!r}")
    return kind


@dataclass(frozen=True, kw_only=True)
class DecoderTrainConfig(TrainConfig):
    """A decoder round's settings: SAM's (`TrainConfig`; freeze_image_encoder is implied)
    and where the embeddings are. embeddings: the storage root (local folder or fsspec URL)
    holding `embeddings/<sha[:16]>/<key>.npy` ('' : none, every embedding computed here);
    embeddings_sha256: the model whose embeddings they are (its image encoder must be
    init_checkpoint's); embeddings_options: fsspec options for that storage (not part of
    the run's identity nor of its written config)."""

    embeddings: str = ""
    embeddings_sha256: str = ""
    embeddings_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.embeddings and not self.embeddings_sha256:
            raise ValueError("embeddings_sha256 must name the model whose embeddings are used")

    def identity(self) -> dict[str, Any]:
        identity = super().identity()
        del identity["embeddings_options"]
        return identity


class DecoderTask(SamTask):
    """`SamTask` without the image encoder pass (see the module docstring)."""

    name = "train-decoder"

    def __init__(self, config: DecoderTrainConfig, device: torch.device) -> None:
        super().__init__(config, device)
        self.config: DecoderTrainConfig = config
        self.sam.image_encoder.requires_grad_(False)
        self.sam.image_encoder.eval()
        self.store = None
        if config.embeddings:
            storage = Storage(config.embeddings, config.embeddings_options or None)
            self.store = EmbeddingStore(storage, config.embeddings_sha256)
        self.cache: dict[int, torch.Tensor] = {}
        self.stored = 0

    def config_record(self) -> dict[str, Any]:
        record = asdict(self.config)
        del record["embeddings_options"]
        return record

    def embedding(self, index: int, sample: TrainingSample) -> torch.Tensor:
        """1 x C x h x w on the device: stored, else computed once by the frozen encoder."""
        if index not in self.cache:
            if self.store is not None and self.store.exists(sample.key):
                array = torch.from_numpy(self.store.read(sample.key).astype("float32"))
                self.cache[index] = array[None].to(self.device)
                self.stored += 1
            else:
                with torch.no_grad():
                    image = self.sam.preprocess(sample.image.to(self.device)[None])
                    self.cache[index] = self.sam.image_encoder(image)
        return self.cache[index]

    def loss(self, share: BatchShare) -> tuple[torch.Tensor, dict[str, Any]]:
        """This worker's images: each one's mean interactive loss on its embedding, summed
        and divided by the global batch size (as `SamTask.loss`)."""
        config, step = self.config, share.step
        decoder_params = [p for p in self.sam.mask_decoder.parameters() if p.requires_grad]
        samples = [
            load_sample(
                self.index[index],
                image_size=self.sam.img_size,
                max_masks=config.masks_per_image,
                min_mask_area=config.min_mask_area,
                rng=sample_rng(config, step, index),
            )
            for index in share.mine
        ]
        # Zero times a decoder weight: a graph to backpropagate even when no image of this
        # share has a mask (every worker must take part in the gradient all-reduce).
        return share_loss(
            self.sam,
            config,
            share,
            samples,
            lambda position: self.embedding(share.mine[position], samples[position]),
            decoder_params[0].sum() * 0.0,
        )


def decoder_loop(
    config: DecoderTrainConfig, *, rank: int = 0, world_size: int = 1
) -> TrainingLoop[StepResult]:
    def build(device: torch.device) -> DecoderTask:
        return DecoderTask(config, device)

    return TrainingLoop(config, build, rank=rank, world_size=world_size)


def train_decoder_in_process(
    config: DecoderTrainConfig, report: Callable[[StepResult], None] | None = None
) -> list[StepResult]:
    """A decoder round's training in this process with a progress bar."""
    return run_in_process(decoder_loop(config), report)


def train_decoder_with_ray(
    config: DecoderTrainConfig, *, workers: int, use_gpu: bool = False
) -> list[dict[str, Any]]:
    """The same on `workers` Ray Train workers; returns the recorded steps."""
    plain = {"config": asdict(config)}
    return run_on_ray(
        _worker_loop,
        plain,
        output=config.output,
        name=DecoderTask.name,
        workers=workers,
        use_gpu=use_gpu,
    )


def _worker_loop(plain: dict[str, Any], *, rank: int, world_size: int) -> TrainingLoop[Any]:
    config = from_config(DecoderTrainConfig, plain["config"])
    return decoder_loop(config, rank=rank, world_size=world_size)
