"""`saengine train`, `saengine evaluate` and `saengine round` from their composed configs."""

from __future__ import annotations

import contextlib
import dataclasses
import json
from pathlib import Path
from typing import Any, TypeVar

from omegaconf import DictConfig, OmegaConf

from engine.cluster import ray_session
from engine.config import from_config, plain
from engine.models import resolve_checkpoint_reference
from engine.training.loop import TrainSettings
from engine.training.rounds import EvalSettings, evaluate_checkpoint, run_round
from engine.training.trainer import StepResult, TrainConfig, train_in_process, train_with_ray

S = TypeVar("S", bound=TrainSettings)


def as_list(value: Any) -> list[str]:
    """A config value (a list or one item) as a list of strings."""
    value = plain(value)
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    return [str(value)]


def settings_from_config(cls: type[S], node: Any) -> S:
    """A training run's settings (`cls`) from a config node that may hold other options
    too (workers, ray, ...: left out); data: one dataset or a list."""
    values = plain(node)
    names = {field.name for field in dataclasses.fields(cls)}
    known = {key: value for key, value in values.items() if key in names}
    return from_config(
        cls, known, data=tuple(as_list(values["data"])), output=str(values["output"])
    )


def train_config(node: Any) -> TrainConfig:
    """SAM's training settings from a config node (`settings_from_config`)."""
    return settings_from_config(TrainConfig, node)


def _maybe_ray(cfg: DictConfig, workers: int) -> contextlib.AbstractContextManager[None]:
    """Ray only when training on Ray Train workers."""
    return ray_session(cfg) if workers > 0 else contextlib.nullcontext()


def _print_step(result: StepResult) -> None:
    print(
        f"step {result.step}: loss {result.loss:.4f}, first-prompt IoU {result.first_iou:.3f}, "
        f"lr {result.lr:.2e}, {result.seconds:.2f} s",
        flush=True,
    )


def run_train(cfg: DictConfig) -> None:
    config = train_config(cfg)
    workers = int(cfg.workers)
    with _maybe_ray(cfg, workers):
        if workers > 0:
            steps = train_with_ray(config, workers=workers, use_gpu=bool(cfg.use_gpu))
            last = steps[-1] if steps else {}
            print(
                f"trained {len(steps)} steps on {workers} Ray Train workers; "
                f"last loss {last.get('loss', float('nan')):.4f}"
            )
        else:
            results = train_in_process(config)
            if results:
                _print_step(results[-1])
    print(f"model: {Path(config.output) / 'model.pth'} (official-format state_dict)")


def run_evaluate(cfg: DictConfig) -> None:
    settings = from_config(EvalSettings, cfg, ignore=("checkpoint", "model", "data", "output"))
    checkpoint = resolve_checkpoint_reference(str(cfg.checkpoint))
    metrics = evaluate_checkpoint(str(cfg.model), checkpoint, as_list(cfg.data), settings)
    print(format_metrics(metrics))
    if cfg.output:
        Path(str(cfg.output)).write_text(json.dumps(metrics, indent=2))


def format_metrics(metrics: dict[str, Any]) -> str:
    curve = ", ".join(f"{v:.3f}" for v in metrics["click_miou"])
    return "\n".join(
        [
            f"images {metrics['num_images']}, masks {metrics['num_masks']}",
            f"1-point mIoU {metrics['point_miou']:.3f} (oracle of 3: "
            f"{metrics['point_miou_oracle']:.3f})",
            f"mIoU after 1..9 clicks: {curve}",
            f"clicks to 85% IoU {metrics['noc85']:.2f}, to 90% {metrics['noc90']:.2f}",
            f"generator recall@0.5 {metrics['amg_recall_50']:.3f}, @0.75 "
            f"{metrics['amg_recall_75']:.3f}, {metrics['amg_masks_per_image']:.1f} masks/image",
        ]
    )


def run_round_command(cfg: DictConfig) -> None:
    settings = from_config(EvalSettings, cfg.eval)
    workers = int(cfg.workers)
    with _maybe_ray(cfg, workers):
        record = run_round(
            registry_root=str(cfg.registry),
            train=train_config(cfg.train),
            eval_data=as_list(cfg.eval_data),
            eval_settings=settings,
            workers=workers,
            use_gpu=bool(cfg.use_gpu),
            config_yaml=OmegaConf.to_yaml(cfg, resolve=True),
            kind=str(cfg.get("kind", "full")),
        )
    state = "promoted to latest" if record.promoted else "not promoted"
    print(f"{record.name} ({record.kind} round): {state} ({record.reason})")
    print(format_metrics(record.metrics))
    print(f"registry: {cfg.registry} (latest, rounds/, metrics.png)")
