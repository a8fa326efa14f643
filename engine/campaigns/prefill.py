"""`saengine campaign prefill`: stage 2's prefilled masks, on Ray, once per image.

Per stage-2 image not yet prefilled: the stored image through the generation pipeline's
decode task, then a prefill worker actor (SAM and the detector loaded once): the image
embedding (stored for the annotators, as the embed job would), the detector's confident
boxes on it, SAM's masks for those boxes filtered by `stages.semi.prefill`; the masks come
back as COCO RLE. One database transaction per image stores its embedding row, its
prefilled masks (origin prefilled, state proposed, with the detector's score and both
models' SHA-256) and marks the image prefilled: a job killed at any point redoes only the
images without that mark, and no image is prefilled twice. Stage-2 images are leased only
once prefilled. `follow=true` (run by `serve` for campaigns with stage-2 images) keeps
prefilling as images arrive and switches to a newly published SAM version.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from engine.campaigns.campaign import Campaign, CampaignError, campaign_detector, exclusive
from engine.campaigns.campaign import set_campaign_detector as set_campaign_detector  # moved
from engine.campaigns.embed import run_bounded, store_embedding
from engine.campaigns.masks import mask_shape, record_prefill
from engine.campaigns.queue import prefill_failed, waiting_for_prefill
from engine.campaigns.versions import current_model, model_config_row
from engine.cluster import ray_session
from engine.config import plain
from engine.embeddings import Embedding, embed_image
from engine.errors import first_line
from engine.images import DecodedImage, ImageOptions
from engine.sources import ImageSource
from engine.workers.decode import Failure, decode_source
from engine.workers.model import ModelWorker
from engine.workers.pool import Resources
from model import SamPredictor
from model.checkpoint import sha256_of
from stages.automatic import GeneratorConfig
from stages.semi.prefill import PrefillFilter, masks_from_boxes


@dataclass(frozen=True)
class PrefillSettings:
    """detector: the detector file (or `<registry>/detector/latest`); score_thresh: the
    detections kept (None: the detector's confident threshold); filter: the masks kept."""

    detector: str
    score_thresh: float | None = None
    filter: PrefillFilter = PrefillFilter()


@dataclass
class PrefillResult:
    embedding: Embedding
    masks: list[dict[str, Any]]
    detections: int


class PrefillWorker(ModelWorker):
    """A model worker that also holds the detector (and, when the detector was trained on
    another SAM's embeddings, that SAM's encoder for detection)."""

    def __init__(
        self,
        *,
        model_config: dict[str, Any],
        settings: PrefillSettings,
        device: str = "cpu",
        threads: int | None = None,
    ) -> None:
        from stages.semi import load_detector

        super().__init__(
            model_config=model_config,
            generator_config=GeneratorConfig(),
            device=device,
            threads=threads,
        )
        if self.init_error:
            return
        self.settings = settings
        self.detector, self.metadata = load_detector(settings.detector, device=device)
        self.detector_sha256 = sha256_of(Path(settings.detector))
        self.detection = self._detection_predictor(device)

    def _detection_predictor(self, device: str) -> SamPredictor | None:
        from hydra.utils import instantiate

        from engine.models import weights_sha256

        own = weights_sha256(self.predictor.model)
        if self.metadata.sam_weights_sha256 == own:
            return None
        if not self.metadata.sam_model:
            raise CampaignError("the detector does not say which SAM made its embeddings")
        return SamPredictor(instantiate(self.metadata.sam_model).to(device))

    def prefill(self, decoded: DecodedImage | Failure) -> PrefillResult | Failure:
        if isinstance(decoded, Failure):
            return decoded
        from stages.semi import detect

        started = time.perf_counter()
        self.first_start = self.first_start or started
        predictor = self.predictor
        try:
            embedding = embed_image(predictor, decoded.rgb)
            features = embedding.array
            if self.detection is not None:
                features = embed_image(self.detection, decoded.rgb).array
            boxes, scores = detect(
                self.detector,
                features,
                original_size=decoded.size_hw,
                score_thresh=self.settings.score_thresh,
            )
            kept = masks_from_boxes(predictor, boxes, scores, self.settings.filter)
            return PrefillResult(embedding, [_mask_row(m) for m in kept], len(boxes))
        except (RuntimeError, ValueError) as error:
            return Failure(f"prefill failed: {first_line(error)}")
        finally:
            predictor.reset_image()
            self.last_end = time.perf_counter()
            self.busy_seconds += self.last_end - started
            self.num_images += 1


def _mask_row(prefilled: Any) -> dict[str, Any]:
    shape = mask_shape(prefilled.mask)
    return {
        **asdict(shape),
        "box": prefilled.box_xyxy,
        "detector_score": prefilled.detector_score,
        "predicted_iou": prefilled.predicted_iou,
        "stability_score": prefilled.stability_score,
    }


def split_result(
    storage: Any, model_sha256: str, key: str, result: PrefillResult | Failure
) -> dict[str, Any] | str:
    """In a task: write the embedding; returns the small part for the database."""
    if isinstance(result, Failure):
        return result.message
    stored = store_embedding(storage, model_sha256, key, result.embedding)
    assert not isinstance(stored, str)
    return {"input_size": list(stored), "masks": result.masks, "detections": result.detections}


def pending_prefill(campaign: Campaign) -> list[Any]:
    """The stage-2 images waiting for their prefill, in order."""
    with campaign.db.read() as db:
        return waiting_for_prefill(db)


def prefill_settings(campaign: Campaign, detector: str | None = None) -> PrefillSettings:
    from engine.detection.registry import resolve_detector_reference

    node: dict[str, Any] = plain(campaign.config.prefill)
    path = detector or campaign_detector(campaign)
    if not path:
        raise CampaignError(
            "no detector: saengine campaign set-stage <dir> stage=semi detector=<file or "
            "registry/detector/latest>"
        )
    resolved = resolve_detector_reference(str(path))
    if not os.path.isfile(resolved):
        raise CampaignError(f"detector not found: {resolved}")
    return PrefillSettings(
        detector=resolved,
        score_thresh=node.get("score_thresh"),
        filter=PrefillFilter(**(node.get("filter") or {})),
    )


class PrefillJob:
    """Prefill workers for one SAM version, and the tasks around them."""

    def __init__(
        self, campaign: Campaign, model_sha256: str, settings: PrefillSettings, resources: Resources
    ) -> None:
        import ray

        with campaign.db.read() as db:
            model_config = model_config_row(db, model_sha256)
        device = "cuda" if resources.gpus_per_actor > 0 else "cpu"
        actor: Any = ray.remote(
            num_cpus=resources.cpus_per_actor,
            num_gpus=resources.gpus_per_actor,
            max_restarts=resources.max_restarts,
            max_task_retries=3,
        )(PrefillWorker)
        self.workers: list[Any] = [
            actor.remote(
                model_config=model_config,
                settings=settings,
                device=device,
                threads=max(1, int(resources.cpus_per_actor)),
            )
            for _ in range(resources.model_actors)
        ]
        identity = ray.get(self.workers[0].identity.remote())
        if "error" in identity:
            raise CampaignError(f"cannot load model {model_sha256[:12]}: {identity['error']}")
        self.campaign, self.model_sha256, self.resources = campaign, model_sha256, resources
        self.settings = settings
        self.detector_sha256 = sha256_of(Path(settings.detector))
        task: Any = ray.remote(num_cpus=resources.cpus_per_task, max_retries=3)
        self.decode, self.split = task(decode_source), task(split_result)
        self.options = ray.put(ImageOptions(max_short_side=None))

    def run(self, rows: list[Any], on_done: Callable[[int, dict[str, Any] | str], None]) -> None:
        def submit(row: Any, turn: int) -> Any:
            url = self.campaign.storage.url(self.campaign.image_path(row["key"]))
            decoded = self.decode.remote(
                ImageSource(url, url), self.options, self.campaign.storage.options
            )
            result = self.workers[turn % len(self.workers)].prefill.remote(decoded)
            return self.split.remote(self.campaign.storage, self.model_sha256, row["key"], result)

        run_bounded(rows, submit, on_done, self.resources.in_flight)

    def stop(self) -> None:
        import ray

        for worker in self.workers:
            ray.kill(worker)


@dataclass
class Tally:
    done: int = 0
    failures: set[int] = field(default_factory=set)


def _recorder(
    campaign: Campaign, job: PrefillJob, tally: Tally, on_progress: Callable[[int, int, int], None]
) -> Callable[[int, dict[str, Any] | str], None]:
    """What the job does with each image's result: commit it, or note the failure."""

    def finished(image_id: int, result: dict[str, Any] | str) -> None:
        if isinstance(result, str):
            tally.failures.add(image_id)
            prefill_failed(campaign, image_id, result)
        elif record_prefill(
            campaign,
            image_id,
            result,
            model_sha256=job.model_sha256,
            detector_sha256=job.detector_sha256,
        ):
            tally.done += 1
        on_progress(tally.done, len(tally.failures), 0)

    return finished


def run_prefill(
    campaign: Campaign,
    cfg: DictConfig,
    *,
    follow: bool,
    detector: str | None = None,
    on_progress: Callable[[int, int, int], None] = lambda done, failed, todo: None,
) -> tuple[int, int]:
    """Prefill every stage-2 image not yet prefilled; returns (prefilled, failed)."""
    resources = Resources(**OmegaConf.to_container(cfg.resources, resolve=True))  # type: ignore[arg-type]
    tally = Tally()
    parent = os.getppid()
    with exclusive(campaign, "prefill"), ray_session(cfg):
        job: PrefillJob | None = None
        while True:
            with campaign.db.read() as db:
                model = current_model(db) or ""
            settings = prefill_settings(campaign, detector)
            if job is None or (job.model_sha256, job.settings) != (model, settings):
                if job is not None:
                    job.stop()
                job = PrefillJob(campaign, model, settings, resources)
            rows = [r for r in pending_prefill(campaign) if r["image_id"] not in tally.failures]
            if rows:
                on_progress(tally.done, len(tally.failures), len(rows))
                job.run(rows, _recorder(campaign, job, tally, on_progress))
                continue
            if not follow or os.getppid() != parent:
                return tally.done, len(tally.failures)
            time.sleep(float(campaign.config.embed.poll_s))
