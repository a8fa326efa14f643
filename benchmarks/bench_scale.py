"""How fast the generation job's machinery goes without the model: planning, scheduling,
decode/finish/commit tasks and shard commits, on a local Ray, over many tiny images.

A stand-in model worker (the model worker's interface: identity, generate, stats) returns
one fixed mask per image at once, so what is measured is everything around the model.
Prints the plan's listing rate, images/s through the pipeline, the driver's memory over
time (RSS), shard commit latency (last image of a shard finished -> shard committed) and
what that projects for SA-1B's 11M images.

    python -m benchmarks.bench_scale [--images 100000] [--per-shard 1000] [--gpu-seconds 2.1]
"""

from __future__ import annotations

import argparse
import io
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import ray
import torch
import webdataset
from PIL import Image

from benchmarks.common import machine
from engine.dataset import ManifestRow
from engine.dataset.writer import ShardInfo
from engine.generation.pipeline import Pipeline
from engine.generation.plan import iter_plan, write_plan
from engine.images import DecodedImage, ImageOptions
from engine.storage import Storage
from engine.workers.pool import Resources
from stages.automatic import GeneratorConfig
from stages.automatic.columns import MaskColumns
from stages.automatic.rle import masks_to_rles

SA1B_IMAGES = 11_000_000


class InstantModelWorker:
    """The model worker's interface with no model: one fixed mask (the image's left half)."""

    def __init__(self) -> None:
        self.images = 0

    def identity(self) -> dict[str, Any]:
        return {"name": "instant", "weights_sha256": "0" * 64}

    def generate(self, decoded: Any) -> Any:
        if not isinstance(decoded, DecodedImage):
            return decoded
        self.images += 1
        height, width = decoded.size_hw
        mask = torch.zeros(1, height, width, dtype=torch.bool)
        mask[:, :, : width // 2] = True
        return MaskColumns(
            iou_preds=torch.tensor([0.9]),
            stability_score=torch.tensor([0.95]),
            points=torch.tensor([[width / 4, height / 2]], dtype=torch.float64),
            boxes=torch.tensor([[0, 0, width // 2 - 1, height - 1]]),
            crop_boxes=torch.tensor([[0, 0, width, height]]),
            rles=masks_to_rles(mask),
        )

    def stats(self) -> dict[str, Any]:
        return {"images": float(self.images), "busy_fraction": 0.0, "node_id": ""}


def make_inputs(folder: Path, count: int, per_tar: int = 5000) -> str:
    """`count` 16x16 JPEGs in tars of `per_tar`; returns the glob naming them."""
    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(buffer, "JPEG")
    jpeg = buffer.getvalue()
    for first in range(0, count, per_tar):
        with webdataset.TarWriter(str(folder / f"in_{first // per_tar:05d}.tar")) as writer:
            for index in range(first, min(first + per_tar, count)):
                writer.write({"__key__": f"img_{index:08d}", "jpg": jpeg})
    return str(folder / "in_*.tar")


class MemorySampler:
    """The driver's resident memory every `every_s` seconds (from /proc)."""

    def __init__(self, every_s: float = 1.0) -> None:
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._start = time.perf_counter()
        self._thread = threading.Thread(target=self._run, args=(every_s,), daemon=True)
        self._thread.start()

    def _run(self, every_s: float) -> None:
        while not self._stop.wait(every_s):
            self.samples.append((time.perf_counter() - self._start, _rss_mb()))

    def stop(self) -> list[tuple[float, float]]:
        self._stop.set()
        self._thread.join()
        return self.samples


def _rss_mb() -> float:
    with open(f"/proc/{os.getpid()}/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def run(args: argparse.Namespace, root: Path) -> None:
    spec = make_inputs(root, args.images)
    storage = Storage(str(root / "out"))
    memory = MemorySampler()
    start = time.perf_counter()
    info = write_plan(storage, [spec], {}, run_rows=args.run_rows)
    plan_s = time.perf_counter() - start
    print(f"plan: {info.num_images} images listed and sorted in {plan_s:.1f} s")
    resources = Resources(
        model_actors=args.workers, cpus_per_actor=0, cpus_per_task=0.5, max_in_flight=args.flight
    )
    worker = ray.remote(num_cpus=0)(InstantModelWorker)
    workers = [worker.remote() for _ in range(args.workers)]
    last_image: dict[str, float] = {}
    latencies: list[float] = []
    done = [0]

    def on_image(row: ManifestRow) -> None:
        last_image[row.shard] = time.perf_counter()
        done[0] += 1
        if done[0] % 10_000 == 0:
            print(f"  {done[0]} images, {done[0] / (time.perf_counter() - pipe_start):.0f}/s")

    def on_shard(shard: ShardInfo) -> None:
        latencies.append(time.perf_counter() - last_image[f"sa_{shard.shard:06d}"])

    pipe_start = time.perf_counter()
    Pipeline(
        iter_plan(storage, images_per_shard=args.per_shard),
        shard_size=lambda s: min(args.per_shard, info.num_images - s * args.per_shard),
        workers=workers,
        storage=storage,
        generator_config=GeneratorConfig(),
        image_options=ImageOptions(),
        storage_options={},
        resources=resources,
        on_image=on_image,
        on_shard=on_shard,
    ).run()
    seconds = time.perf_counter() - pipe_start
    samples = memory.stop()
    _report(args, info.num_images, seconds, plan_s, samples, latencies)


def _report(
    args: argparse.Namespace,
    count: int,
    seconds: float,
    plan_s: float,
    samples: list[tuple[float, float]],
    latencies: list[float],
) -> None:
    rate = count / seconds
    rss = [mb for _, mb in samples]
    quarters = [rss[int(q * (len(rss) - 1))] for q in (0.1, 0.25, 0.5, 0.75, 1.0)]
    print(f"pipeline: {count} images in {seconds:.1f} s = {rate:.0f} images/s")
    print(
        "driver RSS (MB) at 10/25/50/75/100% of the run: " + ", ".join(f"{m:.0f}" for m in quarters)
    )
    print(
        f"shard commit latency ({len(latencies)} shards of {args.per_shard}): median "
        f"{np.median(latencies):.2f} s, p90 {np.percentile(latencies, 90):.2f} s"
    )
    orchestration_h = SA1B_IMAGES / rate / 3600
    plan_h = SA1B_IMAGES / (count / plan_s) / 3600
    print(f"11M images: listing {plan_h:.2f} h; the machinery alone here {orchestration_h:.1f} h")
    for gpus in (8, 64, 256):
        gpu_h = SA1B_IMAGES * args.gpu_seconds / gpus / 3600
        needed = gpus / args.gpu_seconds
        print(
            f"  {gpus} GPUs at {args.gpu_seconds} s/image: {gpu_h:.0f} h of GPU time; the "
            f"machinery must sustain {needed:.0f} images/s ({needed / rate:.1f}x this run)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--per-shard", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=2, help="stand-in model workers")
    parser.add_argument("--flight", type=int, default=64, help="resources.max_in_flight")
    parser.add_argument("--run-rows", type=int, default=20_000, help="plan rows sorted in memory")
    parser.add_argument("--gpu-seconds", type=float, default=2.1, help="GPU time per image")
    args = parser.parse_args()
    print(machine())
    ray.init(include_dashboard=False, log_to_driver=False)
    try:
        with tempfile.TemporaryDirectory(prefix="bench-scale-") as root:
            run(args, Path(root))
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
