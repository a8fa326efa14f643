"""`saengine`: the project's one command. Subcommands take Hydra overrides (key=value).

saengine generate input=<dir|glob|list|tar> output=<dir> [model=vit_h model.checkpoint=..]
saengine inspect <output> [pictures=true]
saengine export-onnx model=<name> output=<file.onnx> [quantize=true]
"""

from __future__ import annotations

import os
import sys
import tempfile
import traceback
from collections.abc import Callable
from dataclasses import asdict, fields
from importlib import resources
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from engine.config import compose_config as _compose
from engine.errors import UsageError, first_line
from stages.automatic import PRESETS

USAGE = """usage: saengine <command> [key=value ...]

SA Data Engine: SAM mask generation jobs that write SA-1B-format datasets.

commands:
  generate   run the automatic mask generator over images into an SA-1B dataset (on Ray)
  inspect    verify a dataset and print its statistics (pictures=true for plots)
  synth      write synthetic scenes with exact masks as an SA-1B dataset
  train      train SAM on SA-1B-format data with the paper's interactive recipe
  evaluate   a model's held-out metrics (1-point mIoU, clicks, generator recall)
  round      one retraining round: train, evaluate, register, promote if better
  campaign   annotation campaigns: create, serve, embed, simulate, round, export, stats
  export-onnx  the browser decoder (prompts -> masks) as ONNX, optionally quantized
  detector   stage 2's box detector on SAM embeddings: train, evaluate, round

Options are Hydra overrides (key=value, see `saengine <command> --help`), for example:
  saengine generate input=photos/ output=out/ model=vit_h model.checkpoint=sam_vit_h_4b8939.pth
  saengine generate input=s3://bucket/images output=s3://bucket/dataset generator=sa1b
  saengine inspect out/ pictures=true
  saengine export-onnx model=bundled output=decoder.onnx quantize=true
"""


# Image settings that come with a generator preset: SA-1B's released images have faces and
# licence plates blurred.
PRESET_IMAGES: dict[str, dict[str, Any]] = {"sa1b": {"privacy": "blur"}}


def _register_config_nodes() -> None:
    """Nodes built from the Python defaults, so every default lives in one place:
    the generator presets and the training settings."""
    from hydra.core.config_store import ConfigStore

    from engine.training.rounds import EvalSettings
    from engine.training.trainer import TrainConfig
    from stages.assisted.annotator import AnnotatorPolicy
    from stages.semi.prefill import PrefillFilter

    store = ConfigStore.instance()
    for name, preset in PRESETS.items():
        node = {key: value for key, value in asdict(preset).items() if key != "point_grids"}
        if name in PRESET_IMAGES:  # the preset also sets how images are stored
            store.store(
                group="generator",
                name=name,
                node={"generator": node, "images": PRESET_IMAGES[name]},
                package="_global_",
            )
        else:
            store.store(group="generator", name=name, node=node)
    train = {
        f.name: (list(f.default) if isinstance(f.default, tuple) else f.default)
        for f in fields(TrainConfig)
        if f.name not in ("data", "output")
    }
    store.store(name="train_settings", node={"data": "???", "output": "???", **train})
    store.store(name="annotator_policy", node=asdict(AnnotatorPolicy()))
    store.store(name="eval_settings", node=asdict(EvalSettings()))
    store.store(name="prefill_filter", node=asdict(PrefillFilter()))


def compose_config(config_name: str, overrides: list[str]) -> DictConfig:
    """The composed config of a command, as `saengine <command> overrides...` sees it."""
    _register_config_nodes()
    return _compose(config_name, overrides)


def _command_help(config_name: str, args: list[str] | None = None) -> str:
    if config_name == "detector":
        from engine.detection.commands import detector_help

        return detector_help(args or [])
    text = resources.files("configs").joinpath(f"{config_name}.yaml").read_text()
    groups = ""
    models = sorted(
        p.name[:-5]
        for p in resources.files("configs").joinpath("model").iterdir()
        if p.name.endswith(".yaml")
    )
    if config_name == "export_onnx":
        groups = f"\nmodel=<{'|'.join(models)}>\n"
    if config_name == "generate":
        presets = ", ".join([*PRESETS, "demo"])
        groups = (
            f"\nmodel=<{'|'.join(models)}>   generator=<{presets.replace(', ', '|')}>\n"
            "generator parameters (official names): "
            + ", ".join(k for k in asdict(PRESETS["official"]) if k != "point_grids")
            + "\n"
        )
    if config_name in ("train", "round"):
        from engine.training.trainer import TrainConfig

        prefix = "train." if config_name == "round" else ""
        groups = "\ntraining settings (defaults):\n" + "".join(
            f"  {prefix}{f.name}={f.default}\n" for f in fields(TrainConfig) if f.name != "data"
        )
    command = config_name.replace("_", "-")
    return f"usage: saengine {command} key=value ...\n\n{text}{groups}"


def _generate(overrides: list[str]) -> None:
    from engine.generation.job import run_generate

    cfg = compose_config("generate", overrides)
    run_generate(cfg, overrides)


def _inspect(overrides: list[str]) -> None:
    from engine.dataset.inspect import run_inspect

    if overrides and "=" not in overrides[0]:
        overrides = [f"path={overrides[0]}", *overrides[1:]]
    cfg = compose_config("inspect", overrides)
    if not run_inspect(cfg):
        raise SystemExit(1)


def _synth(overrides: list[str]) -> None:
    from engine.training.synthetic import SceneOptions, write_synthetic_dataset

    cfg = compose_config("synth", overrides)
    shards = write_synthetic_dataset(
        str(cfg.output),
        num_images=int(cfg.num_images),
        split=str(cfg.split),
        seed=int(cfg.seed),
        images_per_shard=int(cfg.images_per_shard),
        options=SceneOptions(
            size=int(cfg.size),
            objects=(int(cfg.objects[0]), int(cfg.objects[1])),
            min_area=int(cfg.min_area),
            part_probability=float(cfg.part_probability),
        ),
    )
    print(f"{cfg.num_images} synthetic {cfg.split} scenes in {len(shards)} shards -> {cfg.output}")


def _train(overrides: list[str]) -> None:
    from engine.training.commands import run_train

    run_train(compose_config("train", overrides))


def _evaluate(overrides: list[str]) -> None:
    from engine.training.commands import run_evaluate

    run_evaluate(compose_config("evaluate", overrides))


def _round(overrides: list[str]) -> None:
    from engine.training.commands import run_round_command

    run_round_command(compose_config("round", overrides))


def _campaign(args: list[str]) -> None:
    from engine.campaigns.commands import run_campaign_command

    run_campaign_command(args, compose_config)


def _export_onnx(overrides: list[str]) -> None:
    from hydra.utils import instantiate

    from engine.models import weights_sha256
    from stages.assisted.onnx_export import (
        ExportSettings,
        check_output_path,
        export_decoder_files,
    )

    cfg = compose_config("export_onnx", overrides)
    settings = ExportSettings(
        output=str(cfg.output),
        quantize=cfg.quantize,
        quantized_output=None if cfg.quantized_output is None else str(cfg.quantized_output),
        opset=cfg.opset,
    )
    check_output_path(Path(settings.output))
    sam = instantiate(cfg.model)
    sha256 = weights_sha256(sam)
    print(f"exporting the decoder of {cfg.model.name} (weights SHA-256 {sha256})", flush=True)
    files = export_decoder_files(
        sam, settings, model_name=str(cfg.model.name), weights_sha256=sha256
    )
    for label, path in (("fp32", files.fp32), ("quantized", files.quantized)):
        if path is not None:
            print(f"{label}: {path} ({path.stat().st_size / 1e6:.1f} MB)")


def _detector(overrides: list[str]) -> None:
    from engine.detection.commands import run_detector_command

    run_detector_command(overrides)


COMMANDS: dict[str, tuple[str, Callable[[list[str]], None]]] = {
    "generate": ("generate", _generate),
    "inspect": ("inspect", _inspect),
    "synth": ("synth", _synth),
    "train": ("train", _train),
    "evaluate": ("evaluate", _evaluate),
    "round": ("round", _round),
    "campaign": ("campaign", _campaign),
    "export-onnx": ("export_onnx", _export_onnx),
    "detector": ("detector", _detector),
}


def main(argv: list[str] | None = None) -> None:
    """The console command. Run as a program (argv None), it ends with os._exit after
    flushing its output: native thread pools (torch, Arrow) can otherwise abort the
    process during interpreter teardown, after the work is done."""
    if argv is not None:
        _main(argv)
        return
    code = 0
    try:
        _main(sys.argv[1:])
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    except BaseException:
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _main(args: list[str]) -> None:
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE)
        return
    command, rest = args[0], args[1:]
    if command not in COMMANDS:
        _fail(f"unknown command {command!r}; commands: {', '.join(COMMANDS)}")
    config_name, run = COMMANDS[command]
    if command != "campaign" and any(arg in ("-h", "--help") for arg in rest):
        print(_command_help(config_name, rest))
        return
    try:
        run(rest)
    except KeyboardInterrupt:
        _fail("interrupted; committed shards are kept, rerun the same command to resume", 130)
    except Exception as error:  # noqa: BLE001 - every error ends in a one-line message
        if _is_user_error(error):
            _fail(first_line(error))
        log = _write_error_log(error, rest)
        _fail(f"internal error: {first_line(error)} (full traceback in {log})", 1)


def _is_user_error(error: BaseException) -> bool:
    from engine.campaigns.campaign import CampaignError
    from engine.generation.job import JobError
    from engine.generation.lock import LockError
    from engine.images import ImageDecodeError
    from engine.registry import RegistryError
    from engine.sources import InputError
    from engine.training.reader import TrainingDataError
    from model.checkpoint import CheckpointError

    known: tuple[type[BaseException], ...] = (
        UsageError,
        JobError,
        CampaignError,
        InputError,
        CheckpointError,
        ImageDecodeError,
        TrainingDataError,
        RegistryError,
        LockError,
        ValueError,
    )
    if isinstance(error, _DATA_ERRORS()):
        return False  # damaged files (ValueError subclasses): internal, with a traceback
    return isinstance(error, known) or _is_actor_init_error(error)


def _DATA_ERRORS() -> tuple[type[BaseException], ...]:  # noqa: N802 - a constant, built late
    import json

    import pyarrow

    return (pyarrow.ArrowException, json.JSONDecodeError, UnicodeDecodeError)


def _is_actor_init_error(error: BaseException) -> bool:
    cause: Any = getattr(error, "cause", None)
    return cause is not None and _is_user_error(cause)


def _write_error_log(error: BaseException, overrides: list[str]) -> str:
    """The full traceback of an internal error, in runs/<run>/error.log of the command's
    output when it has one (else in the temporary folder); returns where."""
    from engine.dataset import RUNS_DIR, run_name
    from engine.storage import Storage

    text = "".join(traceback.format_exception(error))
    values = _override_values(overrides)
    if "output" in values:
        try:
            options = {
                key.split(".", 1)[1]: value
                for key, value in values.items()
                if key.startswith("storage_options.")
            }
            storage = Storage(values["output"], options)
            relative = f"{RUNS_DIR}/{run_name()}/error.log"
            storage.write_bytes(relative, text.encode())
            return storage.url(relative)
        except Exception:  # noqa: BLE001 - fall back to a local file
            pass
    handle, path = tempfile.mkstemp(prefix=f"saengine-{run_name()}-", suffix=".log")
    with os.fdopen(handle, "w") as file:
        file.write(text)
    return path


def _override_values(overrides: list[str]) -> dict[str, str]:
    """key -> value of plain key=value overrides (without Hydra's + and ~ prefixes)."""
    values = {}
    for override in overrides:
        key, equals, value = override.lstrip("+~").partition("=")
        if equals:
            values[key] = value
    return values


def _fail(message: str, code: int = 2) -> None:
    print(f"saengine: error: {message}", file=sys.stderr)
    raise SystemExit(code)


if __name__ == "__main__":
    main()
