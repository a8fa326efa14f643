"""`saengine detector train | evaluate | round` from their composed configs."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from engine.cluster import ray_session
from engine.config import from_config, plain
from engine.detection.job import (
    DETECTOR_FILE,
    DetectorJob,
    EmbedSettings,
    collect,
    embedding_store,
    prepare_sam,
    run_detector_job,
)
from engine.detection.registry import DETECTOR_DIR, resolve_detector_reference
from engine.detection.rounds import check_metric, run_detector_round
from engine.detection.trainer import DetectorTrainConfig
from engine.models import resolve_device
from engine.training.commands import as_list, settings_from_config
from stages.semi.detector import DetectorConfig
from stages.semi.inference import load_detector

ARCHITECTURE_FROM_SAM = ("embed_dim", "image_size")


def train_config(node: Any) -> DetectorTrainConfig:
    """The detector's training settings from a config node (`settings_from_config`)."""
    return settings_from_config(DetectorTrainConfig, node)


def detector_config(node: Any) -> DetectorConfig:
    scales = tuple(float(s) for s in plain(node)["scales"])
    return from_config(DetectorConfig, node, scales=scales)


def embed_settings(node: Any) -> EmbedSettings:
    return from_config(EmbedSettings, node)


def build_job(cfg: DictConfig, train_node: Any) -> DetectorJob:
    return DetectorJob(
        train=train_config(train_node),
        detector=detector_config(cfg.detector),
        eval_data=tuple(as_list(cfg.eval_data)),
        model_config=plain(cfg.model),
        target_precision=float(cfg.target_precision),
        embed=embed_settings(cfg.embed),
        workers=int(cfg.workers),
        use_gpu=bool(cfg.use_gpu),
    )


def _maybe_ray(cfg: DictConfig, needed: bool) -> contextlib.AbstractContextManager[None]:
    return ray_session(cfg) if needed else contextlib.nullcontext()


def run_train(cfg: DictConfig) -> None:
    job = build_job(cfg, cfg)
    with _maybe_ray(cfg, job.workers > 0 or job.embed.actors > 0):
        metadata = run_detector_job(job)
    output = Path(job.train.output)
    (output / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    print(format_metrics(metadata.metrics))
    print(f"detector: {Path(job.train.output) / DETECTOR_FILE}")


def run_round(cfg: DictConfig) -> None:
    check_metric(str(cfg.metric))
    job = build_job(cfg, cfg.train)
    with _maybe_ray(cfg, job.workers > 0 or job.embed.actors > 0):
        record = run_detector_round(
            registry_root=str(cfg.registry),
            job=job,
            metric=str(cfg.metric),
            from_parent=bool(cfg.from_parent),
            config_yaml=OmegaConf.to_yaml(cfg, resolve=True),
        )
    state = "promoted to latest" if record.promoted else "not promoted"
    print(f"detector {record.name}: {state} ({record.reason})")
    print(format_metrics(record.metrics))
    print(f"registry: {Path(str(cfg.registry)) / DETECTOR_DIR} (latest, rounds/)")


def default_cache(detector_file: str) -> str:
    """Where a detector's embeddings were cached: its registry's detector folder, or the
    folder of the file (a training run's output)."""
    path = Path(detector_file).resolve()
    if len(path.parents) > 2 and path.parents[2].name == DETECTOR_DIR:
        return str(path.parents[2])
    return str(path.parent)


def run_evaluate(cfg: DictConfig) -> None:
    path = resolve_detector_reference(str(cfg.checkpoint))
    detector, metadata = load_detector(path, device=resolve_device(str(cfg.device)))
    model_config = plain(cfg.model) if cfg.get("model") else metadata.sam_model
    if not model_config:
        raise ValueError(f"{path} does not record its SAM: give model=... (and model.checkpoint)")
    embed = embed_settings(cfg.embed)
    with _maybe_ray(cfg, embed.actors > 0):
        sam = prepare_sam(model_config, embed)
        if sam.sha256 != metadata.sam_weights_sha256:
            raise ValueError(
                f"the detector takes the embeddings of SAM {metadata.sam_weights_sha256[:12]}, "
                f"the model given is {sam.sha256[:12]}: give the SAM it was trained with"
            )
        store = embedding_store(embed.cache or default_cache(path), sam.sha256)
        images = collect(as_list(cfg.data), sam, store, "embed held-out images")
    from engine.detection.evaluate import evaluate_detector

    target = cfg.target_precision or metadata.target_precision or 0.9
    metrics = evaluate_detector(
        detector,
        images,
        store,
        target_precision=float(target),
        score_thresh=detector.confident_thresh,
        progress=True,
    )
    print(format_metrics(metrics))
    if cfg.output:
        Path(str(cfg.output)).write_text(json.dumps(metrics, indent=2))


def format_metrics(metrics: dict[str, Any]) -> str:
    chosen = metrics["chosen"]
    lines = [
        f"images {metrics['num_images']}, objects {metrics['num_objects']}, "
        f"{metrics['detections_per_image']:.1f} detections/image above the score floor",
        f"box AP {metrics['ap']:.3f}, AP50 {metrics['ap50']:.3f}, AP75 {metrics['ap75']:.3f}, "
        f"AR {metrics['ar']:.3f}; recall@0.5 {metrics['recall_50']:.3f}",
        f"confident threshold for precision {chosen['target_precision']:.2f}: "
        + (
            f"{chosen['score_thresh']:.3f} (precision {chosen['precision']:.3f}, recall "
            f"{chosen['recall']:.3f})"
            if chosen["achieved"]
            else "none reaches it (no detection is confident)"
        ),
    ]
    at = metrics.get("at_threshold")
    if at:
        lines.append(
            f"at the detector's threshold {at['score_thresh']:.3f}: precision "
            f"{at['precision']:.3f}, recall {at['recall']:.3f}, "
            f"{at['detections_per_image']:.1f} detections/image"
        )
    return "\n".join(lines)
