"""Generation job throughput: the Ray pipeline with 1 and 2 model workers against the
generator alone in one process, at the same settings and weights, on the bundled sample images.

    python -m benchmarks.bench_pipeline [--model demo] [--points 8] [--copies 2] [--gpu]

Prints images/s, the ratio to the in-process generator (the pipeline's overhead or gain)
and the model workers' busy fraction. On a GPU machine (--gpu) each model worker holds one
GPU and the in-process baseline runs on cuda.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import ray
import torch
from hydra.utils import instantiate

from benchmarks.common import machine
from engine.cli import compose_config
from engine.generation.job import run_generate
from engine.images import ImageOptions, decode_image
from stages.automatic import AutomaticMaskGenerator, GeneratorConfig, finish_candidates

SAMPLES = Path(__file__).resolve().parents[1] / "samples" / "images"


def _inputs(folder: Path, copies: int) -> list[Path]:
    sources = sorted(SAMPLES.glob("*.jpg"))
    paths = []
    for copy in range(copies):
        for source in sources:
            target = folder / f"{source.stem}_{copy}.jpg"
            shutil.copy(source, target)
            paths.append(target)
    return paths


def _overrides(args: argparse.Namespace, folder: Path, output: Path, workers: int) -> list[str]:
    overrides = [
        f"input={folder}",
        f"output={output}",
        f"model={args.model}",
        "generator=demo",
        f"generator.points_per_side={args.points}",
        "images_per_shard=4",
        "progress=false",
        f"resources.model_actors={workers}",
        f"resources.cpus_per_actor={args.threads}",
        f"resources.max_in_flight={4 * workers}",
    ]
    if args.gpu:
        overrides += ["resources.gpus_per_actor=1", "resources.device=cuda"]
    if args.checkpoint:
        overrides.append(f"model.checkpoint={args.checkpoint}")
    return overrides


def in_process(args: argparse.Namespace, paths: list[Path], overrides: list[str]) -> float:
    cfg = compose_config("generate", overrides)
    torch.set_num_threads(args.threads)
    device = "cuda" if args.gpu else "cpu"
    sam = instantiate(cfg.model).to(device)
    config = GeneratorConfig(**cfg.generator)
    generator = AutomaticMaskGenerator(sam, config)
    options = ImageOptions(**cfg.images)
    start = time.perf_counter()
    for path in paths:
        rgb = decode_image(path.read_bytes(), options).rgb
        with torch.inference_mode():
            finish_candidates(generator.generate_candidates(rgb), config)
    return len(paths) / (time.perf_counter() - start)


def pipeline(overrides: list[str], output: Path, count: int) -> tuple[float, float]:
    start = time.perf_counter()
    run_generate(compose_config("generate", overrides), overrides)
    seconds = time.perf_counter() - start
    (run,) = list((output / "runs").iterdir())
    busy = json.loads((run / "run.json").read_text())["model_busy_fraction"]
    return count / seconds, busy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="demo")
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--points", type=int, default=8)
    parser.add_argument("--copies", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per model worker")
    parser.add_argument("--gpu", action="store_true")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench_pipeline_"))
    (root / "in").mkdir()
    paths = _inputs(root / "in", args.copies)
    print(
        f"machine: {machine()}; {len(paths)} images; model {args.model}; "
        f"{args.points}x{args.points} points; {args.threads} thread(s) per model worker"
    )
    baseline = in_process(args, paths, _overrides(args, root / "in", root / "x", 1))
    print(f"in-process generator: {baseline:.3f} images/s")
    gpus = torch.cuda.device_count() if args.gpu else 0
    ray.init(
        num_cpus=max(4, 2 * args.threads + 2),
        num_gpus=gpus,
        include_dashboard=False,
        log_to_driver=False,
    )
    for workers in (1, 2):
        if args.gpu and workers > gpus:
            break
        output = root / f"out{workers}"
        rate, busy = pipeline(_overrides(args, root / "in", output, workers), output, len(paths))
        print(
            f"pipeline, {workers} model worker(s): {rate:.3f} images/s "
            f"({rate / baseline:.2f}x in-process), model workers busy {100 * busy:.0f}%"
        )
    ray.shutdown()
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
