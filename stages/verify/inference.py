"""Verifier files and scores on stored embeddings.

A verifier file (`verifier.pt`, loadable with `torch.load(weights_only=True)`) holds
{"format", "config": VerifierConfig fields, "state_dict", "metadata": VerifierMetadata
fields}. Like the stage-2 detector, a verifier only understands the embeddings of the SAM
image encoder it was trained on, which its metadata names.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model.checkpoint import load_tagged, save_atomic
from stages.verify.network import MaskVerifier, VerifierConfig

FILE_FORMAT = "sa-engine-mask-verifier/1"


class VerifierFileError(ValueError):
    """A file that is not a verifier saved by this project."""


@dataclass
class VerifierMetadata:
    """sam_weights_sha256: the SAM whose embeddings it reads; threshold: masks scoring at
    least this are accepted without a person (None: not chosen), chosen for
    target_precision; metrics: its held-out precision, recall, ...; answers: how many answers
    it was trained on; parent: the verifier it was retrained after, if any."""

    sam_weights_sha256: str
    threshold: float | None = None
    target_precision: float | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    answers: int = 0
    parent: str | None = None


def save_verifier(path: str | Path, verifier: MaskVerifier, metadata: VerifierMetadata) -> None:
    """Write a verifier file atomically (a temporary name, then a rename)."""
    payload = {
        "format": FILE_FORMAT,
        "config": asdict(verifier.config),
        "state_dict": {k: v.detach().cpu() for k, v in verifier.state_dict().items()},
        "metadata": asdict(metadata),
    }
    save_atomic(payload, path)


def load_verifier(
    path: str | Path, *, device: str | torch.device = "cpu"
) -> tuple[MaskVerifier, VerifierMetadata]:
    """A saved verifier (eval mode) and its metadata."""
    payload = load_tagged(
        path, file_format=FILE_FORMAT, error=VerifierFileError, what="verifier", device=device
    )
    verifier = MaskVerifier(VerifierConfig(**payload["config"]))
    verifier.load_state_dict(payload["state_dict"])
    known = {f.name for f in fields(VerifierMetadata)}
    metadata = VerifierMetadata(**{k: v for k, v in payload["metadata"].items() if k in known})
    return verifier.to(device).eval(), metadata


@torch.inference_mode()
def verifier_scores(
    verifier: MaskVerifier, embedding: np.ndarray, frames: np.ndarray, scalars: np.ndarray
) -> np.ndarray:
    """The probability that a person accepts each of N masks of one image: embedding E x h x
    w (as stored), frames N x 4h x 4w (`features.mask_frame`), scalars N x S -> N float32."""
    if len(frames) == 0:
        return np.zeros(0, np.float32)
    parameter = next(verifier.parameters())

    def to(array: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(array).to(parameter.device, parameter.dtype)

    batch = to(embedding)[None].expand(len(frames), -1, -1, -1)
    logits = verifier(batch, to(frames)[:, None], to(scalars))
    return torch.sigmoid(logits).float().cpu().numpy()
