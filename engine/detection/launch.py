"""Running the detector's training loop: in this process (with a progress bar) or on Ray
Train workers (`TorchTrainer`: gloo on CPU, NCCL on GPU), each worker a `DetectorTrainer` of
its rank."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from engine.detection.trainer import (
    DetectorStep,
    DetectorTrainConfig,
    DetectorTrainer,
    TrainingInputs,
    read_steps,
)
from stages.semi.detector import DetectorConfig


def train_in_process(
    config: DetectorTrainConfig,
    inputs: TrainingInputs,
    report: Callable[[DetectorStep], None] | None = None,
) -> list[DetectorStep]:
    """Train in this process with a progress bar (loss and its terms)."""
    from tqdm import tqdm

    trainer = DetectorTrainer(config, inputs)
    with tqdm(total=config.steps, initial=trainer.step, unit="step", desc="detector") as bar:

        def on_step(result: DetectorStep) -> None:
            bar.set_postfix(loss=f"{result.loss:.3f}", cls=f"{result.classification:.3f}")
            bar.update(1)
            if report is not None:
                report(result)

        return trainer.run(on_step)


def train_with_ray(
    config: DetectorTrainConfig, inputs: TrainingInputs, *, workers: int, use_gpu: bool = False
) -> list[dict[str, Any]]:
    """The same loop on `workers` Ray Train workers (TorchTrainer: gloo on CPU, NCCL on GPU),
    on the Ray that is initialized (or a local one). Returns the recorded steps."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    output = Path(config.output).resolve()
    trainer = TorchTrainer(
        _ray_train_loop,
        train_loop_config={"config": asdict(config), "inputs": asdict(inputs)},
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu),
        run_config=RunConfig(storage_path=str(output / "ray"), name="detector"),
    )
    trainer.fit()
    return read_steps(output)


def config_from_dict(plain: dict[str, Any]) -> DetectorTrainConfig:
    fields = {**plain, "data": tuple(plain["data"]), "decay_at": tuple(plain["decay_at"])}
    return DetectorTrainConfig(**fields)


def inputs_from_dict(plain: dict[str, Any]) -> TrainingInputs:
    detector = {**plain["detector"], "scales": tuple(plain["detector"]["scales"])}
    return TrainingInputs(**{**plain, "detector": DetectorConfig(**detector)})


def _ray_train_loop(loop_config: dict[str, Any]) -> None:
    import ray.train

    context = ray.train.get_context()
    config = config_from_dict(loop_config["config"])
    inputs = inputs_from_dict(loop_config["inputs"])
    trainer = DetectorTrainer(
        config, inputs, rank=context.get_world_rank(), world_size=context.get_world_size()
    )

    def report(result: DetectorStep) -> None:
        if result.step % config.log_every == 0 or result.step == config.steps:
            ray.train.report({"step": result.step, "loss": result.loss})

    trainer.run(report)
