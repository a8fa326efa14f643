"""Detector rounds in a model registry (`engine.registry`), beside the SAM rounds (which
they leave alone):

    <registry>/detector/rounds/round_001/detector.pt    the detector file (weights, metadata)
    <registry>/detector/rounds/round_001/round.json     sha256, parent (+ sha256), SAM sha256,
                                                        training and held-out shards, metrics
                                                        (new and parent), threshold, promoted,
                                                        reason
    <registry>/detector/rounds/round_001/config.yaml    the resolved round config
    <registry>/detector/rounds.json                     decisions across rounds
    <registry>/detector/latest                          the promoted round's name
    <registry>/detector/work/round_001/                 the round's training run
    <registry>/detector/embeddings/                     embeddings cached for all rounds
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.registry import RoundRegistry
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


class DetectorRegistry(RoundRegistry[DetectorRoundRecord]):
    """The detector rounds of the registry at `root` (in its `detector/` folder)."""

    record_type = DetectorRoundRecord
    artifact = DETECTOR_FILE
    folder = DETECTOR_DIR
    what = "detector"


def resolve_detector_reference(reference: str) -> str:
    """A detector file from: its path; '<registry>/latest' or '<registry>/<round>' (a
    registry holding detector rounds); '<registry>/detector/latest' or
    '<registry>/detector/<round>'. RegistryError when a registry reference does not
    resolve, DetectorFileError (a user error) when nothing is there."""
    found = DetectorRegistry.resolve(reference)
    if found is not None:
        return found
    if Path(reference).is_file():
        return reference
    raise DetectorFileError(f"detector not found: {reference}")
