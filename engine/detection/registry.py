"""Detector rounds in a model registry, beside the SAM rounds (which it leaves alone):

    <registry>/detector/rounds/round_001/detector.pt    the detector file (weights, metadata)
    <registry>/detector/rounds/round_001/round.json     sha256, parent (+ sha256), SAM sha256,
                                                        training and held-out shards, metrics
                                                        (new and parent), threshold, promoted,
                                                        reason
    <registry>/detector/rounds/round_001/config.yaml    the resolved round config
    <registry>/detector/latest                          the promoted round's name
    <registry>/detector/work/round_001/                 the round's training run
    <registry>/detector/embeddings/                     embeddings cached for all rounds

The SAM registry's `Registry` class lists the rounds and reads `latest` here too (same file
names, another root); records and files are the detector's own.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from engine.storage import Storage
from engine.training.registry import LATEST_FILE, ROUND_FILE, ROUNDS_DIR, Registry, RegistryError
from model.checkpoint import sha256_of
from stages.semi.inference import DetectorFileError

DETECTOR_DIR = "detector"
DETECTOR_FILE = "detector.pt"


@dataclass
class DetectorRoundRecord:
    name: str
    sha256: str
    parent: str | None
    parent_sha256: str | None
    sam_weights_sha256: str
    training_shards: list[str]
    eval_shards: list[str]
    metrics: dict[str, Any]
    parent_metrics: dict[str, Any] | None
    score_thresh: float | None
    target_precision: float | None
    promoted: bool
    reason: str


class DetectorRegistry:
    """The detector rounds of the registry at `root`."""

    def __init__(self, root: str | Path) -> None:
        self.registry_root = Path(root)
        self.root = self.registry_root / DETECTOR_DIR
        self._rounds = Registry(self.root)

    def rounds(self) -> list[str]:
        return self._rounds.rounds()

    def next_round_name(self) -> str:
        return self._rounds.next_round_name()

    def latest(self) -> str | None:
        return self._rounds.latest()

    def checkpoint(self, name: str) -> Path:
        return self.root / ROUNDS_DIR / name / DETECTOR_FILE

    def work_dir(self, name: str) -> Path:
        return self.root / "work" / name

    def record(self, name: str) -> DetectorRoundRecord:
        data = json.loads((self.root / ROUNDS_DIR / name / ROUND_FILE).read_text())
        return DetectorRoundRecord(**data)

    def register(
        self, record: DetectorRoundRecord, *, detector_file: Path, config_yaml: str
    ) -> DetectorRoundRecord:
        """Copy the detector in, write round.json, then move `latest` if promoted (each
        file atomically, `latest` last)."""
        folder = self.root / ROUNDS_DIR / record.name
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(detector_file, folder / DETECTOR_FILE)
        record.sha256 = sha256_of(folder / DETECTOR_FILE)
        storage = Storage(str(self.root))
        storage.write_bytes(f"{ROUNDS_DIR}/{record.name}/config.yaml", config_yaml.encode())
        text = json.dumps(asdict(record), indent=2)
        storage.write_bytes(f"{ROUNDS_DIR}/{record.name}/{ROUND_FILE}", text.encode())
        if record.promoted:
            storage.write_bytes(LATEST_FILE, f"{record.name}\n".encode())
        summary = [
            {"round": r.name, "promoted": r.promoted, "reason": r.reason}
            for r in (self.record(name) for name in self.rounds())
        ]
        storage.write_bytes("rounds.json", json.dumps(summary, indent=2).encode())
        return record


def resolve_detector_reference(reference: str) -> str:
    """A detector file from: its path; '<registry>/latest' or '<registry>/<round>' (a
    registry holding detector rounds); '<registry>/detector/latest' or
    '<registry>/detector/<round>'. RegistryError when a registry reference does not
    resolve, DetectorFileError (a user error) when nothing is there."""
    path = Path(reference)
    if path.is_file():
        return reference
    for folder in (path.parent / DETECTOR_DIR, path.parent):
        if folder.name == DETECTOR_DIR and (folder / ROUNDS_DIR).is_dir():
            registry = DetectorRegistry(folder.parent)
            name = registry.latest() if path.name == LATEST_FILE else path.name
            if name is None:
                raise RegistryError(f"registry {folder.parent} has no promoted detector yet")
            if not registry.checkpoint(name).is_file():
                raise RegistryError(f"registry {folder.parent} has no detector round {name!r}")
            return str(registry.checkpoint(name))
    raise DetectorFileError(f"detector not found: {reference}")
