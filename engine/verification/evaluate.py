"""The verifier on held-out answers: its scores, and what accepting the masks that score at
least a threshold gives (precision, recall of the accepted masks, the share of answers it
takes over from people)."""

from __future__ import annotations

from typing import Any

import numpy as np

from engine.embeddings import EmbeddingStore
from engine.verification.examples import VerifyExample
from stages.semi.threshold import precision_recall_at
from stages.verify import MaskVerifier, verifier_scores


def score_examples(
    verifier: MaskVerifier, examples: list[VerifyExample], store: EmbeddingStore
) -> np.ndarray:
    """The verifier's probability of acceptance for each example (N float32), image by
    image (each embedding read once)."""
    scores = np.zeros(len(examples), np.float32)
    by_key: dict[str, list[int]] = {}
    for index, example in enumerate(examples):
        by_key.setdefault(example.key, []).append(index)
    for key, indices in by_key.items():
        embedding = store.read(key)
        inputs = [examples[i].inputs(4 * embedding.shape[-1]) for i in indices]
        frames = np.stack([i[0] for i in inputs])
        scalars = np.stack([i[1] for i in inputs])
        scores[indices] = verifier_scores(verifier, embedding, frames, scalars)
    return scores


def accept_metrics(scores: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, Any]:
    """Accepting the masks scoring >= threshold: answers, good (accepted by people),
    accepted, precision (people's accepts among them; 1 when none), recall (of the good
    ones), share_taken_over (answers people need not give), false_accepts."""
    labels = np.asarray(labels).astype(bool)
    precision, recall, accepted = precision_recall_at(scores, labels, int(labels.sum()), threshold)
    hits = int(labels[np.asarray(scores) >= threshold].sum())
    return {
        "answers": len(labels),
        "good": int(labels.sum()),
        "accepted": accepted,
        "precision": precision,
        "recall": recall,
        "share_taken_over": accepted / len(labels) if len(labels) else 0.0,
        "false_accepts": accepted - hits,
    }
