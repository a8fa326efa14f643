"""One detector round: train on every mask collected so far (starting from the promoted
detector), evaluate on held-out data, register, and promote only if the held-out metric
(COCO box AP by default) beats the parent's.

The parent is re-evaluated on the same held-out images when it takes the same SAM's
embeddings (they are cached); a parent made for another SAM keeps the metrics recorded in
its round (it cannot read this SAM's embeddings), and the reason says so.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from engine.detection.data import read_images
from engine.detection.evaluate import evaluate_detector
from engine.detection.job import (
    DETECTOR_FILE,
    EVAL_IMAGES,
    DetectorJob,
    embedding_store,
    run_detector_job,
)
from engine.detection.registry import DetectorRegistry, DetectorRoundRecord
from engine.models import resolve_device
from stages.semi.inference import DetectorMetadata, load_detector

METRICS = ("ap", "ap50", "ap75", "ar", "recall_50")


def check_metric(metric: str) -> None:
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")


def run_detector_round(
    *,
    registry_root: str,
    job: DetectorJob,
    metric: str = "ap",
    from_parent: bool = True,
    config_yaml: str = "",
) -> DetectorRoundRecord:
    """Run the registry's next detector round; returns its record (registered, promoted or
    not). The round trains in `<registry>/detector/work/<round>/` and resumes there if rerun
    after a failure; embeddings are cached under `<registry>/detector/` unless embed.cache
    says otherwise."""
    check_metric(metric)
    registry = DetectorRegistry(registry_root)
    parent = registry.latest()
    name = registry.next_round_name()
    start = job.train.init_checkpoint
    if parent and from_parent:
        start = str(registry.checkpoint(parent))
    cache = job.embed.cache or str(registry.root)
    output = registry.work_dir(name)
    job = replace(
        job,
        train=replace(job.train, output=str(output), init_checkpoint=start),
        embed=replace(job.embed, cache=cache),
    )
    metadata = run_detector_job(job, parent=parent or start)
    parent_file = str(registry.checkpoint(parent)) if parent else start
    parent_metrics, note = _parent_metrics(parent_file, metadata, output, cache)
    if parent and parent_metrics is None:
        parent_metrics = registry.record(parent).metrics
    label = parent or start
    promoted, reason = decide(metadata.metrics, parent_metrics, metric, label)
    record = DetectorRoundRecord(
        name=name,
        sha256="",
        parent=parent,
        parent_sha256=registry.record(parent).sha256 if parent else None,
        sam_weights_sha256=metadata.sam_weights_sha256,
        training_shards=metadata.training_shards,
        eval_shards=metadata.eval_shards,
        metrics=metadata.metrics,
        parent_metrics=parent_metrics,
        score_thresh=metadata.score_thresh,
        target_precision=metadata.target_precision,
        promoted=promoted,
        reason=reason + note,
    )
    return registry.register(record, artifact_file=output / DETECTOR_FILE, config_yaml=config_yaml)


def _parent_metrics(
    parent_file: str | None, metadata: DetectorMetadata, output: Path, cache: str
) -> tuple[dict[str, Any] | None, str]:
    """The parent's metrics on this round's held-out images, when it reads this SAM's
    embeddings; otherwise None and a note for the reason."""
    if not parent_file:
        return None, ""
    detector, parent = load_detector(parent_file, device=resolve_device("auto"))
    if parent.sam_weights_sha256 != metadata.sam_weights_sha256:
        return None, " (the parent takes another SAM's embeddings: its recorded metrics)"
    store = embedding_store(cache, metadata.sam_weights_sha256)
    metrics = evaluate_detector(
        detector,
        read_images(output / EVAL_IMAGES),
        store,
        target_precision=float(metadata.target_precision or 0.9),
        score_thresh=detector.confident_thresh,
    )
    return metrics, ""


def decide(
    metrics: dict[str, Any], parent: dict[str, Any] | None, metric: str, parent_name: str | None
) -> tuple[bool, str]:
    """Promote when the new metric beats the parent's (or there is no parent)."""
    new = float(metrics[metric])
    if parent is None:
        return True, f"first detector: {metric} {new:.4f} (no parent to beat)"
    old = float(parent[metric])
    if new > old:
        return True, f"{metric} {new:.4f} > parent {parent_name} {old:.4f}"
    return False, f"{metric} {new:.4f} <= parent {parent_name} {old:.4f}: parent stays latest"
