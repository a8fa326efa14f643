"""`saengine`: the project's one command. Every command takes Hydra overrides (key=value);
`saengine <command> --help` lists its options with their defaults.

    saengine generate input=<dir|glob|list|tar> output=<dir> [model=vit_h model.checkpoint=..]
    saengine inspect <dataset> [pictures=true]
    saengine export <dataset> format=<coco|yolo-seg|cvat|labelstudio> output=<path>
    saengine synth output=<dir> [num_images=256 split=train]
    saengine train data=[<dataset>, ...] output=<dir>
    saengine evaluate checkpoint=<file> data=[<dataset>, ...]
    saengine round registry=<dir> data=[<dataset>, ...] eval_data=[...]
    saengine export-onnx model=<name> output=<file.onnx> [quantize=true]
    saengine campaign create <dir> input=<images> [model=bundled]
    saengine campaign status <dir>
    saengine campaign add-annotator <dir> name=<name> [role=admin]
    saengine campaign embed <dir> [follow=true]
    saengine campaign serve <dir> [port=8000]
    saengine campaign simulate <dir> truth=<dataset> [annotators=4]
    saengine campaign set-stage <dir> stage=semi detector=<file>
    saengine campaign prefill <dir>
    saengine campaign round <dir>
    saengine campaign export <dir> output=<dir>
    saengine campaign stats <dir> [json=true]
    saengine audit create <dataset> output=<dir> [sample=500 seed=0 model=bundled]
    saengine audit simulate <dir> truth=<dataset> [annotators=2]
    saengine audit report <dir> [json=true]
    saengine verify create <dataset> output=<dir> [sample=500 model=bundled]
    saengine verify simulate <dir> truth=<dataset>
    saengine verify round <dir> [round.target_precision=0.9]
    saengine verify report <dir> [audit=<dir>] [json=true]
    saengine detector train data=[...] eval_data=[...] output=<dir>
    saengine detector evaluate checkpoint=<file> data=[...]
    saengine detector round registry=<dir> data=[...] eval_data=[...]

Commands are registered in `COMMANDS` (one `engine.config.Command` each: name, summary,
config file, the function that runs it); groups of sub-commands in `GROUPS`.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import tempfile
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from importlib import resources
from typing import Any

from omegaconf import DictConfig, OmegaConf

from engine.config import Command, dataclass_node
from engine.config import compose_config as _compose
from engine.errors import UsageError, first_line


@dataclass(frozen=True)
class Group:
    """Commands named `<group> <sub-command>`: a one-line summary, a longer description for
    the group's help; `setup` (`module:function`) runs before any of them."""

    summary: str
    description: str
    setup: str | None = None


GROUPS: dict[str, Group] = {
    "campaign": Group(
        "annotation campaigns: create, serve, embed, simulate, round, export, stats",
        "Annotation campaigns (stage 1 assisted-manual, stage 2 semi-automatic): a queue of\n"
        "images, embeddings computed ahead on Ray, the decoder in the annotators' browsers,\n"
        "masks with their prompts and timings, retraining rounds triggered by collected masks.",
        setup="engine.campaigns.serve:end_with_parent",
    ),
    "audit": Group(
        "the mask-quality audit of a dataset: create, simulate, report",
        "The paper's mask-quality audit: reviewers keep, correct or reject every mask of a\n"
        "random sample of a dataset's images and add what is missing; the report gives the\n"
        "shares with IoU > 0.9 and > 0.75 (95% intervals) per predicted IoU and stability.",
    ),
    "verify": Group(
        "verification queues and the learned verifier: create, simulate, round, report",
        "SAM 3's verification queue: one key per proposed mask (accept or reject), and a\n"
        "small verifier trained on the answers that accepts what it is sure of.",
    ),
    "detector": Group(
        "stage 2's box detector on SAM embeddings: train, evaluate, round",
        "Stage 2's class-agnostic box detector on SAM embeddings.",
    ),
}

COMMANDS: tuple[Command, ...] = (
    Command(
        "generate",
        "run the automatic mask generator over images into an SA-1B dataset (on Ray)",
        "generate",
        "engine.generation.job:run_generate",
        raw_overrides=True,
    ),
    Command(
        "inspect",
        "verify a dataset and print its statistics (pictures=true for plots)",
        "inspect",
        "engine.dataset.inspect:run_inspect",
        positional="path",
    ),
    Command(
        "export",
        "an SA-1B dataset as COCO, YOLO-seg, CVAT or Label Studio labels",
        "export",
        "engine.dataset.formats.command:run_export",
        positional="dataset",
    ),
    Command(
        "synth",
        "write synthetic scenes with exact masks as an SA-1B dataset",
        "synth",
        "engine.training.synthetic:run_synth",
    ),
    Command(
        "train",
        "train SAM on SA-1B-format data with the paper's interactive recipe",
        "train",
        "engine.training.commands:run_train",
    ),
    Command(
        "evaluate",
        "a model's held-out metrics (1-point mIoU, clicks, generator recall)",
        "evaluate",
        "engine.training.commands:run_evaluate",
    ),
    Command(
        "round",
        "one retraining round: train, evaluate, register, promote if better",
        "round",
        "engine.training.commands:run_round_command",
    ),
    Command(
        "export-onnx",
        "the browser decoder (prompts -> masks) as ONNX, optionally quantized",
        "export_onnx",
        "engine.models:run_export_onnx",
    ),
    Command(
        "campaign create",
        "plan the images of input=... and publish the first model (prints the admin token)",
        "campaign",
        "engine.campaigns.commands:create",
        positional="dir",
    ),
    Command(
        "campaign status",
        "images by state, embeddings, masks, annotators, model versions, rounds",
        "campaign_status",
        "engine.campaigns.commands:status",
        positional="dir",
    ),
    Command(
        "campaign add-annotator",
        "name=<name> [role=admin]: a new annotator's token",
        "campaign_add_annotator",
        "engine.campaigns.commands:add_annotator",
        positional="dir",
    ),
    Command(
        "campaign embed",
        "compute embeddings with the current model on Ray (follow=true: keep ahead)",
        "campaign_embed",
        "engine.campaigns.commands:embed",
        positional="dir",
    ),
    Command(
        "campaign serve",
        "the API and annotation page (host=, port=), with embed job and rounds beside it",
        "campaign_serve",
        "engine.campaigns.commands:serve",
        positional="dir",
    ),
    Command(
        "campaign simulate",
        "truth=<dataset> annotators=N: scripted annotators over the HTTP API",
        "campaign_simulate",
        "engine.campaigns.commands:simulate",
        positional="dir",
    ),
    Command(
        "campaign set-stage",
        "stage=semi detector=<file>: images not yet annotated move to stage 2",
        "campaign_set_stage",
        "engine.campaigns.commands:set_stage",
        positional="dir",
    ),
    Command(
        "campaign prefill",
        "stage 2: the detector's boxes -> SAM masks, stored as prefilled (on Ray)",
        "campaign_prefill",
        "engine.campaigns.commands:prefill",
        positional="dir",
    ),
    Command(
        "campaign round",
        "one retraining round now (export, train, promote, switch model)",
        "campaign_round",
        "engine.campaigns.commands:round_now",
        positional="dir",
    ),
    Command(
        "campaign export",
        "output=<dir>: the accepted masks as an SA-1B dataset",
        "campaign_export",
        "engine.campaigns.commands:export",
        positional="dir",
    ),
    Command(
        "campaign stats",
        "masks per image, time and clicks per mask, skipped objects, per round",
        "campaign_stats",
        "engine.campaigns.commands:stats",
        positional="dir",
    ),
    Command(
        "audit create",
        "<dataset> output=<dir> sample=N: a review campaign of a random sample of its images",
        "audit_create",
        "engine.campaigns.commands:review_create",
        positional="dataset",
    ),
    Command(
        "audit simulate",
        "truth=<dataset>: scripted reviewers keep, correct or reject each mask over HTTP",
        "audit_simulate",
        "engine.campaigns.commands:review_simulate",
        positional="dir",
    ),
    Command(
        "audit report",
        "shares with IoU > 0.9 / 0.75 with 95% intervals, per predicted IoU and stability",
        "audit_report",
        "engine.campaigns.commands:audit_report",
        positional="dir",
    ),
    Command(
        "verify create",
        "<dataset> output=<dir>: a verification queue, one key per proposed mask",
        "verify_create",
        "engine.campaigns.commands:review_create",
        positional="dataset",
    ),
    Command(
        "verify simulate",
        "truth=<dataset>: scripted verifiers accept or reject each mask over HTTP",
        "verify_simulate",
        "engine.campaigns.commands:review_simulate",
        positional="dir",
    ),
    Command(
        "verify round",
        "train the verifier on the answers, measure it on held-out ones, let it accept",
        "verify_round",
        "engine.campaigns.commands:verify_round",
        positional="dir",
    ),
    Command(
        "verify report",
        "answers, masks verified per minute, the verifier's held-out precision and recall",
        "verify_report",
        "engine.campaigns.commands:verify_report",
        positional="dir",
    ),
    Command(
        "detector train",
        "train a detector on SA-1B-format data, evaluate it, choose its threshold",
        "detector_train",
        "engine.detection.commands:run_train",
    ),
    Command(
        "detector evaluate",
        "a detector's held-out metrics and precision/recall at its threshold",
        "detector_evaluate",
        "engine.detection.commands:run_evaluate",
    ),
    Command(
        "detector round",
        "the registry's next detector round: train, evaluate, register, promote",
        "detector_round",
        "engine.detection.commands:run_round",
    ),
)

EXAMPLES = """examples:
  saengine generate input=photos/ output=out/ model=vit_h model.checkpoint=sam_vit_h_4b8939.pth
  saengine generate input=s3://bucket/images output=s3://bucket/dataset generator=sa1b
  saengine inspect out/ pictures=true
  saengine campaign create camp/ input=photos/ model=bundled
"""


def register_config_nodes() -> None:
    """The config nodes built from Python defaults (one source of truth for each setting):
    the generator presets, training, evaluation, annotator and prefill settings, the
    detector's training settings and architecture, the reviewer's policy, the verifier's
    training, architecture and round settings."""
    from hydra.core.config_store import ConfigStore

    from engine.detection.commands import ARCHITECTURE_FROM_SAM
    from engine.detection.trainer import DetectorTrainConfig
    from engine.training.rounds import EvalSettings
    from engine.training.trainer import TrainConfig
    from engine.verification.rounds import VerifierRoundSettings
    from engine.verification.trainer import VerifierTrainConfig
    from stages.assisted.annotator import AnnotatorPolicy
    from stages.assisted.reviewer import ReviewPolicy
    from stages.automatic import PRESETS
    from stages.semi.detector import DetectorConfig
    from stages.semi.prefill import PrefillFilter
    from stages.verify import VerifierConfig

    store = ConfigStore.instance()
    for name, preset in PRESETS.items():
        node = {key: value for key, value in asdict(preset).items() if key != "point_grids"}
        if name in PRESET_IMAGES:  # the preset also sets how images are stored
            node = {"generator": node, "images": PRESET_IMAGES[name]}
            store.store(group="generator", name=name, node=node, package="_global_")
        else:
            store.store(group="generator", name=name, node=node)
    train = dataclass_node(TrainConfig, required=("data", "output"))
    store.store(name="train_settings", node=train)
    store.store(name="annotator_policy", node=dataclass_node(AnnotatorPolicy))
    store.store(name="eval_settings", node=dataclass_node(EvalSettings))
    store.store(name="prefill_filter", node=dataclass_node(PrefillFilter))
    detector_train = dataclass_node(DetectorTrainConfig, required=("data", "output"))
    store.store(name="detector_train_settings", node=detector_train)
    architecture = dataclass_node(DetectorConfig, skip=ARCHITECTURE_FROM_SAM)
    store.store(name="detector_architecture", node=architecture)
    store.store(name="reviewer_policy", node=dataclass_node(ReviewPolicy))
    verifier_train = dataclass_node(VerifierTrainConfig, required=("data", "output"))
    store.store(name="verifier_train_settings", node=verifier_train)
    store.store(name="verifier_architecture", node=dataclass_node(VerifierConfig))
    store.store(name="verifier_round_settings", node=dataclass_node(VerifierRoundSettings))


# Image settings that come with a generator preset: SA-1B's released images have faces and
# licence plates blurred.
PRESET_IMAGES: dict[str, dict[str, Any]] = {"sa1b": {"privacy": "blur"}}


def compose_config(config_name: str, overrides: list[str], *, complete: bool = True) -> DictConfig:
    """The composed config of a command, as `saengine <command> overrides...` sees it."""
    register_config_nodes()
    return _compose(config_name, overrides, complete=complete)


def usage() -> str:
    width = max(len(c.name) for c in COMMANDS if " " not in c.name)
    lines = [
        "usage: saengine <command> [key=value ...]",
        "",
        "SA Data Engine: SAM mask generation jobs that write SA-1B-format datasets, annotation",
        "campaigns and retraining rounds.",
        "",
        "commands:",
    ]
    lines += [f"  {c.name:<{width}}  {c.summary}" for c in COMMANDS if " " not in c.name]
    lines += [f"  {name:<{width}}  {group.summary}" for name, group in GROUPS.items()]
    lines += ["", "`saengine <command> --help` lists a command's options with their defaults.", ""]
    return "\n".join(lines) + EXAMPLES


def group_usage(name: str) -> str:
    group = GROUPS[name]
    members = [c for c in COMMANDS if c.name.startswith(name + " ")]
    width = max(len(c.name) for c in members) - len(name) - 1
    lines = [
        f"usage: saengine {name} <command> [key=value ...]",
        "",
        group.description,
        "",
        "commands:",
    ]
    lines += [f"  {c.name[len(name) + 1 :]:<{width}}  {c.summary}" for c in members]
    lines += ["", f"`saengine {name} <command> --help` lists a command's options.", ""]
    return "\n".join(lines)


def command_help(command: Command) -> str:
    """The command's config file (its comments explain each option), the choices of its
    config groups, and every option with its default as the composed config has it."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    register_config_nodes()
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="configs", version_base=None):
        cfg = compose(config_name=command.config, overrides=[], return_hydra_config=True)
        loader = GlobalHydra.instance().config_loader()
        choices = {
            group: loader.get_group_options(group)
            for group in cfg.hydra.runtime.choices
            if not group.startswith("hydra")
        }
    values = OmegaConf.to_container(cfg, resolve=False)
    assert isinstance(values, dict)
    values.pop("hydra")
    positional = f" <{command.positional}>" if command.positional else ""
    text = resources.files("configs").joinpath(f"{command.config}.yaml").read_text()
    groups = "".join(f"{group}=<{'|'.join(names)}>\n" for group, names in choices.items())
    flat = _flatten(values)
    options = "".join(f"  {key}={_shown(value)}\n" for key, value in flat)
    return (
        f"usage: saengine {command.name}{positional} key=value ...\n\n{command.summary}\n\n"
        f"{text}\n{groups}\noptions (defaults):\n{options}"
    )


def _shown(value: Any) -> str:
    """A default as it is written on the command line (null, true, [a, b])."""
    return value if isinstance(value, str) else json.dumps(value).replace('"', "")


def _flatten(node: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """(dotted key, value) of every leaf of a plain config (a non-empty dict is a branch)."""
    if not isinstance(node, dict) or not node:
        return [(prefix.rstrip("."), node)]
    return [item for key, value in node.items() for item in _flatten(value, f"{prefix}{key}.")]


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


def find_command(args: list[str]) -> tuple[Command | None, list[str]]:
    """The command the arguments name and the arguments after its name; (None, args) for a
    group's own help. SystemExit(2) with a one-line message for an unknown name."""
    by_name = {command.name: command for command in COMMANDS}
    name = args[0]
    if name in GROUPS:
        if len(args) == 1 or args[1] in ("-h", "--help", "help"):
            return None, args
        sub = f"{name} {args[1]}"
        if sub not in by_name:
            known = ", ".join(c.name.split(" ", 1)[1] for c in COMMANDS if c.name.startswith(name))
            _fail(f"unknown {name} command {args[1]!r}; commands: {known}")
        return by_name[sub], args[2:]
    if name not in by_name:
        known = ", ".join([*(c.name for c in COMMANDS if " " not in c.name), *GROUPS])
        _fail(f"unknown command {name!r}; commands: {known}")
    return by_name[name], args[1:]


def _main(args: list[str]) -> None:
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage())
        return
    command, rest = find_command(args)
    if command is None:
        print(group_usage(args[0]))
        return
    if any(arg in ("-h", "--help") for arg in rest):
        print(command_help(command))
        return
    if command.positional and rest and "=" not in rest[0]:
        rest = [f"{command.positional}={rest[0]}", *rest[1:]]
    try:
        _run(command, rest)
    except KeyboardInterrupt:
        _fail("interrupted; committed shards are kept, rerun the same command to resume", 130)
    except Exception as error:  # noqa: BLE001 - every error ends in a one-line message
        if _is_user_error(error):
            _fail(first_line(error))
        log = _write_error_log(error, rest)
        _fail(f"internal error: {first_line(error)} (full traceback in {log})", 1)


def _run(command: Command, overrides: list[str]) -> None:
    group = GROUPS.get(command.name.split(" ")[0])
    if group is not None and group.setup:
        _function(group.setup)()
    cfg = compose_config(command.config, overrides)
    run = _function(command.run)
    result = run(cfg, overrides) if command.raw_overrides else run(cfg)
    if result is False:  # the command found problems and said so
        raise SystemExit(1)


def _function(reference: str) -> Callable[..., Any]:
    module, _, name = reference.partition(":")
    function: Callable[..., Any] = getattr(importlib.import_module(module), name)
    return function


def _is_user_error(error: BaseException) -> bool:
    from engine.campaigns.campaign import CampaignError
    from engine.dataset.reader import DatasetError
    from engine.generation.job import JobError
    from engine.generation.lock import LockError
    from engine.images import ImageDecodeError
    from engine.registry import RegistryError
    from engine.sources import InputError
    from model.checkpoint import CheckpointError

    known: tuple[type[BaseException], ...] = (
        UsageError,
        JobError,
        CampaignError,
        InputError,
        CheckpointError,
        ImageDecodeError,
        DatasetError,
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
