"""A model registry on disk: one folder per round, and `latest` naming the promoted one.

    <registry>/rounds/round_001/model.pth     official-format state_dict
    <registry>/rounds/round_001/round.json    sha256, parent, model name, training shards,
                                              metrics (new and parent), promoted, reason
    <registry>/rounds/round_001/config.yaml   the resolved round config
    <registry>/latest                         the promoted round's name (one line)
    <registry>/metrics.png                    metrics across rounds

`<registry>/latest` can be given wherever a checkpoint path is expected
(`model.checkpoint=<registry>/latest`).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from model.checkpoint import sha256_of

ROUNDS_DIR = "rounds"
LATEST_FILE = "latest"
ROUND_FILE = "round.json"


class RegistryError(ValueError):
    """A registry reference that does not resolve."""


@dataclass
class RoundRecord:
    name: str
    model: str
    sha256: str
    parent: str | None
    parent_sha256: str | None
    training_shards: list[str]
    metrics: dict[str, Any]
    parent_metrics: dict[str, Any] | None
    promoted: bool
    reason: str


class Registry:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def rounds(self) -> list[str]:
        folder = self.root / ROUNDS_DIR
        if not folder.is_dir():
            return []
        return sorted(p.name for p in folder.iterdir() if (p / ROUND_FILE).exists())

    def next_round_name(self) -> str:
        return f"round_{len(self.rounds()) + 1:03d}"

    def latest(self) -> str | None:
        path = self.root / LATEST_FILE
        return path.read_text().strip() if path.exists() else None

    def checkpoint(self, name: str) -> Path:
        return self.root / ROUNDS_DIR / name / "model.pth"

    def record(self, name: str) -> RoundRecord:
        data = json.loads((self.root / ROUNDS_DIR / name / ROUND_FILE).read_text())
        return RoundRecord(**data)

    def register(self, record: RoundRecord, *, model_file: Path, config_yaml: str) -> RoundRecord:
        """Copy the model in, write round.json, and move `latest` if promoted (last, atomically)."""
        folder = self.root / ROUNDS_DIR / record.name
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(model_file, folder / "model.pth")
        record.sha256 = sha256_of(folder / "model.pth")
        (folder / "config.yaml").write_text(config_yaml)
        _write_atomic(folder / ROUND_FILE, json.dumps(record.__dict__, indent=2))
        if record.promoted:
            _write_atomic(self.root / LATEST_FILE, record.name + "\n")
        return record


def resolve_registry_reference(checkpoint: str) -> str:
    """'<registry>/latest' or '<registry>/<round>' -> that round's model.pth; anything else
    is returned unchanged."""
    path = Path(checkpoint)
    if path.name == LATEST_FILE and (path.parent / ROUNDS_DIR).is_dir():
        name = Registry(path.parent).latest()
        if name is None:
            raise RegistryError(f"registry {path.parent} has no promoted model yet")
        return str(Registry(path.parent).checkpoint(name))
    if path.parent.name == ROUNDS_DIR or (path.parent / ROUNDS_DIR / path.name).is_dir():
        candidate = path.parent / ROUNDS_DIR / path.name / "model.pth"
        if candidate.exists():
            return str(candidate)
    return checkpoint


def _write_atomic(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.partial")
    with open(temporary, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
