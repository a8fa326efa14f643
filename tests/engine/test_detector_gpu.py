"""The detector on a CUDA GPU: training steps and detections agree with the CPU's."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from engine.detection.data import collect_images, write_images
from engine.detection.embedding import in_process_embedder
from engine.detection.trainer import DetectorTrainConfig, DetectorTrainer, TrainingInputs
from engine.embeddings import EmbeddingStore
from engine.models import load_model, weights_sha256
from engine.storage import Storage
from engine.training.synthetic import SceneOptions, write_synthetic_dataset
from stages.semi import DetectorConfig, detect

pytestmark = pytest.mark.gpu


def test_cuda_training_and_detection_agree_with_the_cpu(tmp_path: Path) -> None:
    options = SceneOptions(size=128, objects=(1, 3), min_area=200, part_probability=0.0)
    write_synthetic_dataset(str(tmp_path / "data"), num_images=8, options=options)
    sam = load_model("vit_mini", "bundled")
    store = EmbeddingStore(Storage(str(tmp_path / "cache")), weights_sha256(sam))
    images = collect_images(
        [str(tmp_path / "data")], store=store, embedder=in_process_embedder(sam)
    )
    write_images(tmp_path / "images.parquet", images)
    inputs = TrainingInputs(
        images_file=str(tmp_path / "images.parquet"),
        embeddings_root=str(tmp_path / "cache"),
        sam_weights_sha256=weights_sha256(sam),
        detector=DetectorConfig(image_size=256, channels=64, head_convs=2),
    )
    config = DetectorTrainConfig(
        data=("unused",), output=str(tmp_path / "cpu"), steps=3, batch_size=4, device="cpu"
    )
    runs = {}
    for device in ("cpu", "cuda"):
        trainer = DetectorTrainer(
            replace(config, output=str(tmp_path / device), device=device), inputs
        )
        runs[device] = (trainer.run(), trainer.detector.eval())
    cpu_losses = [step.loss for step in runs["cpu"][0]]
    cuda_losses = [step.loss for step in runs["cuda"][0]]
    assert cuda_losses == pytest.approx(cpu_losses, rel=1e-2)
    embedding = store.read(images[0].digest)
    cpu_boxes, cpu_scores = detect(
        runs["cpu"][1], embedding, original_size=(128, 128), score_thresh=0.0
    )
    gpu_boxes, gpu_scores = detect(
        runs["cuda"][1], embedding, original_size=(128, 128), score_thresh=0.0
    )
    assert next(runs["cuda"][1].parameters()).device.type == "cuda"
    assert isinstance(gpu_boxes, np.ndarray) and gpu_boxes.dtype == np.float32
    top = min(10, len(cpu_scores), len(gpu_scores))
    np.testing.assert_allclose(gpu_scores[:top], cpu_scores[:top], atol=2e-2)
