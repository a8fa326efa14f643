"""The detector on a real local Ray: embeddings computed by Ray model actors equal the
in-process ones, and Ray Train with 2 workers matches 1 worker at the same global batch."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.detection.data import collect_images, write_images
from engine.detection.embedding import in_process_embedder, ray_embedder
from engine.detection.trainer import DetectorTrainConfig, TrainingInputs, train_with_ray
from engine.embeddings import EmbeddingStore
from engine.models import load_model, weights_sha256
from engine.storage import Storage
from engine.training.loop import STATE_FILE
from engine.training.synthetic import SceneOptions, write_synthetic_dataset
from stages.semi import BoxDetector, DetectorConfig

pytestmark = pytest.mark.slow

BUNDLED = {
    "_target_": "engine.models.load_model",
    "name": "vit_mini",
    "checkpoint": "bundled",
    "random_seed": None,
    "sharpen": False,
}


@pytest.fixture(scope="module")
def ray_local() -> Iterator[None]:
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ray_scenes")
    options = SceneOptions(size=128, objects=(1, 3), min_area=200, part_probability=0.0)
    write_synthetic_dataset(str(root / "train"), num_images=8, options=options)
    return root


def test_ray_actors_embed_like_this_process(ray_local: None, scenes: Path) -> None:
    sam = load_model("vit_mini", "bundled")
    sha = weights_sha256(sam)
    here = EmbeddingStore(Storage(str(scenes / "here")), sha)
    there = EmbeddingStore(Storage(str(scenes / "there")), sha)
    images = collect_images([str(scenes / "train")], store=here, embedder=in_process_embedder(sam))
    embedder = ray_embedder(model_config=BUNDLED, actors=2)
    collect_images([str(scenes / "train")], store=there, embedder=embedder)
    for image in images:
        a, b = here.read(image.digest), there.read(image.digest)
        assert a.shape == (256, 16, 16)
        np.testing.assert_allclose(a.astype(np.float32), b.astype(np.float32), atol=2e-3)


def test_two_workers_match_one_at_the_same_global_batch(ray_local: None, scenes: Path) -> None:
    sam = load_model("vit_mini", "bundled")
    sha = weights_sha256(sam)
    store = EmbeddingStore(Storage(str(scenes / "cache")), sha)
    images = collect_images([str(scenes / "train")], store=store, embedder=in_process_embedder(sam))
    write_images(scenes / "images.parquet", images)
    inputs = TrainingInputs(
        images_file=str(scenes / "images.parquet"),
        embeddings_root=str(scenes / "cache"),
        sam_weights_sha256=sha,
        detector=DetectorConfig(image_size=256, channels=32, head_convs=1, scales=(2.0, 1.0)),
    )
    runs = {}
    for workers in (1, 2):
        config = DetectorTrainConfig(
            data=(str(scenes / "train"),),
            output=str(scenes / f"w{workers}"),
            steps=2,
            batch_size=4,
            warmup_steps=0,
        )
        runs[workers] = train_with_ray(config, inputs, workers=workers)
    one, two = ([step["loss"] for step in runs[w]] for w in (1, 2))
    assert len(one) == len(two) == 2
    assert one == pytest.approx(two, rel=1e-4)
    assert [s["num_foreground"] for s in runs[1]] == [s["num_foreground"] for s in runs[2]]
    # Compare what the two detectors compute: the head's convolution biases sit before a
    # group norm that removes them, so their gradients are rounding noise that Adam scales
    # up to full steps; they change no output.
    embeddings = torch.from_numpy(np.stack([store.read(i.digest) for i in images])).float()
    outputs = [
        _head_outputs(inputs.detector, scenes / f"w{w}" / STATE_FILE, embeddings) for w in (1, 2)
    ]
    for name, value in outputs[0].items():
        worst = (value - outputs[1][name]).abs().max().item()
        assert worst < 1e-4 * max(1.0, value.abs().max().item()), (name, worst)


def _head_outputs(
    config: DetectorConfig, state_file: Path, embeddings: torch.Tensor
) -> dict[str, torch.Tensor]:
    detector = BoxDetector(config).eval()
    detector.load_state_dict(torch.load(state_file)["detector"])
    with torch.no_grad():
        return detector.fcos.head(list(detector.fcos.backbone(embeddings).values()))
