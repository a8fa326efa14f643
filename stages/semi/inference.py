"""Detector files and inference on stored embeddings.

A detector file (`detector.pt`, loadable with `torch.load(weights_only=True)`) holds
{"format", "config": DetectorConfig fields, "state_dict", "metadata": DetectorMetadata
fields}. A detector only understands the embeddings of the SAM image encoder it was trained
on: its metadata names that encoder by the SHA-256 of its weights
(`engine.models.weights_sha256`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model.checkpoint import load_tagged, save_atomic
from model.transforms import longest_side_shape
from stages.semi.detector import BoxDetector, DetectorConfig
from stages.semi.targets import to_original_frame

FILE_FORMAT = "sa-engine-box-detector/1"


class DetectorFileError(ValueError):
    """A file that is not a detector saved by this project."""


@dataclass
class DetectorMetadata:
    """What a detector was made from and how good it is.

    sam_weights_sha256: the SAM whose embeddings it takes; sam_model: that SAM's model config
    (the `_target_` node, to rebuild it); score_thresh: the confident threshold chosen on
    held-out data for target_precision (None: not chosen); training_shards / eval_shards:
    the files it was trained / evaluated on; metrics: held-out metrics; steps: training steps;
    parent: the detector it was fine-tuned from (a path or registry round), if any."""

    sam_weights_sha256: str
    sam_model: dict[str, Any] = field(default_factory=dict)
    score_thresh: float | None = None
    target_precision: float | None = None
    training_shards: list[str] = field(default_factory=list)
    eval_shards: list[str] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    steps: int = 0
    parent: str | None = None


def save_detector(path: str | Path, detector: BoxDetector, metadata: DetectorMetadata) -> None:
    """Write a detector file atomically (a temporary name, then a rename)."""
    config = asdict(detector.config)
    config["scales"] = list(config["scales"])
    payload = {
        "format": FILE_FORMAT,
        "config": config,
        "state_dict": {k: v.detach().cpu() for k, v in detector.state_dict().items()},
        "metadata": asdict(metadata),
    }
    save_atomic(payload, path)


def load_detector(
    path: str | Path, *, device: str | torch.device = "cpu"
) -> tuple[BoxDetector, DetectorMetadata]:
    """A saved detector (eval mode, its confident threshold set) and its metadata."""
    payload = load_tagged(
        path, file_format=FILE_FORMAT, error=DetectorFileError, what="detector", device=device
    )
    config = dict(payload["config"])
    config["scales"] = tuple(config["scales"])
    detector = BoxDetector(DetectorConfig(**config))
    detector.load_state_dict(payload["state_dict"])
    known = {f.name for f in fields(DetectorMetadata)}
    metadata = DetectorMetadata(**{k: v for k, v in payload["metadata"].items() if k in known})
    detector.confident_thresh = metadata.score_thresh
    return detector.to(device).eval(), metadata


def _threshold(detector: BoxDetector, score_thresh: float | None) -> float:
    if score_thresh is not None:
        return score_thresh
    if detector.confident_thresh is None:
        raise ValueError("this detector has no confident threshold; give score_thresh")
    return detector.confident_thresh


@torch.inference_mode()
def detect_batch(
    detector: BoxDetector,
    embeddings: np.ndarray | torch.Tensor,
    *,
    original_sizes: list[tuple[int, int]],
    score_thresh: float | None = None,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Boxes of B images from their embeddings (B x C x h x w, any float dtype, as stored):
    per image (N x 4 float32 XYXY in the stored image's pixels, N float32 scores), best
    first. score_thresh None: the detector's confident threshold; 0: every detection above
    its score floor."""
    thresh = _threshold(detector, score_thresh)
    parameter = next(detector.parameters())
    batch = torch.as_tensor(embeddings).to(parameter.device, parameter.dtype)
    size = detector.config.image_size
    input_sizes = [longest_side_shape(h, w, size) for h, w in original_sizes]
    found = detector.predict(batch, input_sizes)
    results = []
    for detections, original in zip(found, original_sizes):
        keep = detections["scores"] >= thresh
        boxes = detections["boxes"][keep].float().cpu().numpy()
        scores = detections["scores"][keep].float().cpu().numpy()
        results.append((to_original_frame(boxes, original, size), scores.astype(np.float32)))
    return results


def detect(
    detector: BoxDetector,
    embedding: np.ndarray | torch.Tensor,
    *,
    original_size: tuple[int, int],
    score_thresh: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Boxes of one image from its embedding (C x h x w, e.g. `EmbeddingStore.read(key)`):
    (N x 4 float32 XYXY in original-image pixels, N float32 scores), best first.
    score_thresh None: the detector's confident threshold."""
    batch = torch.as_tensor(embedding)[None]
    found = detect_batch(detector, batch, original_sizes=[original_size], score_thresh=score_thresh)
    return found[0]
