"""The campaign's background jobs on Ray (`embed`, `prefill`): one loop for both.

A job runs for a key: the campaign's current model (and, for prefill, its detector
settings). For that key it holds a pool of model workers (`engine.workers.pool`) and the CPU
tasks around them; per pending image: the stored JPEG decoded in a task, the worker's method
on it, then a store task that writes what is large (the embedding) and returns the small
part, which the job records in the database: that row is the commit marker, so a job killed
at any moment redoes only what has no row. The loop holds the campaign's lock for the job,
starts the workers for the current key (again when it changes: a promoted model), runs the
pending images `resources.max_in_flight` at a time and, with `follow`, polls for more until
its parent process ends.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig

from engine.campaigns.campaign import Campaign, exclusive
from engine.campaigns.versions import model_config_row
from engine.cluster import ray_session
from engine.config import from_config
from engine.images import ImageOptions
from engine.sources import ImageSource
from engine.workers.decode import decode_source
from engine.workers.model import ModelWorker
from engine.workers.pool import TASK_RETRIES, Resources, run_bounded, start_model_workers


@dataclass
class JobTally:
    """What a job did: images recorded, images that failed (not retried by this job), and
    how many times it started its workers (once per model)."""

    done: int = 0
    failed: set[int] = field(default_factory=set)
    starts: int = 0


@dataclass(frozen=True)
class JobKind:
    """What differs between the jobs: the lock's name, the worker class and the method it
    runs on a decoded image (with the row's `arguments` after it), the store task (storage,
    SHA-256 of the model whose embedding files it writes, key, worker result) -> small
    result or a failure message, and how a small result is recorded (True: done)."""

    name: str
    worker_class: type[ModelWorker]
    method: str
    store: Callable[..., Any]
    record: Callable[[Campaign, Hashable, int, Any], bool]
    arguments: Callable[[Any], tuple[Any, ...]] = lambda row: ()


class ModelJob:
    """The Ray side of a job for one key: model workers for `model_sha256` (loaded once,
    checked against that SHA-256) and the tasks around them."""

    def __init__(
        self,
        campaign: Campaign,
        kind: JobKind,
        *,
        key: Hashable,
        model_sha256: str,
        resources: Resources,
        **worker_arguments: Any,
    ) -> None:
        import ray

        with campaign.db.read() as db:
            model_config = model_config_row(db, model_sha256)
        self.campaign, self.kind, self.key = campaign, kind, key
        self.model_sha256, self.resources = model_sha256, resources
        # Where its embeddings are written: a version may share its parent's files.
        self.embeddings_sha256 = campaign.embeddings(model_sha256).model_sha256
        self.pool = start_model_workers(
            resources=resources,
            worker_class=kind.worker_class,
            expect_sha256=model_sha256,
            model_config=model_config,
            **worker_arguments,
        )
        task: Any = ray.remote(num_cpus=resources.cpus_per_task, max_retries=TASK_RETRIES)
        self.decode, self.store = task(decode_source), task(kind.store)
        self.options = ray.put(ImageOptions(max_short_side=None))

    def run(self, rows: list[Any], on_done: Callable[[int, Any], None]) -> None:
        """Each row's image through decode, the worker, the store task; on_done(image_id,
        small result or failure message) as each ends."""
        storage = self.campaign.storage
        actors = self.pool.actors

        def submit(row: Any, turn: int) -> Any:
            url = storage.url(self.campaign.image_path(row["key"]))
            decoded = self.decode.remote(ImageSource(url, url), self.options, storage.options)
            method = getattr(actors[turn % len(actors)], self.kind.method)
            result = method.remote(decoded, *self.kind.arguments(row))
            return self.store.remote(storage, self.embeddings_sha256, row["key"], result)

        run_bounded(
            rows,
            submit,
            lambda row, result: on_done(row["image_id"], result),
            self.resources.in_flight,
        )

    def stop(self) -> None:
        self.pool.stop()


def run_model_job(
    campaign: Campaign,
    cfg: DictConfig,
    kind: JobKind,
    *,
    follow: bool,
    current: Callable[[], Hashable],
    start: Callable[[Hashable, Resources], ModelJob],
    pending: Callable[[ModelJob, set[int]], list[Any]],
    on_progress: Callable[[JobTally, int], None] = lambda tally, todo: None,
) -> JobTally:
    """The loop of the module docstring. current(): the key the job must run for now;
    start(key, resources): its workers; pending(job, failed): the rows to do now (without
    the images that failed in this job); on_progress(tally, todo): rows found (todo > 0)
    or one done (todo == 0)."""
    resources = from_config(Resources, cfg.resources)
    tally = JobTally()
    parent = os.getppid()
    with exclusive(campaign, kind.name), ray_session(cfg):
        job: ModelJob | None = None
        while True:
            key = current()
            if job is None or job.key != key:
                if job is not None:
                    job.stop()
                job = start(key, resources)
                tally.failed.clear()
                tally.starts += 1
            rows = pending(job, tally.failed)
            if rows:
                on_progress(tally, len(rows))
                job.run(rows, _recorder(campaign, kind, job.key, tally, on_progress))
                continue
            if not follow or os.getppid() != parent:
                return tally
            time.sleep(float(campaign.config.embed.poll_s))


def _recorder(
    campaign: Campaign,
    kind: JobKind,
    key: Hashable,
    tally: JobTally,
    on_progress: Callable[[JobTally, int], None],
) -> Callable[[int, Any], None]:
    def finished(image_id: int, result: Any) -> None:
        if kind.record(campaign, key, image_id, result):
            tally.done += 1
        elif isinstance(result, str):
            tally.failed.add(image_id)
        on_progress(tally, 0)

    return finished
