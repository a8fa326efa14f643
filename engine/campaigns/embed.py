"""`saengine campaign embed`: the image encoder over the campaign's images, on Ray, ahead of
the annotators.

Each image's stored JPEG goes through the generation pipeline's decode task, then a model
worker actor (`ModelWorker.embed`, weights loaded once; one per GPU on a cluster), then a
task that writes the fp16 embedding (engine.embeddings); the database row, written last,
is the commit marker, so a job killed at any moment resumes with what is missing. Order:
leased images that lack an embedding first (an annotator is waiting), then the queue in
order. With `ahead`, only that many queued images are kept embedded beyond the leased ones;
with `follow`, the job keeps doing so as annotators work and switches to a newly promoted
model (recomputing the embeddings of images not yet done), until its parent process ends.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf

from engine.campaigns.campaign import Campaign, CampaignError, exclusive
from engine.campaigns.queue import pending_images
from engine.campaigns.versions import current_model, model_config_row, record_embedding
from engine.cluster import ray_session
from engine.embeddings import Embedding, EmbeddingStore
from engine.images import ImageOptions
from engine.sources import ImageSource
from engine.storage import Storage
from engine.workers.decode import Failure, decode_source
from engine.workers.pool import Resources, start_model_workers


@dataclass
class EmbedReport:
    embedded: int = 0
    failed: int = 0
    models: int = 0


def store_embedding(
    storage: Storage, model_sha256: str, key: str, embedding: Embedding | Failure
) -> tuple[int, int] | str:
    """Write one embedding; returns the unpadded model-input size, or the failure message."""
    if isinstance(embedding, Failure):
        return embedding.message
    EmbeddingStore(storage, model_sha256).write(key, embedding.array)
    return embedding.input_size


class EmbedJob:
    """The Ray side of the job: model workers for one model, and the tasks around them."""

    def __init__(self, campaign: Campaign, model_sha256: str, resources: Resources) -> None:
        import ray

        with campaign.db.read() as db:
            model_config = model_config_row(db, model_sha256)
        self.campaign = campaign
        self.model_sha256 = model_sha256
        self.resources = resources
        self.pool = start_model_workers(
            resources=resources, expect_sha256=model_sha256, model_config=model_config
        )
        self.workers = self.pool.actors
        task: Any = ray.remote(num_cpus=resources.cpus_per_task, max_retries=3)
        self.decode = task(decode_source)
        self.store = task(store_embedding)
        self.image_options = ray.put(ImageOptions(max_short_side=None))

    def run(self, rows: list[Any], on_done: Callable[[int, tuple[int, int] | str], None]) -> None:
        def submit(row: Any, turn: int) -> Any:
            decoded = self.decode.remote(
                self._source(row["key"]), self.image_options, self.campaign.storage.options
            )
            embedding = self.workers[turn % len(self.workers)].embed.remote(decoded)
            return self.store.remote(
                self.campaign.storage, self.model_sha256, row["key"], embedding
            )

        run_bounded(rows, submit, on_done, self.resources.in_flight)

    def _source(self, key: str) -> ImageSource:
        url = self.campaign.storage.url(self.campaign.image_path(key))
        return ImageSource(source=url, url=url)

    def stop(self) -> None:
        import ray

        for worker in self.workers:
            ray.kill(worker)


def run_embed(
    campaign: Campaign,
    cfg: DictConfig,
    *,
    follow: bool,
    ahead: int | None,
    on_progress: Callable[[EmbedReport, int], None] = lambda report, todo: None,
) -> EmbedReport:
    """Embed what is missing (see the module docstring); returns what was done."""
    report = EmbedReport()
    failed: set[int] = set()
    parent = os.getppid()
    resources = Resources(**OmegaConf.to_container(cfg.resources, resolve=True))  # type: ignore[arg-type]
    with exclusive(campaign, "embed"), ray_session(cfg):
        job: EmbedJob | None = None
        while True:
            with campaign.db.read() as db:
                model = current_model(db)
            if model is None:
                raise CampaignError("the campaign has no model")
            if job is None or job.model_sha256 != model:
                if job is not None:
                    job.stop()
                job = EmbedJob(campaign, model, resources)
                failed.clear()
                report.models += 1
            rows = pending_images(campaign, model, ahead, failed)
            if rows:
                on_progress(report, len(rows))

                def done(image_id: int, result: tuple[int, int] | str, sha: str = model) -> None:
                    ok = record_embedding(campaign, sha, image_id, result)
                    if not ok:
                        failed.add(image_id)
                    report.embedded += ok
                    report.failed += not ok
                    on_progress(report, 0)

                job.run(rows, done)
                continue
            if not follow or os.getppid() != parent:
                return report
            time.sleep(float(campaign.config.embed.poll_s))


def run_bounded(
    rows: list[Any],
    submit: Callable[[Any, int], Any],
    on_done: Callable[[int, Any], None],
    in_flight: int,
) -> None:
    """Submit each row's Ray tasks (submit(row, turn) -> the last task's ref), at most
    `in_flight` at a time, and hand each result to on_done(image_id, result) as it ends."""
    import ray

    pending: dict[Any, int] = {}
    queue = list(rows)
    turn = 0
    while queue or pending:
        while queue and len(pending) < in_flight:
            row = queue.pop(0)
            pending[submit(row, turn)] = row["image_id"]
            turn += 1
        ready, _ = ray.wait(list(pending), num_returns=1)
        for ref in ready:
            on_done(pending.pop(ref), ray.get(ref))
