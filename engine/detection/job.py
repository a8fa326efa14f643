"""One detector run from data to a saved `detector.pt`: embeddings cached, targets written,
training (in-process or Ray Train), held-out evaluation, the confident threshold chosen,
metadata with lineage. Rerunning the same job resumes it: cached embeddings are reused and
training continues from its last checkpoint.

Output folder: `train_images.parquet`, `eval_images.parquet` (images and boxes),
`checkpoints/last.pt`, `metrics.jsonl`, `train_config.json`, `eval_metrics.json` and, last,
`detector.pt`. Embeddings go to `<cache>/embeddings/<SAM sha256[:16]>/<image sha256>.npy`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from engine.detection.data import (
    DetectionImage,
    Embedder,
    collect_images,
    dataset_files,
    write_images,
)
from engine.detection.embedding import in_process_embedder, ray_embedder
from engine.detection.evaluate import evaluate_detector
from engine.detection.registry import DETECTOR_FILE
from engine.detection.trainer import (
    DetectorTrainConfig,
    TrainingInputs,
    saved_state,
    train_in_process,
    train_with_ray,
    trained_detector,
)
from engine.embeddings import EmbeddingStore
from engine.models import resolve_device, weights_sha256
from engine.storage import Storage
from stages.semi.detector import DetectorConfig
from stages.semi.inference import DetectorMetadata, save_detector

TRAIN_IMAGES = "train_images.parquet"
EVAL_IMAGES = "eval_images.parquet"
EVAL_METRICS = "eval_metrics.json"


@dataclass(frozen=True)
class EmbedSettings:
    """Where and how embeddings are computed. cache: the storage root of the embedding
    store (None: the run's output); actors: Ray model actors (0: in this process)."""

    cache: str | None = None
    actors: int = 0
    cpus_per_actor: float = 1
    gpus_per_actor: float = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.actors < 0 or self.cpus_per_actor <= 0 or self.gpus_per_actor < 0:
            raise ValueError(
                "embed.actors >= 0, embed.cpus_per_actor > 0 and embed.gpus_per_actor >= 0 "
                f"are needed, got {self.actors}, {self.cpus_per_actor}, {self.gpus_per_actor}"
            )


@dataclass(frozen=True)
class DetectorJob:
    """train: the training run (data, output, steps, ...); detector: the architecture
    (embed_dim and image_size are replaced by the SAM's); eval_data: held-out datasets;
    target_precision: for the confident threshold; model_config: the SAM's `_target_`
    config; workers: Ray Train workers (0: this process)."""

    train: DetectorTrainConfig
    detector: DetectorConfig
    eval_data: tuple[str, ...]
    model_config: dict[str, Any]
    target_precision: float = 0.9
    embed: EmbedSettings = field(default_factory=EmbedSettings)
    workers: int = 0
    use_gpu: bool = False

    def __post_init__(self) -> None:
        if not self.eval_data:
            raise ValueError("eval_data must name at least one held-out dataset")
        if not 0 < self.target_precision <= 1:
            raise ValueError(f"target_precision must be in (0, 1], got {self.target_precision}")
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0, got {self.workers}")


@dataclass
class PreparedSam:
    """The SAM a job embeds with, and its identity."""

    model_config: dict[str, Any]
    sha256: str
    image_size: int
    embed_dim: int
    embedder: Embedder


def prepare_sam(model_config: dict[str, Any], embed: EmbedSettings) -> PreparedSam:
    from hydra.utils import instantiate

    sam = instantiate(model_config)
    sha = weights_sha256(sam)
    embedder = (
        in_process_embedder(sam.to(resolve_device(embed.device)))
        if embed.actors == 0
        else ray_embedder(
            model_config=model_config,
            actors=embed.actors,
            cpus_per_actor=embed.cpus_per_actor,
            gpus_per_actor=embed.gpus_per_actor,
            device=embed.device,
        )
    )
    dim = int(sam.prompt_encoder.embed_dim)
    return PreparedSam(model_config, sha, int(sam.img_size), dim, embedder)


def embedding_store(cache: str, sam_sha256: str) -> EmbeddingStore:
    return EmbeddingStore(Storage(cache), sam_sha256)


def collect(
    data: Iterable[str], sam: PreparedSam, store: EmbeddingStore, what: str
) -> list[DetectionImage]:
    """The images of `data` with boxes, their embeddings computed where missing."""
    from tqdm import tqdm

    def progress(items: Iterable[Any], total: int) -> Iterable[Any]:
        return tqdm(items, total=total, unit="image", desc=what)

    return collect_images(list(data), store=store, embedder=sam.embedder, progress=progress)


def run_detector_job(job: DetectorJob, *, parent: str | None = None) -> DetectorMetadata:
    """Run (or resume) the job; returns the metadata saved with `<output>/detector.pt`."""
    output = Path(job.train.output)
    sam = prepare_sam(job.model_config, job.embed)
    cache = job.embed.cache or str(output)
    store = embedding_store(cache, sam.sha256)
    train_images = collect(job.train.data, sam, store, "embed training images")
    eval_images = collect(job.eval_data, sam, store, "embed held-out images")
    detector_config = replace(job.detector, embed_dim=sam.embed_dim, image_size=sam.image_size)
    sam_sha256 = sam.sha256
    del sam  # the SAM (and its in-process embedder) is not needed from here on
    inputs = TrainingInputs(
        images_file=str(output / TRAIN_IMAGES),
        embeddings_root=store.storage.root_url,
        sam_weights_sha256=sam_sha256,
        detector=detector_config,
        embeddings_options=store.storage.options,
    )
    saved_state(job.train, inputs, train_images)  # another run's output: refuse, touch nothing
    write_images(output / TRAIN_IMAGES, train_images)
    write_images(output / EVAL_IMAGES, eval_images)
    if job.workers > 0:
        train_with_ray(job.train, inputs, workers=job.workers, use_gpu=job.use_gpu)
    else:
        train_in_process(job.train, inputs)
    detector = trained_detector(output, inputs, device=job.train.device)
    metrics = evaluate_detector(
        detector, eval_images, store, target_precision=job.target_precision, progress=True
    )
    (output / EVAL_METRICS).write_text(json.dumps(metrics, indent=2))
    metadata = DetectorMetadata(
        sam_weights_sha256=sam_sha256,
        sam_model=job.model_config,
        score_thresh=float(metrics["chosen"]["score_thresh"]),
        target_precision=job.target_precision,
        training_shards=dataset_files(list(job.train.data)),
        eval_shards=dataset_files(list(job.eval_data)),
        metrics=metrics,
        steps=job.train.steps,
        parent=parent or job.train.init_checkpoint,
    )
    save_detector(output / DETECTOR_FILE, detector, metadata)
    return metadata
