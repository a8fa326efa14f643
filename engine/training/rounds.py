"""One retraining round: train on everything collected so far, evaluate on held-out data,
register the new model, and promote it only if it beats its parent.

The parent is the registry's promoted model (`latest`), or `init_checkpoint` for the first
round. A round's kind is `full` (the whole model, `engine.training.trainer`) or `decoder`
(the prompt encoder and mask decoder on stored or once-computed embeddings,
`engine.training.decoder`); the registry records it. Training runs in
`<registry>/work/<round>/` and resumes there if the round is rerun after a failure. The
round's record says which shards it trained on, both models' metrics, and why it was or was
not promoted.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from engine.dataset.reader import build_index
from engine.registry import Registry, RoundRecord
from engine.training.decoder import (
    DecoderTrainConfig,
    check_kind,
    train_decoder_in_process,
    train_decoder_with_ray,
)
from engine.training.evaluate import EvalResult, evaluate
from engine.training.trainer import MODEL_FILE, TrainConfig, train_in_process, train_with_ray
from model import build_sam
from stages.automatic import GeneratorConfig


@dataclass(frozen=True)
class EvalSettings:
    """What the round evaluates: up to max_images held-out images and max_masks masks each;
    the generator's recall with points_per_side points. metric: the one that decides
    promotion (higher is better). promote: 'better' promotes a model that beats its parent
    on the metric; 'always' promotes every round's model (the metrics are still recorded,
    for teams that judge the models themselves)."""

    max_images: int = 32
    max_masks: int = 16
    points_per_side: int = 16
    metric: str = "point_miou"
    promote: str = "better"

    def __post_init__(self) -> None:
        if self.metric not in EvalResult.__dataclass_fields__ or self.metric.startswith("noc"):
            raise ValueError(f"eval.metric must be a higher-is-better metric, got {self.metric!r}")
        if self.promote not in ("better", "always"):
            raise ValueError(f"eval.promote must be better or always, got {self.promote!r}")


def evaluate_checkpoint(
    model_name: str, checkpoint: str | None, data: list[str], settings: EvalSettings
) -> dict[str, Any]:
    sam = build_sam(model_name, checkpoint=checkpoint)
    result = evaluate(
        sam,
        data,
        max_images=settings.max_images,
        max_masks=settings.max_masks,
        generator_config=GeneratorConfig(points_per_side=settings.points_per_side),
    )
    return result.to_dict()


def training_shards(data: list[str]) -> list[str]:
    """The exact files a training run reads (tar shards or json/jpg folders)."""
    return sorted({entry.image.url for entry in build_index(data)})


def run_round(
    *,
    registry_root: str,
    train: TrainConfig,
    eval_data: list[str],
    eval_settings: EvalSettings,
    workers: int = 0,
    use_gpu: bool = False,
    config_yaml: str = "",
    reevaluate_parent: bool = False,
    kind: str = "full",
) -> RoundRecord:
    """Run the next round; returns its record (registered, promoted or not).
    reevaluate_parent: evaluate the parent again on `eval_data` instead of taking its
    recorded metrics (for held-out data that grows between rounds, as in a campaign);
    kind: full | decoder (a decoder round reads the embeddings `train` names, if it is a
    `DecoderTrainConfig`, else computes them once)."""
    registry = Registry(registry_root)
    parent = registry.latest()
    name = registry.next_round_name()
    start = str(registry.checkpoint(parent)) if parent else train.init_checkpoint
    config = replace(train, init_checkpoint=start, output=str(registry.work_dir(name)))
    _train(config, kind=check_kind(kind), workers=workers, use_gpu=use_gpu)
    model_file = Path(config.output) / MODEL_FILE
    metrics = evaluate_checkpoint(config.model, str(model_file), eval_data, eval_settings)
    parent_metrics = None
    if parent and not reevaluate_parent:
        parent_metrics = registry.record(parent).metrics
    elif start:
        parent_metrics = evaluate_checkpoint(config.model, start, eval_data, eval_settings)
    promoted, reason = _decide(metrics, parent_metrics, eval_settings.metric, parent or start)
    if eval_settings.promote == "always" and not promoted:
        promoted, reason = True, f"promote=always ({reason.split(':')[0]})"
    record = RoundRecord(
        name=name,
        model=config.model,
        sha256="",
        parent=parent,
        parent_sha256=registry.record(parent).sha256 if parent else None,
        training_shards=training_shards(list(config.data)),
        metrics=metrics,
        parent_metrics=parent_metrics,
        promoted=promoted,
        reason=reason,
        kind=kind,
    )
    record = registry.register(record, artifact_file=model_file, config_yaml=config_yaml)
    plot_rounds(registry)
    return record


def _train(config: TrainConfig, *, kind: str, workers: int, use_gpu: bool) -> None:
    if kind == "decoder":
        decoder = config if isinstance(config, DecoderTrainConfig) else None
        decoder = decoder or DecoderTrainConfig(**asdict(config))
        if workers > 0:
            train_decoder_with_ray(decoder, workers=workers, use_gpu=use_gpu)
        else:
            train_decoder_in_process(decoder)
    elif workers > 0:
        train_with_ray(config, workers=workers, use_gpu=use_gpu)
    else:
        train_in_process(config)


def _decide(
    metrics: dict[str, Any], parent: dict[str, Any] | None, metric: str, parent_name: str | None
) -> tuple[bool, str]:
    new = float(metrics[metric])
    if parent is None:
        return True, f"first model: {metric} {new:.4f} (no parent to beat)"
    old = float(parent[metric])
    if new > old:
        return True, f"{metric} {new:.4f} > parent {parent_name} {old:.4f}"
    return False, f"{metric} {new:.4f} <= parent {parent_name} {old:.4f}: parent stays latest"


def plot_rounds(registry: Registry) -> None:
    """metrics.png: each round's point mIoU, 5-click mIoU and generator recall@0.5."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = registry.rounds()
    records = [registry.record(n) for n in names]
    figure, axis = plt.subplots(figsize=(6, 3.5))
    series = {
        "1-point mIoU": [r.metrics["point_miou"] for r in records],
        "5-click mIoU": [
            r.metrics["click_miou"][4] if r.metrics["click_miou"] else 0.0 for r in records
        ],
        "AMG recall@0.5": [r.metrics["amg_recall_50"] for r in records],
    }
    for label, values in series.items():
        axis.plot(range(1, len(values) + 1), values, marker="o", label=label)
    for index, record in enumerate(records):
        if record.promoted:
            axis.axvline(index + 1, color="0.85", zorder=0)
    axis.set(xlabel="round (grey: promoted)", ylabel="held-out metric", ylim=(0, 1))
    axis.legend(loc="lower right", fontsize=8)
    figure.savefig(registry.root / "metrics.png", dpi=100, bbox_inches="tight")
    plt.close(figure)
