"""Verifier rounds in a model registry (`engine.registry`), beside the SAM and detector
rounds (which they leave alone):

    <registry>/verifier/rounds/round_001/verifier.pt   the verifier file (weights, metadata)
    <registry>/verifier/rounds/round_001/round.json    sha256, parent, SAM sha256, answers
                                                       per part, threshold, held-out metrics
                                                       (new and parent), promoted, reason
    <registry>/verifier/rounds.json                    decisions across rounds
    <registry>/verifier/latest                         the promoted round's name
    <registry>/verifier/work/round_001/                the round's training run and answers
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from engine.registry import RoundRegistry

VERIFIER_DIR = "verifier"
VERIFIER_FILE = "verifier.pt"


@dataclass
class VerifierRoundRecord:
    name: str
    sha256: str
    parent: str | None
    parent_sha256: str | None
    sam_weights_sha256: str
    answers: dict[str, int]
    threshold: float
    target_precision: float
    metrics: dict[str, Any]
    parent_metrics: dict[str, Any] | None
    promoted: bool
    reason: str


class VerifierRegistry(RoundRegistry[VerifierRoundRecord]):
    """The verifier rounds of the registry at `root` (in its `verifier/` folder)."""

    record_type = VerifierRoundRecord
    artifact = VERIFIER_FILE
    folder = VERIFIER_DIR
    what = "verifier"
