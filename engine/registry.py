"""A model registry on disk: one folder per round, and `latest` naming the promoted one.

    <registry>/rounds/round_001/model.pth     SAM rounds (`Registry`): official-format weights
    <registry>/rounds/round_001/round.json    the round's record (`RoundRecord`)
    <registry>/rounds/round_001/config.yaml   the resolved round config
    <registry>/rounds.json                    every round's name, promoted, reason
    <registry>/latest                         the promoted round's name (one line)
    <registry>/work/round_001/                the round's training run
    <registry>/metrics.png                    metrics across rounds (`engine.training.rounds`)
    <registry>/detector/...                   detector rounds, the same layout in a folder of
                                              their own (`engine.detection.registry`)

Each kind of round is a `RoundRegistry` subclass naming its record type, its artifact file
and its folder. `<registry>/latest` or `<registry>/<round>` (and for rounds in a folder
`<registry>/<folder>/latest`) can be given wherever that kind's file is expected
(`model.checkpoint=<registry>/latest`).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Generic, Protocol, TypeVar

from engine.files import write_atomic
from model.checkpoint import sha256_of

ROUNDS_DIR = "rounds"
LATEST_FILE = "latest"
ROUND_FILE = "round.json"
CONFIG_FILE = "config.yaml"
SUMMARY_FILE = "rounds.json"
WORK_DIR = "work"


class RegistryError(ValueError):
    """A registry reference that does not resolve."""


class Round(Protocol):
    """What every round record has (a dataclass: round.json is its fields)."""

    __dataclass_fields__: ClassVar[dict[str, Any]]
    name: str
    sha256: str
    promoted: bool
    reason: str


R = TypeVar("R", bound=Round)


class RoundRegistry(Generic[R]):
    """The rounds of one kind in the registry at `root`. Subclasses name the record type,
    the artifact file each round holds, the folder (under the registry root) their rounds
    live in ("": the root itself) and what the artifact is, for messages."""

    record_type: type[R]
    artifact: ClassVar[str]
    folder: ClassVar[str] = ""
    what: ClassVar[str]

    def __init__(self, root: str | Path) -> None:
        self.registry_root = Path(root)
        self.root = self.registry_root / self.folder

    def rounds(self) -> list[str]:
        """The registered rounds' names, in order."""
        folder = self.root / ROUNDS_DIR
        if not folder.is_dir():
            return []
        return sorted(p.name for p in folder.iterdir() if (p / ROUND_FILE).exists())

    def next_round_name(self) -> str:
        return f"round_{len(self.rounds()) + 1:03d}"

    def latest(self) -> str | None:
        """The promoted round's name (None: none promoted yet)."""
        path = self.root / LATEST_FILE
        return path.read_text().strip() if path.exists() else None

    def checkpoint(self, name: str) -> Path:
        """The artifact file of round `name`."""
        return self.root / ROUNDS_DIR / name / self.artifact

    def work_dir(self, name: str) -> Path:
        """Where round `name` trains (and resumes if rerun after a failure)."""
        return self.root / WORK_DIR / name

    def record(self, name: str) -> R:
        data = json.loads((self.root / ROUNDS_DIR / name / ROUND_FILE).read_text())
        return self.record_type(**data)

    def register(self, record: R, *, artifact_file: Path, config_yaml: str) -> R:
        """Copy the artifact in, write config.yaml, round.json and rounds.json, then move
        `latest` if the round is promoted: each file atomically, `latest` last."""
        folder = self.root / ROUNDS_DIR / record.name
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(artifact_file, folder / self.artifact)
        record.sha256 = sha256_of(folder / self.artifact)
        write_atomic(folder / CONFIG_FILE, config_yaml)
        write_atomic(folder / ROUND_FILE, json.dumps(dataclasses.asdict(record), indent=2))
        summary = [
            {"round": r.name, "promoted": r.promoted, "reason": r.reason}
            for r in (self.record(name) for name in self.rounds())
        ]
        write_atomic(self.root / SUMMARY_FILE, json.dumps(summary, indent=2))
        if record.promoted:
            write_atomic(self.root / LATEST_FILE, f"{record.name}\n")
        return record

    @classmethod
    def resolve(cls, reference: str) -> str | None:
        """The artifact file a registry reference names: '<registry>/latest' or
        '<registry>/<round>' (for rounds in a folder, also '<registry>/<folder>/latest' and
        '<registry>/<folder>/<round>'). None when it names no registry of this kind (a
        file, say); RegistryError when it names one without a promoted round, or a round
        without its file."""
        path = Path(reference)
        roots = [path.parent]
        if cls.folder and path.parent.name == cls.folder:
            roots.append(path.parent.parent)
        for root in roots:
            registry = cls(root)
            if not (registry.root / ROUNDS_DIR).is_dir():
                continue
            if path.name == LATEST_FILE:
                name = registry.latest()
                if name is None:
                    raise RegistryError(f"registry {root} has no promoted {cls.what} yet")
                return str(registry.checkpoint(name))
            if (registry.root / ROUNDS_DIR / path.name).is_dir():
                if not registry.checkpoint(path.name).is_file():
                    raise RegistryError(f"registry {root} has no {cls.what} in {path.name!r}")
                return str(registry.checkpoint(path.name))
        return None


@dataclass
class RoundRecord:
    """A SAM round: its weights' sha256, its parent (and the parent's sha256), the model
    name, the training shards, its and its parent's held-out metrics, whether it was
    promoted and why, and its kind: full (every weight trained) or decoder (the prompt
    encoder and mask decoder on stored embeddings; the image encoder is its parent's)."""

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
    kind: str = "full"


class Registry(RoundRegistry[RoundRecord]):
    """The SAM rounds of the registry at `root` (`model.pth` in each round)."""

    record_type = RoundRecord
    artifact = "model.pth"
    what = "model"


def resolve_registry_reference(checkpoint: str) -> str:
    """'<registry>/latest' or '<registry>/<round>' -> that SAM round's model.pth; anything
    else is returned unchanged."""
    return Registry.resolve(checkpoint) or checkpoint
