"""Training throughput: images (and masks) per second of the interactive recipe, against the
data reader alone (which must not be the bottleneck), on synthetic scenes.

    python -m benchmarks.bench_training [--model vit_mini] [--steps 10] [--iterations 11]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import machine
from engine.dataset.reader import build_index
from engine.training.reader import load_sample
from engine.training.synthetic import write_synthetic_dataset
from engine.training.trainer import TrainConfig, Trainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="vit_mini")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--masks", type=int, default=8)
    parser.add_argument("--iterations", type=int, default=11)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench_training_"))
    write_synthetic_dataset(str(root / "data"), num_images=32)
    config = TrainConfig(
        data=(str(root / "data"),),
        output=str(root / "run"),
        model=args.model,
        steps=args.steps + 1,
        batch_size=args.batch_size,
        masks_per_image=args.masks,
        num_iterations=args.iterations,
        checkpoint_every=10**6,
    )
    trainer = Trainer(config)
    print(
        f"machine: {machine()}; model {args.model}; batch {args.batch_size} images x "
        f"{args.masks} masks x {args.iterations} iterations"
    )
    trainer.train_step()  # warm-up
    start = time.perf_counter()
    for _ in range(args.steps):
        trainer.train_step()
    train_rate = args.steps * args.batch_size / (time.perf_counter() - start)
    index = build_index([str(root / "data")])
    start = time.perf_counter()
    for position, entry in enumerate(index):
        load_sample(
            entry,
            image_size=trainer.sam.img_size,
            max_masks=args.masks,
            rng=np.random.default_rng(position),
        )
    read_rate = len(index) / (time.perf_counter() - start)
    print(f"training: {train_rate:.2f} images/s ({train_rate * args.masks:.1f} masks/s)")
    print(f"reader alone: {read_rate:.1f} images/s ({read_rate / train_rate:.0f}x training)")
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
