"""`saengine campaign embed`: the image encoder over the campaign's images, on Ray, ahead of
the annotators (one of the campaign's background jobs, `engine.campaigns.jobs`).

Each image's stored JPEG is decoded in a task, embedded by a model worker
(`ModelWorker.embed`, weights loaded once; one per GPU on a cluster), then written as fp16 by
a store task (`engine.embeddings`); the database row, written last, is the commit marker.
Order: leased images that lack an embedding first (an annotator is waiting), then the queue
in order. With `ahead`, only that many queued images are kept embedded beyond the leased
ones; with `follow`, the job keeps doing so as annotators work and switches to a newly
promoted model (recomputing the embeddings of images not yet done), until its parent ends.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

from omegaconf import DictConfig

from engine.campaigns.campaign import Campaign, CampaignError
from engine.campaigns.jobs import JobKind, JobTally, ModelJob, run_model_job
from engine.campaigns.queue import pending_images
from engine.campaigns.versions import current_model, record_embedding
from engine.embeddings import Embedding, EmbeddingStore
from engine.storage import Storage
from engine.workers.decode import Failure
from engine.workers.model import ModelWorker
from engine.workers.pool import Resources


def store_embedding(
    storage: Storage, model_sha256: str, key: str, embedding: Embedding | Failure
) -> tuple[int, int] | str:
    """Write one embedding; returns the unpadded model-input size, or the failure message."""
    if isinstance(embedding, Failure):
        return embedding.message
    EmbeddingStore(storage, model_sha256).write(key, embedding.array)
    return embedding.input_size


def _record(campaign: Campaign, model_sha256: Hashable, image_id: int, result: Any) -> bool:
    return record_embedding(campaign, str(model_sha256), image_id, result)


EMBED = JobKind(
    name="embed", worker_class=ModelWorker, method="embed", store=store_embedding, record=_record
)


def run_embed(
    campaign: Campaign,
    cfg: DictConfig,
    *,
    follow: bool,
    ahead: int | None,
    on_progress: Callable[[JobTally, int], None] = lambda tally, todo: None,
) -> JobTally:
    """Embed what is missing (see the module docstring); returns what was done."""

    def model() -> str:
        with campaign.db.read() as db:
            sha = current_model(db)
        if sha is None:
            raise CampaignError("the campaign has no model")
        return sha

    def start(key: Hashable, resources: Resources) -> ModelJob:
        return ModelJob(campaign, EMBED, key=key, model_sha256=str(key), resources=resources)

    return run_model_job(
        campaign,
        cfg,
        EMBED,
        follow=follow,
        current=model,
        start=start,
        pending=lambda job, failed: pending_images(campaign, job.model_sha256, ahead, failed),
        on_progress=on_progress,
    )
