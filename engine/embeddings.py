"""Image embeddings kept on storage, keyed by image and model: what campaigns precompute for
the annotators' browsers and what the stage-2 detector trains and runs on.

    <root>/embeddings/<model_sha256[:16]>/<key>.npy     C x h x w float16 (NumPy format)

The model is named by the SHA-256 of its weights (`engine.models.weights_sha256`), so
embeddings of another model version never mix. The unpadded model-input size that the
decoder needs follows from the stored image size (`model.transforms.longest_side_shape`).
Files are written atomically (`Storage.write_bytes`), so a file that exists is complete.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import torch

from engine.storage import Storage
from model import SamPredictor

EMBEDDINGS_DIR = "embeddings"
MODEL_DIR_CHARS = 16


@dataclass(frozen=True)
class Embedding:
    """One image's embedding. array: C x h x w float16; input_size: the unpadded (h, w) of
    the model input; original_size: the stored image's (h, w)."""

    array: np.ndarray
    input_size: tuple[int, int]
    original_size: tuple[int, int]


def embed_image(predictor: SamPredictor, rgb: np.ndarray) -> Embedding:
    """The image encoder on one H x W x 3 uint8 image (the predictor keeps it set)."""
    with torch.inference_mode():
        predictor.set_image(rgb)
    features = predictor.get_image_embedding()[0]
    assert predictor.input_size is not None and predictor.original_size is not None
    return Embedding(
        array=features.to(torch.float16).cpu().numpy(),
        input_size=predictor.input_size,
        original_size=predictor.original_size,
    )


def to_npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array.astype(np.float16)), allow_pickle=False)
    return buffer.getvalue()


def from_npy_bytes(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


class EmbeddingStore:
    """The embeddings of one model under a storage root (local folder or fsspec URL)."""

    def __init__(self, storage: Storage, model_sha256: str) -> None:
        if len(model_sha256) < MODEL_DIR_CHARS:
            raise ValueError(f"model_sha256 must be a SHA-256 hex digest, got {model_sha256!r}")
        self.storage = storage
        self.model_sha256 = model_sha256
        self.folder = f"{EMBEDDINGS_DIR}/{model_sha256[:MODEL_DIR_CHARS]}"

    def path(self, key: str) -> str:
        if not key or "/" in key or key.startswith("."):
            raise ValueError(f"bad image key {key!r}")
        return f"{self.folder}/{key}.npy"

    def exists(self, key: str) -> bool:
        return self.storage.exists(self.path(key))

    def write(self, key: str, array: np.ndarray) -> None:
        self.storage.write_bytes(self.path(key), to_npy_bytes(array))

    def read_bytes(self, key: str) -> bytes:
        return self.storage.read_bytes(self.path(key))

    def read(self, key: str) -> np.ndarray:
        """C x h x w float16."""
        return from_npy_bytes(self.read_bytes(key))
