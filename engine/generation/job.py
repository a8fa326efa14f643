"""`saengine generate`: plan, resume and run a generation job from its composed config.

Image i of the sorted input gets image_id i + 1, key sa_<image_id> and shard
i // images_per_shard, so a rerun plans exactly the same shards. A rerun skips committed
shards (manifest part present) and redoes the others from scratch. The job's fingerprint
(input list, model weights, generator and image settings, shard size) is stored in job.json;
a rerun with another fingerprint is refused unless force=true, which starts the output over.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from engine.cluster import ray_session
from engine.dataset import (
    JOB_FILE,
    MANIFEST_DIR,
    RUNS_DIR,
    STAGING_DIR,
    STATUS_OK,
    SUMMARY_FILE,
    ManifestRow,
    committed_shards,
    image_key,
    shard_name,
    write_summary,
)
from engine.generation.pipeline import Pipeline, PipelineResult, Resources, start_model_workers
from engine.generation.workers import ImagePlan, ShardInfo
from engine.images import ImageOptions
from engine.sources import ImageSource, list_sources, sources_digest
from engine.storage import Storage
from stages.automatic import GeneratorConfig

FORMAT_VERSION = 1
PACKAGES = ("sa-data-engine", "torch", "numpy", "pillow", "pycocotools", "ray", "pyarrow")


class JobError(RuntimeError):
    """A job that cannot run as configured (one-line message for the user)."""


@dataclass(frozen=True)
class JobSettings:
    input: list[str]
    output: str
    images_per_shard: int
    image_options: ImageOptions
    generator: GeneratorConfig
    resources: Resources
    model_config: dict[str, Any]
    storage_options: dict[str, Any]
    force: bool
    progress: bool

    @staticmethod
    def from_config(cfg: DictConfig) -> JobSettings:
        plain = OmegaConf.to_container(cfg, resolve=True)
        assert isinstance(plain, dict)
        if plain["images_per_shard"] < 1:
            raise ValueError(f"images_per_shard must be >= 1, got {plain['images_per_shard']}")
        inputs = plain["input"]
        return JobSettings(
            input=[str(i) for i in inputs] if isinstance(inputs, list) else [str(inputs)],
            output=str(plain["output"]),
            images_per_shard=int(plain["images_per_shard"]),
            image_options=ImageOptions(**plain["images"]),
            generator=GeneratorConfig(**plain["generator"]),
            resources=Resources(**plain["resources"]),
            model_config=plain["model"],
            storage_options=plain.get("storage_options") or {},
            force=bool(plain["force"]),
            progress=bool(plain["progress"]),
        )


def plan_images(sources: list[ImageSource], images_per_shard: int) -> list[ImagePlan]:
    return [
        ImagePlan(
            image_id=index + 1,
            source=source,
            shard=index // images_per_shard,
            key=image_key(index + 1),
        )
        for index, source in enumerate(sources)
    ]


def run_generate(cfg: DictConfig, overrides: list[str]) -> dict[str, Any]:
    """Run (or resume) the job; returns the dataset summary."""
    import ray

    settings = JobSettings.from_config(cfg)
    _check_checkpoint(settings.model_config.get("checkpoint"))
    storage = Storage(settings.output, settings.storage_options)
    _check_output(storage)
    sources = list_sources(settings.input, settings.storage_options)
    plans = plan_images(sources, settings.images_per_shard)
    started = time.perf_counter()
    with ray_session(cfg):
        _check_room(settings.resources, embedded=not cfg.ray.address)
        workers = start_model_workers(
            model_config=settings.model_config,
            generator_config=settings.generator,
            resources=settings.resources,
        )
        model = ray.get(workers[0].identity.remote())
        if "error" in model:
            raise JobError(f"cannot load model: {model['error']}")
        fingerprint = _fingerprint(settings, sources, model)
        _check_or_claim(storage, fingerprint, force=settings.force)
        run_dir = _write_run_config(storage, cfg, overrides)
        done = set(committed_shards(storage))
        _discard_partial(storage, done)
        todo = [plan for plan in plans if plan.shard not in done]
        result = _run_with_progress(todo, len(plans), workers, storage, settings)
    storage.remove(STAGING_DIR)
    summary = _write_summary(storage, fingerprint, model)
    seconds = time.perf_counter() - started
    run = {"seconds": seconds, "images_processed": len(todo), **_worker_report(result)}
    storage.write_bytes(f"{run_dir}/run.json", json.dumps(run, indent=2).encode())
    _print_summary(summary, run, storage, len(plans) - len(todo))
    return summary


def _check_output(storage: Storage) -> None:
    """Fail before starting anything when a local output folder cannot be written."""
    if not storage.local:
        return
    try:
        os.makedirs(storage.root, exist_ok=True)
    except OSError as error:
        raise JobError(f"cannot create output {storage.root}: {error.strerror}") from error
    if not os.access(storage.root, os.W_OK):
        raise JobError(f"output {storage.root} is not writable")


def _check_checkpoint(checkpoint: str | None) -> None:
    """Fail before starting anything when a local checkpoint path does not exist."""
    from engine.models import resolve_checkpoint_reference

    checkpoint = resolve_checkpoint_reference(checkpoint) if checkpoint else None
    local = checkpoint and checkpoint != "official" and "://" not in checkpoint
    if local and not os.path.isfile(str(checkpoint)):
        raise JobError(f"checkpoint not found: {checkpoint}")


def _check_room(resources: Resources, *, embedded: bool) -> None:
    """On a fixed-size Ray, model workers must leave room for at least one CPU task."""
    import ray

    cpus = ray.cluster_resources().get("CPU", 0.0)
    need = resources.model_actors * resources.cpus_per_actor + resources.cpus_per_task
    if embedded and need > cpus:
        raise JobError(
            f"{resources.model_actors} model worker(s) x {resources.cpus_per_actor} CPUs + "
            f"{resources.cpus_per_task} for a task needs {need:g} CPUs; Ray has {cpus:g} "
            "(lower resources.* or raise ray.num_cpus)"
        )


def _fingerprint(
    settings: JobSettings, sources: list[ImageSource], model: dict[str, Any]
) -> dict[str, Any]:
    generator = {k: v for k, v in asdict(settings.generator).items() if k != "point_grids"}
    return {
        "format_version": FORMAT_VERSION,
        "num_images": len(sources),
        "sources_sha256": sources_digest(sources),
        "images_per_shard": settings.images_per_shard,
        "images": asdict(settings.image_options),
        "generator": generator,
        "precision": settings.resources.precision,
        "model": {"name": model["name"], "weights_sha256": model["weights_sha256"]},
    }


def _check_or_claim(storage: Storage, fingerprint: dict[str, Any], *, force: bool) -> None:
    if storage.exists(JOB_FILE):
        previous = json.loads(storage.read_bytes(JOB_FILE))
        if previous == fingerprint:
            return
        if not force:
            changed = ", ".join(_differences(previous, fingerprint)[:4])
            raise JobError(
                f"{storage.url()} holds a job with another config ({changed}); use another "
                "output, or force=true to start it over"
            )
        for name in storage.list(""):
            if name.startswith("sa_") or name in (MANIFEST_DIR, STAGING_DIR, SUMMARY_FILE):
                storage.remove(name)
    elif committed_shards(storage):
        raise JobError(f"{storage.url()} has shards but no {JOB_FILE}; use another output")
    storage.write_bytes(JOB_FILE, json.dumps(fingerprint, indent=2).encode())


def _differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        found: list[str] = []
        for key in sorted(set(old) | set(new)):
            found += _differences(old.get(key), new.get(key), f"{prefix}{key}.")
        return found
    return [] if old == new else [f"{prefix.rstrip('.')}: {old} -> {new}"]


def _write_run_config(storage: Storage, cfg: DictConfig, overrides: list[str]) -> str:
    run_dir = f"{RUNS_DIR}/{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    raw = "\n".join(f"- {override}" for override in overrides) + "\n"
    storage.write_bytes(f"{run_dir}/overrides.yaml", raw.encode())
    storage.write_bytes(f"{run_dir}/config.yaml", OmegaConf.to_yaml(cfg, resolve=True).encode())
    return run_dir


def _discard_partial(storage: Storage, done: set[int]) -> None:
    """Remove what an interrupted run left of uncommitted shards."""
    storage.remove(STAGING_DIR)
    for name in storage.list(""):
        partial = name.startswith(".sa_") and name.endswith(".partial")
        uncommitted = name.startswith("sa_") and name.endswith(".tar")
        if partial or uncommitted and int(name[3:-4]) not in done:
            storage.remove(name)


def _run_with_progress(
    todo: list[ImagePlan],
    total: int,
    workers: list[Any],
    storage: Storage,
    settings: JobSettings,
) -> PipelineResult:
    masks = [0]
    failed = [0]
    bar = tqdm(
        total=total,
        initial=total - len(todo),
        unit="img",
        desc="generate",
        disable=not settings.progress,
        dynamic_ncols=True,
    )
    start = time.perf_counter()

    def on_image(row: ManifestRow) -> None:
        masks[0] += row.num_masks
        failed[0] += row.status != STATUS_OK
        rate = masks[0] / max(time.perf_counter() - start, 1e-9)
        bar.set_postfix_str(f"{rate:.1f} masks/s, {failed[0]} failed", refresh=False)
        bar.update(1)

    def on_shard(info: ShardInfo) -> None:
        bar.write(
            f"committed {shard_name(info.shard)}.tar: {info.num_ok} images, {info.num_masks} masks"
        )

    with bar:
        return Pipeline(
            todo,
            workers=workers,
            storage=storage,
            generator_config=settings.generator,
            image_options=settings.image_options,
            storage_options=settings.storage_options,
            resources=settings.resources,
            on_image=on_image,
            on_shard=on_shard,
        ).run()


def _write_summary(
    storage: Storage, fingerprint: dict[str, Any], model: dict[str, Any]
) -> dict[str, Any]:
    packages = {name: _version(name) for name in PACKAGES}
    return write_summary(storage, {"job": fingerprint, "model": model, "packages": packages})


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _worker_report(result: PipelineResult) -> dict[str, Any]:
    fractions = [stats["busy_fraction"] for stats in result.worker_stats if stats["images"]]
    return {
        "pipeline_seconds": result.seconds,
        "model_workers": result.worker_stats,
        "model_busy_fraction": sum(fractions) / len(fractions) if fractions else 0.0,
    }


def _print_summary(
    summary: dict[str, Any], run: dict[str, Any], storage: Storage, skipped: int
) -> None:
    lines = [
        f"dataset: {storage.url()}",
        f"images: {summary['images_ok']} ok, {summary['images_failed']} failed"
        + (f" ({skipped} from earlier runs)" if skipped else ""),
        f"masks: {summary['masks']} ({summary['masks_per_image']} per image)",
        f"time: {run['seconds']:.1f} s; model workers busy "
        f"{100 * run['model_busy_fraction']:.0f}% of the time",
        f"look at it: saengine inspect {storage.url()}",
    ]
    print("\n".join(lines), file=sys.stdout)
