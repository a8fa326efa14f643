"""How fast the generation job's machinery goes without the model: scheduling, decode /
finish / commit tasks and shard commits, on Ray, over many tiny images.

A stand-in model worker (the model worker's interface: identity, generate_batch, stats)
returns one fixed mask per image at once, so what is measured is everything around the
model. In one process, on the same input: the pipeline with one image per batch (the shape
of the per-image machinery it replaced: three Ray calls per image) as the baseline, the
batched pipeline, optionally a minimal Ray Data pipeline with the same stand-in
(`benchmarks.scale_ray_data`), then the batched pipeline again on a local multi-node
cluster (a head and three worker nodes started with `ray start` on this machine).

For each: images/s, the driver's CPU time per image, Ray calls (tasks and actor calls) per
image, the driver's memory (RSS) and the object store's use over time, shard commit
latency (last batch of a shard finished -> shard committed); then what that projects for
SA-1B's 11M images. The last line is JSON: the batched pipeline on the embedded local Ray,
with the others under "baseline", "ray_data" and "cluster".

    python -m benchmarks.bench_scale [--images 100000] [--per-shard 1000] [--batch 64]
        [--baseline-images 2000] [--ray-data-images 0] [--no-cluster] [--gpu-seconds 2.1 0.05]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import json
import os
import resource
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
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
from engine.generation.plan import ImagePlan, iter_plan, write_plan
from engine.images import DecodedImage, ImageOptions
from engine.storage import Storage
from engine.workers.decode import Failure
from engine.workers.pool import Resources
from stages.automatic import GeneratorConfig
from stages.automatic.columns import MaskColumns
from stages.automatic.rle import masks_to_rles

SA1B_IMAGES = 11_000_000
REPOSITORY = Path(__file__).resolve().parent.parent


class InstantModelWorker:
    """The model worker's interface with no model: one fixed mask (the image's left half)."""

    def __init__(self) -> None:
        self.images = 0

    def identity(self) -> dict[str, Any]:
        return {"name": "instant", "weights_sha256": "0" * 64}

    def generate(self, decoded: DecodedImage | Failure) -> MaskColumns | Failure:
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

    def generate_batch(self, batch: list[Any]) -> list[MaskColumns | Failure]:
        return [self.generate(decoded) for decoded in batch]

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


class Sampler:
    """The driver's resident memory and the object store's bytes in use, every `every_s`."""

    def __init__(self, every_s: float = 1.0) -> None:
        from ray._private.internal_api import get_state_from_address

        self.state = get_state_from_address(ray.get_runtime_context().gcs_address)
        self.rss_mb: list[float] = []
        self.store_mb: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(every_s,), daemon=True)
        self._thread.start()

    def _run(self, every_s: float) -> None:
        from ray._private.internal_api import get_memory_info_reply

        while not self._stop.wait(every_s):
            self.rss_mb.append(_rss_mb())
            reply = get_memory_info_reply(self.state)
            self.store_mb.append(reply.store_stats.object_store_bytes_used / 2**20)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def _rss_mb() -> float:
    with open(f"/proc/{os.getpid()}/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass
class Measure:
    """One run: what the driver did and what it cost."""

    images: int
    seconds: float = 0.0
    driver_cpu_s: float = 0.0
    ray_calls: int | None = None  # None: not counted (Ray Data plans its own tasks)
    rss_mb: list[float] = field(default_factory=list)
    store_mb: list[float] = field(default_factory=list)
    commit_latency_s: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {
            "images": self.images,
            "images_per_s": round(self.images / self.seconds, 1),
            "driver_cpu_ms_per_image": round(1000 * self.driver_cpu_s / self.images, 3),
            "tasks_per_image": (
                None if self.ray_calls is None else round(self.ray_calls / self.images, 4)
            ),
        }


@contextlib.contextmanager
def measured(count: int) -> Iterator[Measure]:
    """Times the block, samples memory while it runs, and takes the driver's CPU time."""
    measure = Measure(images=count)
    sampler = Sampler()
    cpu, start = _cpu_seconds(), time.perf_counter()
    try:
        yield measure
    finally:
        measure.seconds = time.perf_counter() - start
        measure.driver_cpu_s = _cpu_seconds() - cpu
        sampler.stop()
        measure.rss_mb, measure.store_mb = sampler.rss_mb, sampler.store_mb


@dataclass(frozen=True)
class Run:
    """What every measured pipeline gets: the planned input (read from `plans`), its first
    `count` images, and a fresh output folder."""

    plans: Storage
    out: Path
    count: int
    per_shard: int

    def images(self) -> Iterator[ImagePlan]:
        return itertools.islice(iter_plan(self.plans, images_per_shard=self.per_shard), self.count)

    def shard_size(self, shard: int) -> int:
        return min(self.per_shard, self.count - shard * self.per_shard)


class CommitClock:
    """Shard commit latency: the last images of a shard finished -> the shard committed."""

    def __init__(self, measure: Measure) -> None:
        self.measure = measure
        self.last: dict[str, float] = {}
        self.done = 0
        self.start = time.perf_counter()

    def on_rows(self, rows: list[ManifestRow]) -> None:
        now = time.perf_counter()
        for shard in {row.shard for row in rows}:
            self.last[shard] = now
        before, self.done = self.done, self.done + len(rows)
        if self.done // 20_000 > before // 20_000:  # progress on long runs
            print(f"  {self.done} images, {self.done / (now - self.start):.0f}/s", flush=True)

    def on_shard(self, info: ShardInfo) -> None:
        finished = self.last[f"sa_{info.shard:06d}"]
        self.measure.commit_latency_s.append(time.perf_counter() - finished)


def run_core(
    run: Run, *, batch: int, flight: int | None, workers: int, actor_options: dict[str, Any]
) -> Measure:
    """The generation pipeline (`engine.generation.pipeline`) with stand-in model workers."""
    resources = Resources(
        model_actors=workers,
        cpus_per_actor=0,
        cpus_per_task=0.5,
        batch_images=batch,
        max_in_flight=flight,
    )
    actor = ray.remote(num_cpus=0, **actor_options)(InstantModelWorker)
    handles = [actor.remote() for _ in range(workers)]
    ray.get([handle.identity.remote() for handle in handles])
    with measured(run.count) as measure:
        clock = CommitClock(measure)
        result = Pipeline(
            run.images(),
            shard_size=run.shard_size,
            workers=handles,
            storage=Storage(str(run.out)),
            generator_config=GeneratorConfig(),
            image_options=ImageOptions(),
            storage_options={},
            resources=resources,
            on_rows=clock.on_rows,
            on_shard=clock.on_shard,
        ).run()
    measure.ray_calls = result.ray_calls
    for handle in handles:
        ray.kill(handle)
    return measure


def report(name: str, measure: Measure) -> dict[str, Any]:
    summary = measure.summary()
    print(
        f"{name}: {measure.images} images in {measure.seconds:.1f} s = "
        f"{summary['images_per_s']:.0f} images/s; driver CPU "
        f"{summary['driver_cpu_ms_per_image']:.3f} ms/image "
        f"({summary['driver_cpu_ms_per_image']:.2f} s per 1,000 images); "
        f"{summary['tasks_per_image'] or 'uncounted'} Ray calls/image"
    )
    for label, series in (("driver RSS", measure.rss_mb), ("object store", measure.store_mb)):
        if series:
            points = [series[int(q * (len(series) - 1))] for q in (0.1, 0.25, 0.5, 0.75, 1.0)]
            print(
                f"  {label} (MB) at 10/25/50/75/100% of the run: "
                + ", ".join(f"{mb:.0f}" for mb in points)
                + f" (max {max(series):.0f})"
            )
    if measure.commit_latency_s:
        latencies = measure.commit_latency_s
        print(
            f"  shard commit latency ({len(latencies)} shards): median "
            f"{np.median(latencies):.2f} s, p90 {np.percentile(latencies, 90):.2f} s"
        )
    return summary


def project(rate: float, driver_ms: float, gpu_seconds: list[float]) -> None:
    """What a machinery rate means for SA-1B's 11M images on 64 and 256 GPUs."""
    print(f"11M images: the machinery alone here {SA1B_IMAGES / rate / 3600:.1f} h")
    for seconds, gpus in itertools.product(gpu_seconds, (64, 256)):
        needed = gpus / seconds
        gpu_h = SA1B_IMAGES * seconds / gpus / 3600
        print(
            f"  {gpus} GPUs at {seconds} s/image: {gpu_h:.1f} h; the machinery must sustain "
            f"{needed:.0f} images/s ({needed / rate:.2f}x this run), the driver "
            f"{needed * driver_ms / 1000:.2f} cores"
        )


def on_local_cluster(args: argparse.Namespace) -> dict[str, Any]:
    """The batched pipeline inside a Ray job (`ray job submit`, its driver on the head) on a
    head and three worker nodes started with `ray start` on this machine, each worker node
    able to host one stand-in model worker (`model_node`)."""
    import subprocess

    from tests.engine.raycluster import LocalCluster

    cluster = LocalCluster.create()
    cluster.env["PYTHONPATH"] = os.pathsep.join(
        [str(REPOSITORY), *filter(None, [os.environ.get("PYTHONPATH")])]
    )
    try:
        cluster.start_head(num_cpus=1)
        for _ in range(3):
            cluster.add_node(num_cpus=1, resources={"model_node": 1})
        options = ["--images", str(args.images), "--per-shard", str(args.per_shard)]
        options += ["--workers", str(args.workers), "--batch", str(args.batch)]
        options += ["--flight", str(args.flight)] if args.flight else []
        job = subprocess.run(
            [str(Path(sys.executable).parent / "ray"), "job", "submit", "--"]
            + [sys.executable, "-m", "benchmarks.bench_scale", "--inside-cluster", *options],
            capture_output=True,
            text=True,
            env={**cluster.env, "RAY_ADDRESS": cluster.dashboard},
            timeout=3600,
        )
    finally:
        cluster.stop()
    lines = [line for line in job.stdout.splitlines() if line.startswith(("multi-node", "  "))]
    print("\n".join(lines))
    found = [line for line in job.stdout.splitlines() if line.startswith("{")]
    if job.returncode != 0 or not found:
        raise RuntimeError(f"the job on the local cluster failed:\n{job.stdout[-3000:]}")
    result: dict[str, Any] = json.loads(found[-1])
    return result


def in_cluster(args: argparse.Namespace, plans: Storage, root: Path) -> dict[str, Any]:
    """The multi-node run's measure, inside its Ray job."""
    ray.init(address="auto", log_to_driver=False)
    try:
        run = Run(plans=plans, out=root / "cluster", count=args.images, per_shard=args.per_shard)
        measure = run_core(
            run,
            batch=args.batch,
            flight=args.flight,
            workers=args.workers,
            actor_options={"resources": {"model_node": 1}},
        )
        return report("multi-node (head + 3 worker nodes), batched", measure)
    finally:
        ray.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=100_000, help="images to generate")
    parser.add_argument("--per-shard", type=int, default=1000, help="images_per_shard")
    parser.add_argument("--workers", type=int, default=2, help="stand-in model workers")
    parser.add_argument("--batch", type=int, default=64, help="resources.batch_images")
    parser.add_argument("--flight", type=int, default=None, help="resources.max_in_flight")
    parser.add_argument("--baseline-images", type=int, default=2000, help="0: no baseline")
    parser.add_argument("--ray-data-images", type=int, default=0, help="0: no Ray Data run")
    parser.add_argument("--no-cluster", action="store_true", help="no multi-node run")
    parser.add_argument(
        "--inside-cluster", action="store_true", help="(the multi-node run's job: measure only)"
    )
    parser.add_argument("--run-rows", type=int, default=20_000, help="plan rows sorted in memory")
    parser.add_argument(
        "--gpu-seconds",
        type=float,
        nargs="+",
        default=[2.1, 0.05],
        help="GPU time per image to project for (reference AMG; the fast mode's goal)",
    )
    args = parser.parse_args()
    print(machine())
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as folder:
        root = Path(folder)
        plans = Storage(str(root / "plan"))
        start = time.perf_counter()
        info = write_plan(plans, [make_inputs(root, args.images)], {}, run_rows=args.run_rows)
        seconds = time.perf_counter() - start
        print(f"plan: {info.num_images} images listed and sorted in {seconds:.1f} s")
        if args.inside_cluster:
            print(json.dumps(in_cluster(args, plans, root)))
            return
        result = measure_all(args, plans, root)
    if not args.no_cluster:
        result["cluster"] = on_local_cluster(args)
    project(result["images_per_s"], result["driver_cpu_ms_per_image"], args.gpu_seconds)
    print(json.dumps(result))


def measure_all(args: argparse.Namespace, plans: Storage, root: Path) -> dict[str, Any]:
    def run(name: str, count: int) -> Run:
        return Run(plans=plans, out=root / name, count=count, per_shard=args.per_shard)

    def core(name: str, count: int, batch: int, flight: int | None) -> Measure:
        return run_core(
            run(name, count), batch=batch, flight=flight, workers=args.workers, actor_options={}
        )

    others: dict[str, Any] = {}
    ray.init(include_dashboard=False, log_to_driver=False)
    try:
        if args.baseline_images:
            count = min(args.baseline_images, args.images)
            others["baseline"] = report("baseline, 1 image per batch", core("base", count, 1, 64))
        batched = core("batched", args.images, args.batch, args.flight)
        result = {**report(f"batched, {args.batch} images per batch", batched), **others}
        if args.ray_data_images:
            from benchmarks.scale_ray_data import run_ray_data

            count = min(args.ray_data_images, args.images)
            data = run_ray_data(run("data", count), batch=args.batch, workers=args.workers)
            result["ray_data"] = report("Ray Data map_batches, same stand-in", data)
    finally:
        ray.shutdown()
    if "baseline" in result:
        ratio = result["images_per_s"] / result["baseline"]["images_per_s"]
        print(f"batched / baseline: {ratio:.1f}x images/s")
    return result


if __name__ == "__main__":
    main()
