"""`saengine generate`: plan, resume and run a generation job from its composed config.

The input is listed once into the output's sorted plan (`engine.generation.plan`): image i
of it gets image_id i + 1, key sa_<image_id> and shard i // images_per_shard, so a rerun
plans exactly the same shards. A rerun skips committed shards (manifest part present) and
redoes the others from scratch. The job's fingerprint (input and its sorted listing, model
weights, generator and image settings, shard size) is stored in job.json; a rerun with
another fingerprint is refused unless force=true, which lists the input again and starts
the output over. One job at a time holds the output (`engine.generation.lock`).
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import time
from dataclasses import asdict, dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf

from engine.cluster import ClusterError, check_output_shared, ray_session
from engine.config import from_config, plain
from engine.dataset import (
    JOB_FILE,
    MANIFEST_DIR,
    RUNS_DIR,
    STAGING_DIR,
    SUMMARY_FILE,
    committed_shards,
    run_name,
    write_summary,
)
from engine.generation.lock import LockSettings, OutputLock
from engine.generation.pipeline import JobStopped, Pipeline
from engine.generation.plan import PlanInfo, iter_plan, read_plan_info, write_plan
from engine.generation.report import print_summary, run_with_progress, worker_report
from engine.images import ImageOptions
from engine.storage import Storage
from engine.workers.pool import Resources, WorkerPool, start_model_workers
from stages.automatic import GeneratorConfig

FORMAT_VERSION = 2
# Where `ray job submit --working-dir` unpacks the job's files on each node.
RAY_WORKING_DIR_MARK = "/runtime_resources/working_dir_files/"
PACKAGES = (
    "sa-data-engine",
    "torch",
    "torchvision",
    "numpy",
    "pillow",
    "pycocotools",
    "ray",
    "pyarrow",
    "webdataset",
)


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
    lock: LockSettings
    force: bool
    progress: bool

    @staticmethod
    def from_config(cfg: DictConfig) -> JobSettings:
        if cfg.images_per_shard < 1:
            raise ValueError(f"images_per_shard must be >= 1, got {cfg.images_per_shard}")
        inputs = plain(cfg.input)
        return JobSettings(
            input=[str(i) for i in inputs] if isinstance(inputs, list) else [str(inputs)],
            output=str(cfg.output),
            images_per_shard=int(cfg.images_per_shard),
            image_options=from_config(ImageOptions, cfg.images),
            generator=from_config(GeneratorConfig, cfg.generator),
            resources=from_config(Resources, cfg.resources),
            model_config=plain(cfg.model),
            storage_options=plain(cfg.get("storage_options")) or {},
            lock=from_config(LockSettings, cfg.get("lock")),
            force=bool(cfg.force),
            progress=bool(cfg.progress),
        )

    def shard_size(self, num_images: int) -> Any:
        """shard -> how many images the plan puts in it."""
        size = self.images_per_shard
        return lambda shard: min(size, num_images - shard * size)


def run_generate(cfg: DictConfig, overrides: list[str]) -> dict[str, Any]:
    """Run (or resume) the job; returns the dataset summary."""
    settings = JobSettings.from_config(cfg)
    _check_checkpoint(settings.model_config.get("checkpoint"))
    storage = Storage(settings.output, settings.storage_options)
    _check_output(storage, settings.output)
    started = time.perf_counter()
    with OutputLock(storage, settings.lock) as lock:
        plan = _plan(storage, settings)
        with ray_session(cfg):
            pool = _start(storage, settings, cfg)
            model = pool.identity
            fingerprint = _fingerprint(settings, plan, model)
            _check_or_claim(storage, fingerprint, force=settings.force)
            run_dir = _write_run_config(storage, cfg, overrides)
            done = set(committed_shards(storage))
            _discard_partial(storage, done)
            sizes = settings.shard_size(plan.num_images)
            skipped = sum(sizes(shard) for shard in done)

            def make_pipeline(**callbacks: Any) -> Pipeline:
                return Pipeline(
                    iter_plan(
                        storage, images_per_shard=settings.images_per_shard, skip_shards=done
                    ),
                    shard_size=sizes,
                    workers=pool.actors,
                    storage=storage,
                    generator_config=settings.generator,
                    image_options=settings.image_options,
                    storage_options=settings.storage_options,
                    resources=settings.resources,
                    should_stop=lambda: (
                        "another job took the output lock over" if lock.lost else None
                    ),
                    **callbacks,
                )

            try:
                result = run_with_progress(
                    make_pipeline, total=plan.num_images, done=skipped, progress=settings.progress
                )
            except JobStopped as stop:
                raise JobError(str(stop)) from stop
        storage.remove(STAGING_DIR)
        summary = _write_summary(storage, fingerprint, model)
    run = {
        "seconds": time.perf_counter() - started,
        "images_processed": plan.num_images - skipped,
        **worker_report(result),
    }
    storage.write_bytes(f"{run_dir}/run.json", json.dumps(run, indent=2).encode())
    print_summary(summary, run, storage, skipped)
    return summary


def _plan(storage: Storage, settings: JobSettings) -> PlanInfo:
    """The output's plan: the one an earlier run wrote for the same input, or a new
    listing (refused when the output holds another job's dataset, unless force=true)."""
    plan = read_plan_info(storage)
    if plan is not None and plan.input == settings.input and not settings.force:
        return plan
    if plan is not None and storage.exists(JOB_FILE) and not settings.force:
        raise JobError(
            f"{storage.url()} holds a job with another input ({plan.input} -> "
            f"{settings.input}); use another output, or force=true to start it over"
        )
    return write_plan(storage, settings.input, settings.storage_options, progress=settings.progress)


def _start(storage: Storage, settings: JobSettings, cfg: DictConfig) -> WorkerPool:
    """Check the cluster, start the model workers (they know the model's identity)."""
    _check_room(settings.resources, embedded=not cfg.ray.address)
    try:
        check_output_shared(storage, f"{RUNS_DIR}/{run_name()}")
    except ClusterError as error:
        raise JobError(str(error)) from error
    return start_model_workers(
        resources=settings.resources,
        model_config=settings.model_config,
        generator_config=settings.generator,
    )


def _check_output(storage: Storage, output: str) -> None:
    """Fail before starting anything when a local output folder cannot be written, or is
    a relative path inside the copy of the job's files that `ray job submit` runs in (Ray
    deletes that copy when it likes: the dataset would go with it)."""
    if not storage.local:
        return
    if not os.path.isabs(output) and RAY_WORKING_DIR_MARK in storage.root:
        raise JobError(
            f"output={output} is relative to the job's working directory, Ray's temporary "
            f"copy of the submitted files ({os.path.dirname(storage.root)}); give an absolute "
            "path on a shared filesystem or an object storage URL"
        )
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


def _fingerprint(settings: JobSettings, plan: PlanInfo, model: dict[str, Any]) -> dict[str, Any]:
    generator = {k: v for k, v in asdict(settings.generator).items() if k != "point_grids"}
    fingerprint = {
        "format_version": FORMAT_VERSION,
        "input": plan.input,
        "num_images": plan.num_images,
        "sources_sha256": plan.sources_sha256,
        "images_per_shard": settings.images_per_shard,
        "images": asdict(settings.image_options),
        "generator": generator,
        "precision": settings.resources.precision,
        "model": {"name": model["name"], "weights_sha256": model["weights_sha256"]},
    }
    # As job.json holds it (tuples become lists), so a rerun compares like with like.
    result: dict[str, Any] = json.loads(json.dumps(fingerprint))
    return result


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
    run_dir = f"{RUNS_DIR}/{run_name()}"
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
