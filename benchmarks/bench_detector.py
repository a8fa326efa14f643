"""Stage-2 detector: training images/s and inference time per image, each against a
baseline measured in the same process.

- Training: images/s of the training step against reading the same batches' embeddings
  and targets alone (the input path must not be the bottleneck).
- Inference (`detect` on a stored embedding): time per image against the SAM image encoder
  that makes the embedding (a cost every image pays anyway).
Cases: the bundled model's 16 x 16 embeddings (256-pixel input; real synthetic scenes) and
64 x 64 embeddings of a 1024-input SAM (vit_b encoder as the baseline; random embeddings
with the scenes' boxes scaled up), each with the default detector and a small one (the
default detector on 64 x 64 embeddings is a GPU configuration: only its inference is timed).

    python -m benchmarks.bench_detector [--steps 5] [--batch-size 8] [--skip-large] [--threads N]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import machine, median_seconds
from engine.detection.data import PendingEmbedding, collect_images, write_images
from engine.detection.embedding import in_process_embedder
from engine.detection.trainer import DetectorTrainConfig, DetectorTrainer, TrainingInputs
from engine.embeddings import EmbeddingStore
from engine.models import load_model, weights_sha256
from engine.storage import Storage
from engine.training.synthetic import write_synthetic_dataset
from model import SamPredictor, build_sam
from stages.semi import DetectorConfig, detect
from stages.semi.detector import BoxDetector

DEFAULT = DetectorConfig()
SMALL = DetectorConfig(channels=64, head_convs=2, scales=(2.0, 1.0, 0.5))


def prepare(root: Path, *, large: bool) -> tuple[TrainingInputs, float]:
    """Scenes, their embeddings (the bundled SAM's; random 64 x 64 ones for `large`), and
    the encoder's seconds per image."""
    write_synthetic_dataset(str(root / "data"), num_images=32)
    sam = load_model("vit_mini", "bundled") if not large else build_sam("vit_b").eval()
    sha = weights_sha256(sam)
    store = EmbeddingStore(Storage(str(root / "cache")), sha)
    if large:
        images = collect_images([str(root / "data")], store=store, embedder=_random_embedder)
    else:
        images = collect_images(
            [str(root / "data")], store=store, embedder=in_process_embedder(sam)
        )
    write_images(root / "images.parquet", images)
    rgb = np.random.default_rng(0).integers(0, 255, (256, 256, 3), dtype=np.uint8)
    predictor = SamPredictor(sam)
    encoder = median_seconds(lambda: predictor.set_image(rgb), repeats=1 if large else 5)
    inputs = TrainingInputs(str(root / "images.parquet"), str(root / "cache"), sha, DEFAULT)
    return replace(inputs, detector=replace(DEFAULT, image_size=sam.img_size)), encoder


def _random_embedder(items: Iterable[PendingEmbedding], store: EmbeddingStore) -> int:
    count = 0
    for item in items:
        store.write(item.digest, np.random.default_rng(count).normal(size=(256, 64, 64)))
        count += 1
    return count


def bench_training(
    inputs: TrainingInputs, root: Path, *, steps: int, batch_size: int
) -> tuple[float, float]:
    """(training images/s, reading images/s) of the same batches."""
    config = DetectorTrainConfig(
        data=("unused",),
        output=str(root / f"run_{time.monotonic_ns()}"),
        steps=steps + 1,
        batch_size=batch_size,
        checkpoint_every=10**6,
        device="cpu",
    )
    trainer = DetectorTrainer(config, inputs)
    trainer.train_step()  # warm-up
    start = time.perf_counter()
    for _ in range(steps):
        trainer.train_step()
    train_rate = steps * batch_size / (time.perf_counter() - start)
    start = time.perf_counter()
    count = len(trainer.task.images)
    for step in range(steps):
        trainer.task.load_batch(
            [i % count for i in range(step * batch_size, (step + 1) * batch_size)]
        )
    read_rate = steps * batch_size / (time.perf_counter() - start)
    return train_rate, read_rate


def bench_inference(inputs: TrainingInputs, *, repeats: int) -> float:
    """Seconds per image of `detect` on one stored embedding (every detection kept)."""
    detector = BoxDetector(inputs.detector).eval()
    embedding = inputs.store().read(_first_digest(inputs))
    return median_seconds(
        lambda: detect(detector, embedding, original_size=(768, 1024), score_thresh=0.0),
        repeats=repeats,
    )


def _first_digest(inputs: TrainingInputs) -> str:
    import pyarrow.parquet as pq

    return str(pq.read_table(inputs.images_file, columns=["digest"])["digest"][0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--skip-large", action="store_true")
    parser.add_argument("--skip-mini", action="store_true")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"machine: {machine()}")
    root = Path(tempfile.mkdtemp(prefix="bench_detector_"))
    try:
        cases = [
            large for large in (False, True) if not (args.skip_large if large else args.skip_mini)
        ]
        for large in cases:
            inputs, encoder = prepare(root / ("large" if large else "mini"), large=large)
            side = inputs.detector.embedding_size
            name = f"{'vit_b-sized (random)' if large else 'bundled vit_mini'}, {side}x{side}"
            print(f"\n{name} embeddings; SAM encoder {encoder * 1000:.0f} ms/image", flush=True)
            for label, arch in (("default", DEFAULT), ("small", SMALL)):
                size = inputs.detector.image_size
                case = replace(inputs, detector=replace(arch, image_size=size))
                infer = bench_inference(case, repeats=3 if large else 10)
                text = f"detect {infer * 1000:7.1f} ms/image ({infer / encoder:.2f}x the encoder)"
                if not (large and label == "default"):  # a GPU configuration: not trained here
                    steps, batch = (2, 2) if large else (args.steps, args.batch_size)
                    train, read = bench_training(case, root, steps=steps, batch_size=batch)
                    text += (
                        f"; training {train:.2f} images/s (reading alone {read:.0f}/s, "
                        f"{read / train:.0f}x)"
                    )
                print(f"  {label:<8} {text}", flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
