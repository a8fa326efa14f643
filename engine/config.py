"""Configuration: Hydra composition of the `configs/` package, the settings dataclasses to and
from config nodes, and the command record every `saengine` command is registered with.

Every parameter has one source of truth: a settings dataclass's defaults become a config
node (`dataclass_node`) that the YAML files compose through their defaults lists, and a
composed node becomes the dataclass again (`from_config`), which validates it. The CLI
(`engine.cli`) registers each capability's nodes, then composes a command's config.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from typing import Any, TypeVar

from omegaconf import DictConfig, OmegaConf

from engine.errors import UsageError, first_line

T = TypeVar("T")


@dataclass(frozen=True)
class Command:
    """One `saengine` command: `name` ("generate", or "campaign create" inside a group),
    a one-line `summary`, its config file (`configs/<config>.yaml`), the function that runs
    it (`module:function`, imported when the command runs; it takes the composed config and,
    with `raw_overrides`, the overrides as given) and the option a first bare argument fills
    (`positional`: `saengine inspect out/` means `path=out/`)."""

    name: str
    summary: str
    config: str
    run: str
    positional: str | None = None
    raw_overrides: bool = False


def plain(node: Any) -> Any:
    """A config node as plain Python (dicts, lists, values), resolved; anything else as is."""
    if OmegaConf.is_config(node):
        return OmegaConf.to_container(node, resolve=True)
    return node


def compose_config(config_name: str, overrides: list[str], *, complete: bool = True) -> DictConfig:
    """The composed config `configs/<config_name>.yaml` with Hydra overrides. complete:
    every required (???) value must be given. Bad overrides are a UsageError (one line).
    The nodes the YAML files compose must be registered first (`engine.cli` does)."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    GlobalHydra.instance().clear()
    try:
        with initialize_config_module(config_module="configs", version_base=None):
            cfg = compose(config_name=config_name, overrides=overrides)
        if complete:
            missing = sorted(OmegaConf.missing_keys(cfg))
            if missing:
                hint = " ".join(f"{key}=..." for key in missing)
                raise UsageError(f"missing required option(s): {', '.join(missing)} (give {hint})")
            OmegaConf.to_container(cfg, resolve=True)
    except (HydraException, OmegaConfBaseException) as error:
        raise UsageError(first_line(error)) from error
    return cfg


def dataclass_node(
    cls: type, *, skip: tuple[str, ...] = (), required: tuple[str, ...] = ()
) -> dict[str, Any]:
    """A settings dataclass's defaults as a config node: tuples as lists, nested settings
    as their own nodes; `skip` left out, `required` as Hydra's ??? (no default)."""
    node: dict[str, Any] = {name: "???" for name in required}
    for field in dataclasses.fields(cls):
        if field.name in skip or field.name in required:
            continue
        if field.default is not dataclasses.MISSING:
            value = field.default
        elif field.default_factory is not dataclasses.MISSING:
            value = field.default_factory()
        else:
            value = "???"
        node[field.name] = _as_node(value)
    return node


def _as_node(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _as_node(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple | list):
        return [_as_node(item) for item in value]
    if isinstance(value, dict):
        return {key: _as_node(item) for key, item in value.items()}
    return value


def from_config(cls: type[T], node: Any, *, ignore: tuple[str, ...] = (), **given: Any) -> T:
    """The settings dataclass `cls` from a config node (or a plain dict): lists become the
    tuples the fields declare, nested settings their dataclasses; `given` values win;
    keys in `ignore` are dropped; any other unknown key is a UsageError naming it."""
    values = {**(plain(node) or {}), **given}
    hints = typing.get_type_hints(cls)
    names = {field.name for field in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - names - set(ignore))
    if unknown:
        raise UsageError(f"unknown setting(s) {', '.join(unknown)} for {cls.__name__}")
    converted = {
        name: _convert(hints[name], value) for name, value in values.items() if name in names
    }
    return cls(**converted)


def _convert(hint: Any, value: Any) -> Any:
    """A plain value as the type a field declares (tuples, nested dataclasses)."""
    if value is None:
        return None
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        return _convert(options[0], value) if len(options) == 1 else value
    if dataclasses.is_dataclass(hint) and isinstance(value, dict):
        return from_config(hint, value)  # type: ignore[arg-type]
    if origin is tuple and isinstance(value, list | tuple):
        args = typing.get_args(hint)
        item = args[0] if args else Any
        return tuple(_convert(item, entry) for entry in value)
    return value
