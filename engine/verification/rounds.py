"""One verifier round: train on the train part of people's answers, choose the threshold for
the target precision on the calibrate part, measure precision and recall on the test part
(answers no round trains on), register, and promote when the threshold reaches the target
precision and the verifier takes over more answers on the test part than the promoted one.

For comparison the round also measures the simplest verifier, the generator's own predicted
IoU with its threshold chosen the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from engine.models import resolve_device
from engine.verification.evaluate import accept_metrics, score_examples
from engine.verification.examples import CALIBRATE, PARTS, TEST, TRAIN, read_examples
from engine.verification.registry import VERIFIER_FILE, VerifierRegistry, VerifierRoundRecord
from engine.verification.trainer import (
    VerifierInputs,
    VerifierTrainConfig,
    train_in_process,
    trained_verifier,
)
from stages.semi.threshold import choose_threshold
from stages.verify import VerifierMetadata, load_verifier, save_verifier


@dataclass(frozen=True)
class VerifierRoundSettings:
    """target_precision: of the masks the verifier accepts, on the calibrate part;
    from_parent: start from the promoted verifier (else from scratch on all answers);
    min_answers: the fewest answers each of the train, calibrate and test parts must have."""

    target_precision: float = 0.9
    from_parent: bool = False
    min_answers: int = 10

    def __post_init__(self) -> None:
        if not 0 < self.target_precision <= 1:
            raise ValueError(f"target_precision must be in (0, 1], got {self.target_precision}")
        if self.min_answers < 1:
            raise ValueError(f"min_answers must be >= 1, got {self.min_answers}")


def run_verifier_round(
    *,
    registry_root: str,
    examples_file: str,
    inputs: VerifierInputs,
    train: VerifierTrainConfig,
    settings: VerifierRoundSettings,
    config_yaml: str = "",
) -> VerifierRoundRecord:
    """Run the registry's next verifier round (see the module docstring); returns its
    record. It trains in `<registry>/verifier/work/<round>/`, resuming there if rerun."""
    counts = _check_parts(examples_file, settings.min_answers)
    registry = VerifierRegistry(registry_root)
    parent, name = registry.latest(), registry.next_round_name()
    output = registry.work_dir(name)
    start = str(registry.checkpoint(parent)) if parent and settings.from_parent else None
    train = replace(
        train,
        data=(examples_file,),
        output=str(output),
        init_checkpoint=start or train.init_checkpoint,
    )
    train_in_process(train, inputs)
    verifier = trained_verifier(output, inputs)
    store = inputs.store()
    calibrate, test = read_examples(examples_file, CALIBRATE), read_examples(examples_file, TEST)
    labels = {
        p: np.array([e.label for e in part]) for p, part in ((CALIBRATE, calibrate), (TEST, test))
    }
    scores = {CALIBRATE: score_examples(verifier, calibrate, store)}
    scores[TEST] = score_examples(verifier, test, store)
    choice = choose_threshold(
        scores[CALIBRATE],
        labels[CALIBRATE].astype(bool),
        int(labels[CALIBRATE].sum()),
        target_precision=settings.target_precision,
    )
    metrics = {
        "test": accept_metrics(scores[TEST], labels[TEST], choice.score_thresh),
        "calibrate": accept_metrics(scores[CALIBRATE], labels[CALIBRATE], choice.score_thresh),
        "threshold_reached": choice.achieved,
        "baseline_predicted_iou": _baseline(calibrate, test, settings.target_precision),
    }
    parent_metrics = _parent_metrics(registry, parent, inputs, test, labels[TEST])
    promoted, reason = decide(metrics, parent_metrics, parent, settings.target_precision)
    metadata = VerifierMetadata(
        sam_weights_sha256=inputs.sam_weights_sha256,
        threshold=choice.score_thresh,
        target_precision=settings.target_precision,
        metrics=metrics,
        answers=counts[TRAIN],
        parent=parent,
    )
    save_verifier(output / VERIFIER_FILE, verifier, metadata)
    record = VerifierRoundRecord(
        name=name,
        sha256="",
        parent=parent,
        parent_sha256=registry.record(parent).sha256 if parent else None,
        sam_weights_sha256=inputs.sam_weights_sha256,
        answers=counts,
        threshold=choice.score_thresh,
        target_precision=settings.target_precision,
        metrics=metrics,
        parent_metrics=parent_metrics,
        promoted=promoted,
        reason=reason,
    )
    return registry.register(record, artifact_file=output / VERIFIER_FILE, config_yaml=config_yaml)


def _check_parts(examples_file: str, min_answers: int) -> dict[str, int]:
    """The answers in each part; ValueError when a part has fewer than min_answers."""
    examples = read_examples(examples_file)
    counts = {part: sum(e.part == part for e in examples) for part in PARTS}
    short = [f"{part} {count}" for part, count in counts.items() if count < min_answers]
    if short:
        raise ValueError(
            f"too few answers for a verifier round ({', '.join(short)}; each part needs "
            f"{min_answers}): let people answer more masks first"
        )
    return counts


def _baseline(calibrate: list[Any], test: list[Any], target_precision: float) -> dict[str, Any]:
    """The generator's predicted IoU as the verifier (threshold chosen the same way)."""
    score = [np.array([e.predicted_iou or 0.0 for e in part]) for part in (calibrate, test)]
    label = [np.array([e.label for e in part]) for part in (calibrate, test)]
    choice = choose_threshold(
        score[0], label[0].astype(bool), int(label[0].sum()), target_precision=target_precision
    )
    return {
        "threshold": choice.score_thresh,
        **accept_metrics(score[1], label[1], choice.score_thresh),
    }


def _parent_metrics(
    registry: VerifierRegistry,
    parent: str | None,
    inputs: VerifierInputs,
    test: list[Any],
    labels: np.ndarray,
) -> dict[str, Any] | None:
    """The promoted verifier on this round's test part with its own threshold (None without
    one, or when it reads another SAM's embeddings)."""
    if parent is None:
        return None
    verifier, metadata = load_verifier(registry.checkpoint(parent), device=resolve_device("auto"))
    if metadata.sam_weights_sha256 != inputs.sam_weights_sha256 or metadata.threshold is None:
        return None
    scores = score_examples(verifier, test, inputs.store())
    return accept_metrics(scores, labels, metadata.threshold)


def decide(
    metrics: dict[str, Any],
    parent: dict[str, Any] | None,
    parent_name: str | None,
    target_precision: float,
) -> tuple[bool, str]:
    """Promote when the threshold reaches the target precision and the verifier takes over
    more of the test answers than the promoted one."""
    taken = metrics["test"]["share_taken_over"]
    precision = metrics["test"]["precision"]
    if not metrics["threshold_reached"]:
        return False, f"no threshold reaches precision {target_precision} on the calibrate part"
    if parent is None:
        return True, (
            f"first verifier: takes over {taken:.1%} of the test answers at precision "
            f"{precision:.3f}"
        )
    old = parent["share_taken_over"]
    if taken > old:
        return True, f"takes over {taken:.1%} of the test answers > {parent_name} {old:.1%}"
    return False, f"takes over {taken:.1%} <= {parent_name} {old:.1%}: parent stays latest"
