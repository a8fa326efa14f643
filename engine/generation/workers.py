"""The units of a generation job: CPU tasks (decode, finish, commit) and the model worker.

They are plain functions and a plain class, usable in-process; `engine.generation.pipeline` wraps
them as Ray tasks and actors with resources from config.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from engine.dataset import (
    ANNOTATION_ID_STRIDE,
    STAGING_DIR,
    STATUS_ERROR,
    STATUS_OK,
    ManifestRow,
    dumps_json,
    pack_shard,
    shard_name,
    staged_path,
    write_manifest_part,
)
from engine.embeddings import Embedding, embed_image
from engine.images import DecodedImage, ImageDecodeError, ImageOptions, decode_image
from engine.sources import ImageSource
from engine.storage import Storage
from model import SamPredictor
from model.checkpoint import sha256_of
from stages.automatic import (
    AutomaticMaskGenerator,
    GeneratorConfig,
    finish_candidates,
    to_annotations,
)
from stages.automatic.columns import MaskColumns


@dataclass(frozen=True)
class ImagePlan:
    """Where one input image goes: its id, key and shard are fixed by its input position."""

    image_id: int
    source: ImageSource
    shard: int
    key: str


@dataclass(frozen=True)
class Failure:
    """An image that could not be processed; `message` becomes the manifest's error."""

    message: str


@dataclass(frozen=True)
class ShardInfo:
    shard: int
    num_images: int
    num_ok: int
    num_masks: int
    tar_bytes: int


def decode_source(
    source: ImageSource, options: ImageOptions, storage_options: dict[str, Any]
) -> DecodedImage | Failure:
    try:
        data = source.read_bytes(storage_options)
    except (OSError, ValueError) as error:
        return Failure(f"cannot read: {_one_line(error)}")
    try:
        return decode_image(data, options)
    except ImageDecodeError as error:
        return Failure(str(error))


class ModelWorker:
    """Loads the model once; per image, the model's share of the generator (`generate`) or
    the image encoder alone (`embed`).

    model_config: a `_target_` config (see configs/model); device: 'cpu', 'cuda' or 'auto';
    precision: 'fp32' (exact) or 'bf16' (autocast on CUDA)."""

    def __init__(
        self,
        *,
        model_config: dict[str, Any],
        generator_config: GeneratorConfig,
        device: str = "auto",
        precision: str = "fp32",
        threads: int | None = None,
    ) -> None:
        from hydra.utils import instantiate

        if threads:
            torch.set_num_threads(threads)
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model_config = model_config
        self.init_error: str | None = None
        self.busy_seconds = 0.0
        self.first_start: float | None = None
        self.last_end = 0.0
        self.num_images = 0
        try:
            sam = instantiate(model_config).to(device)
        except Exception as error:  # noqa: BLE001 - reported to the driver by identity()
            # Restarting would fail the same way: keep the reason for the driver instead.
            self.init_error = _one_line(getattr(error, "__cause__", None) or error)
            return
        autocast = torch.bfloat16 if precision == "bf16" and device.startswith("cuda") else None
        predictor = SamPredictor(sam, autocast_dtype=autocast)
        self.generator = AutomaticMaskGenerator(predictor, generator_config)

    def identity(self) -> dict[str, Any]:
        """The model's name and the SHA-256 of its weights (and of its checkpoint file)."""
        from engine.models import weights_sha256

        if self.init_error:
            return {"error": self.init_error}
        from engine.models import resolve_checkpoint_reference

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
            "weights_sha256": weights_sha256(self.generator.predictor.model),
        }

    def generate(self, decoded: DecodedImage | Failure) -> MaskColumns | Failure:
        if isinstance(decoded, Failure):
            return decoded
        start = time.perf_counter()
        self.first_start = self.first_start or start
        try:
            with torch.inference_mode():
                return self.generator.generate_candidates(decoded.rgb)
        except (RuntimeError, ValueError) as error:
            return Failure(f"generation failed: {_one_line(error)}")
        finally:
            self.last_end = time.perf_counter()
            self.busy_seconds += self.last_end - start
            self.num_images += 1

    def embed(self, decoded: DecodedImage | Failure) -> Embedding | Failure:
        """The image encoder alone (campaigns precompute embeddings for the annotators)."""
        if isinstance(decoded, Failure):
            return decoded
        start = time.perf_counter()
        self.first_start = self.first_start or start
        try:
            return embed_image(self.generator.predictor, decoded.rgb)
        except (RuntimeError, ValueError) as error:
            return Failure(f"embedding failed: {_one_line(error)}")
        finally:
            self.generator.predictor.reset_image()
            self.last_end = time.perf_counter()
            self.busy_seconds += self.last_end - start
            self.num_images += 1

    def stats(self) -> dict[str, Any]:
        """busy_fraction: time spent generating over the time since the first image;
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


def finish_image(
    plan: ImagePlan,
    decoded: DecodedImage | Failure,
    candidates: MaskColumns | Failure,
    *,
    storage: Storage,
    generator_config: GeneratorConfig,
) -> ManifestRow:
    """Post-processing, SA-1B JSON, and the image's two files staged for its shard."""
    if isinstance(decoded, Failure):
        return _row(plan, 0, 0, 0, STATUS_ERROR, decoded.message)
    if isinstance(candidates, Failure):
        return _row(plan, 0, 0, 0, STATUS_ERROR, candidates.message)
    annotations = [
        _with_id(annotation, plan.image_id * ANNOTATION_ID_STRIDE + rank)
        for rank, annotation in enumerate(
            to_annotations(finish_candidates(candidates, generator_config))
        )
    ]
    height, width = decoded.size_hw
    image: dict[str, Any] = {
        "image_id": plan.image_id,
        "width": width,
        "height": height,
        "file_name": f"{plan.key}.jpg",
    }
    if decoded.blurred is not None:
        image["privacy_blurred"] = decoded.blurred  # regions blurred before generation
    record = {"image": image, "annotations": annotations}
    storage.write_bytes(staged_path(plan.shard, plan.key, "jpg"), decoded.jpeg)
    storage.write_bytes(staged_path(plan.shard, plan.key, "json"), dumps_json(record))
    return _row(plan, width, height, len(annotations), STATUS_OK, "")


def commit_shard(storage: Storage, shard: int, rows: list[ManifestRow]) -> ShardInfo:
    """Pack the shard's staged files into its tar, then write its manifest part (the
    commit marker), then drop the staged files."""
    rows = sorted(rows, key=lambda row: row.image_id)
    ok = [row for row in rows if row.status == STATUS_OK]
    tar_bytes = pack_shard(storage, shard, [row.key for row in ok])
    write_manifest_part(storage, shard, rows)
    storage.remove(f"{STAGING_DIR}/{shard_name(shard)}")
    return ShardInfo(
        shard=shard,
        num_images=len(rows),
        num_ok=len(ok),
        num_masks=sum(row.num_masks for row in ok),
        tar_bytes=tar_bytes,
    )


def _with_id(annotation: dict[str, Any], annotation_id: int) -> dict[str, Any]:
    """The annotation with its id, keys in SA-1B's order."""
    order = ("segmentation", "bbox", "area", "predicted_iou", "stability_score")
    first = {"id": annotation_id, **{name: annotation[name] for name in order}}
    return {**first, **{k: v for k, v in annotation.items() if k not in first}}


def _row(
    plan: ImagePlan, width: int, height: int, num_masks: int, status: str, error: str
) -> ManifestRow:
    return ManifestRow(
        image_id=plan.image_id,
        source=plan.source.source,
        shard=shard_name(plan.shard),
        key=plan.key,
        width=width,
        height=height,
        num_masks=num_masks,
        status=status,
        error=error,
    )


def _node_id() -> str:
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else ""


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__
