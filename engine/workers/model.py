"""The model worker: a SAM loaded once (in a Ray actor, or in this process), and per image
the work a job asks of it, with its busy time accounted in one place.

`predictor` serves embeddings and prompts; `generator` (the automatic mask generator) exists
when the worker is given a generator config. Jobs with more to hold (stage 2's detector)
subclass it and run their per-image work through `run_on`.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import torch

from engine.embeddings import Embedding, embed_image
from engine.errors import first_line
from engine.images import DecodedImage
from engine.workers.decode import Failure, guarded
from model import SamPredictor
from model.checkpoint import sha256_of
from stages.automatic import AutomaticMaskGenerator, GeneratorConfig
from stages.automatic.columns import MaskColumns

T = TypeVar("T")


def resolve_device(device: str) -> str:
    """'auto': CUDA when this process sees a GPU, else the CPU."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


class ModelWorker:
    """Loads the model once. model_config: a `_target_` config (see configs/model);
    generator_config: build the automatic generator too (None: the predictor only); device:
    'cpu', 'cuda' or 'auto'; precision: 'fp32' (exact) or 'bf16' (autocast on CUDA).

    A model that fails to load does not raise (a restarted actor would fail the same way):
    `identity()` reports the reason to the driver instead."""

    def __init__(
        self,
        *,
        model_config: dict[str, Any],
        generator_config: GeneratorConfig | None = None,
        device: str = "auto",
        precision: str = "fp32",
        threads: int | None = None,
    ) -> None:
        from hydra.utils import instantiate

        if threads:
            torch.set_num_threads(threads)
        self.device = resolve_device(device)
        self.model_config = model_config
        self.init_error: str | None = None
        self.busy_seconds = 0.0
        self.first_start: float | None = None
        self.last_end = 0.0
        self.num_images = 0
        self.generator: AutomaticMaskGenerator | None = None
        try:
            sam = instantiate(model_config).to(self.device)
        except Exception as error:  # noqa: BLE001 - reported to the driver by identity()
            self.init_error = first_line(getattr(error, "__cause__", None) or error)
            return
        cuda = self.device.startswith("cuda")
        autocast = torch.bfloat16 if precision == "bf16" and cuda else None
        self.predictor = SamPredictor(sam, autocast_dtype=autocast)
        if generator_config is not None:
            self.generator = AutomaticMaskGenerator(self.predictor, generator_config)

    def identity(self) -> dict[str, Any]:
        """The model's name and the SHA-256 of its weights (and of its checkpoint file), or
        {"error": why it did not load}."""
        from engine.models import resolve_checkpoint_reference, weights_sha256

        if self.init_error:
            return {"error": self.init_error}
        checkpoint = self.model_config.get("checkpoint")
        resolved = resolve_checkpoint_reference(str(checkpoint)) if checkpoint else None
        file_sha = None
        if resolved and os.path.isfile(resolved):
            file_sha = sha256_of(Path(resolved))
        return {
            "name": self.model_config.get("name"),
            "checkpoint": checkpoint,
            "checkpoint_file": resolved,
            "checkpoint_sha256": file_sha,
            "weights_sha256": weights_sha256(self.predictor.model),
        }

    @contextlib.contextmanager
    def busy(self) -> Iterator[None]:
        """Account the block as one image's work."""
        start = time.perf_counter()
        self.first_start = self.first_start or start
        try:
            yield
        finally:
            self.last_end = time.perf_counter()
            self.busy_seconds += self.last_end - start
            self.num_images += 1

    def run_on(
        self, decoded: DecodedImage | Failure, work: Callable[[DecodedImage], T], *, what: str
    ) -> T | Failure:
        """work(decoded), accounted; a failed decode passes through, and a model error on
        this image becomes a Failure ("<what> failed: ...") so the job goes on."""
        if isinstance(decoded, Failure):
            return decoded
        with self.busy():
            try:
                return work(decoded)
            except (RuntimeError, ValueError) as error:
                return Failure(f"{what} failed: {first_line(error)}")
            finally:
                self.predictor.reset_image()

    def generate(self, decoded: DecodedImage | Failure) -> MaskColumns | Failure:
        """The model's share of the automatic generator (candidates before finishing)."""
        generator = self.generator
        if generator is None:
            raise RuntimeError("this model worker was started without a generator config")

        def work(image: DecodedImage) -> MaskColumns:
            with torch.inference_mode():
                return generator.generate_candidates(image.rgb)

        return self.run_on(decoded, work, what="generation")

    def generate_batch(self, batch: list[DecodedImage | Failure]) -> list[MaskColumns | Failure]:
        """`generate` on each image of a batch (one call, one result object for all);
        an unexpected error on one image is its Failure, and the others go on."""
        return [guarded(self.generate, decoded) for decoded in batch]

    def embed(self, decoded: DecodedImage | Failure) -> Embedding | Failure:
        """The image encoder alone (campaigns precompute embeddings for the annotators)."""
        return self.run_on(
            decoded, lambda image: embed_image(self.predictor, image.rgb), what="embedding"
        )

    def stats(self) -> dict[str, Any]:
        """busy_fraction: time spent on images over the time since the first one;
        node_id: the Ray node this worker runs on ('' outside Ray)."""
        span = (self.last_end - self.first_start) if self.first_start else 0.0
        return {
            "images": float(self.num_images),
            "busy_seconds": self.busy_seconds,
            "span_seconds": span,
            "busy_fraction": self.busy_seconds / span if span > 0 else 0.0,
            "pid": float(os.getpid()),
            "node_id": _node_id(),
        }


def _node_id() -> str:
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else ""
