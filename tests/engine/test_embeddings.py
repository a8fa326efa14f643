"""Embeddings on storage: fp16 NumPy files keyed by image and model, and the model worker's
encoder-only path that campaigns use."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from engine.embeddings import EmbeddingStore
from engine.images import ImageOptions, decode_image
from engine.models import weights_sha256
from engine.storage import Storage
from engine.workers.decode import Failure
from engine.workers.model import ModelWorker
from model import SamPredictor

DEMO_MODEL = {
    "_target_": "engine.models.load_model",
    "name": "vit_tiny",
    "checkpoint": None,
    "random_seed": 0,
    "sharpen": True,
}


def test_store_round_trip_is_fp16_and_keyed_by_model(tmp_path: Path) -> None:
    storage = Storage(str(tmp_path))
    first, second = EmbeddingStore(storage, "a" * 64), EmbeddingStore(storage, "b" * 64)
    array = np.random.default_rng(0).normal(size=(256, 4, 5)).astype(np.float32)
    first.write("sa_1", array)
    assert first.exists("sa_1") and not second.exists("sa_1")
    back = first.read("sa_1")
    assert back.dtype == np.float16 and back.shape == (256, 4, 5)
    assert np.array_equal(back, array.astype(np.float16))
    assert (tmp_path / "embeddings" / ("a" * 16) / "sa_1.npy").is_file()
    for bad in ("", "../x", "a/b", ".hidden"):
        with pytest.raises(ValueError):
            first.path(bad)


def test_model_worker_embeds_like_the_predictor() -> None:
    image_path = Path(__file__).resolve().parents[2] / "samples" / "images" / "dog.jpg"
    decoded = decode_image(image_path.read_bytes(), ImageOptions(max_short_side=200))
    worker = ModelWorker(model_config=DEMO_MODEL)
    embedding = worker.embed(decoded)
    assert not isinstance(embedding, Failure)
    sam = worker.predictor.model
    predictor = SamPredictor(sam)
    predictor.set_image(decoded.rgb)
    expected = predictor.get_image_embedding()[0].to(torch.float16).numpy()
    assert np.array_equal(embedding.array, expected)
    assert embedding.original_size == decoded.size_hw
    assert embedding.input_size == predictor.input_size
    assert worker.identity()["weights_sha256"] == weights_sha256(sam)
    assert isinstance(worker.embed(Failure("cannot read")), Failure)
