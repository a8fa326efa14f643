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
from collections.abc import Callable, Hashable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
from omegaconf import DictConfig

from engine.campaigns.campaign import Campaign, CampaignError, campaign_detector
from engine.campaigns.embed import store_embedding
from engine.campaigns.jobs import JobKind, JobTally, ModelJob, run_model_job
from engine.campaigns.labels import LABELS_MARK, label_boxes
from engine.campaigns.masks import mask_shape, record_prefill
from engine.campaigns.queue import prefill_failed, waiting_for_prefill
from engine.campaigns.versions import current_model
from engine.config import plain
from engine.embeddings import Embedding, embed_image
from engine.images import DecodedImage
from engine.workers.decode import Failure
from engine.workers.model import ModelWorker
from engine.workers.pool import Resources
from model import SamPredictor
from model.checkpoint import sha256_of
from stages.semi.prefill import PrefillFilter, masks_for_boxes, masks_from_boxes


@dataclass(frozen=True)
class PrefillSettings:
    """detector: the detector file (resolved from `<registry>/detector/latest` and the
    like) and its SHA-256, None when every waiting image has boxes from a label file
    (`engine.campaigns.labels`); score_thresh: the detections kept (None: the detector's confident
    threshold); filter: the masks kept."""

    detector: str | None
    detector_sha256: str | None
    score_thresh: float | None = None
    filter: PrefillFilter = PrefillFilter()


@dataclass
class PrefillResult:
    """The image's embedding, its prefilled masks (database rows), how many boxes SAM was
    given, and whether they came from a label file (else from the detector)."""

    embedding: Embedding
    masks: list[dict[str, Any]]
    detections: int
    from_labels: bool


class PrefillWorker(ModelWorker):
    """A model worker that also holds the detector (and, when the detector was trained on
    another SAM's embeddings, that SAM's encoder for detection)."""

    def __init__(self, *, settings: PrefillSettings, **worker: Any) -> None:
        from stages.semi import load_detector

        super().__init__(**worker)
        if self.init_error:
            return
        self.settings = settings
        self.detector: Any = None
        self.detection: SamPredictor | None = None
        if settings.detector is not None:
            self.detector, self.metadata = load_detector(settings.detector, device=self.device)
            self.detection = self._detection_predictor()

    def _detection_predictor(self) -> SamPredictor | None:
        from hydra.utils import instantiate

        from engine.models import weights_sha256

        own = weights_sha256(self.predictor.model)
        if self.metadata.sam_weights_sha256 == own:
            return None
        if not self.metadata.sam_model:
            raise CampaignError("the detector does not say which SAM made its embeddings")
        return SamPredictor(instantiate(self.metadata.sam_model).to(self.device))

    def prefill(
        self, decoded: DecodedImage | Failure, label_boxes: list[list[float]] | None = None
    ) -> PrefillResult | Failure:
        """The image's embedding and prefilled masks: SAM on `label_boxes` (XYXY, from a
        label file: one mask each) when given, else on the detector's confident boxes."""
        return self.run_on(decoded, lambda image: self._prefill(image, label_boxes), what="prefill")

    def _prefill(self, image: DecodedImage, label_boxes: list[list[float]] | None) -> PrefillResult:
        embedding = embed_image(self.predictor, image.rgb)
        if label_boxes:
            boxes = np.asarray(label_boxes, dtype=np.float64).reshape(-1, 4)
            kept = masks_for_boxes(self.predictor, boxes)
            return PrefillResult(embedding, [_mask_row(m) for m in kept], len(boxes), True)
        if self.detector is None:
            raise ValueError("no detector, and no boxes from a label file for this image")
        boxes, scores = self._detect(image, embedding)
        kept = masks_from_boxes(self.predictor, boxes, scores, self.settings.filter)
        return PrefillResult(embedding, [_mask_row(m) for m in kept], len(boxes), False)

    def _detect(self, image: DecodedImage, embedding: Embedding) -> tuple[np.ndarray, np.ndarray]:
        from stages.semi import detect

        features = embedding.array
        if self.detection is not None:
            features = embed_image(self.detection, image.rgb).array
        return detect(
            self.detector,
            features,
            original_size=image.size_hw,
            score_thresh=self.settings.score_thresh,
        )


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
    return {
        "input_size": list(stored),
        "masks": result.masks,
        "detections": result.detections,
        "from_labels": result.from_labels,
    }


def pending_prefill(campaign: Campaign) -> list[dict[str, Any]]:
    """The stage-2 images waiting for their prefill, in order, with their boxes from a
    label file (`label_boxes`, None when the detector is to find them)."""
    with campaign.db.read() as db:
        rows = waiting_for_prefill(db)
        boxes = label_boxes(db, (row["image_id"] for row in rows))
    return [{**dict(row), "label_boxes": boxes.get(row["image_id"])} for row in rows]


def prefill_settings(
    campaign: Campaign, detector: str | None = None, *, require_detector: bool = False
) -> PrefillSettings:
    """The prefill's settings; the detector (given, or the campaign's) must exist, unless
    every waiting image has boxes from a label file (and a detector is not required)."""
    from engine.detection.registry import resolve_detector_reference

    node: dict[str, Any] = plain(campaign.config.prefill)
    path = detector or campaign_detector(campaign)
    resolved = None
    if path:
        resolved = resolve_detector_reference(str(path))
        if not os.path.isfile(resolved):
            raise CampaignError(f"detector not found: {resolved}")
    elif require_detector or any(row["label_boxes"] is None for row in pending_prefill(campaign)):
        raise CampaignError(
            "no detector: saengine campaign set-stage <dir> stage=semi detector=<file or "
            "registry/detector/latest>"
        )
    return PrefillSettings(
        detector=resolved,
        detector_sha256=None if resolved is None else sha256_of(Path(resolved)),
        score_thresh=node.get("score_thresh"),
        filter=PrefillFilter(**(node.get("filter") or {})),
    )


def _record(campaign: Campaign, key: Hashable, image_id: int, result: Any) -> bool:
    """Commit one image's prefill (False: it failed, and the image is marked so, or it was
    prefilled already)."""
    model_sha256, settings = cast(tuple[str, PrefillSettings], key)
    if isinstance(result, str):
        prefill_failed(campaign, image_id, result)
        return False
    made_by = LABELS_MARK if result["from_labels"] else settings.detector_sha256
    assert made_by is not None
    return record_prefill(
        campaign, image_id, result, model_sha256=model_sha256, detector_sha256=made_by
    )


PREFILL = JobKind(
    name="prefill",
    worker_class=PrefillWorker,
    method="prefill",
    store=split_result,
    record=_record,
    arguments=lambda row: (row["label_boxes"],),
)


def run_prefill(
    campaign: Campaign,
    cfg: DictConfig,
    *,
    follow: bool,
    detector: str | None = None,
    on_progress: Callable[[JobTally, int], None] = lambda tally, todo: None,
) -> JobTally:
    """Prefill every stage-2 image not yet prefilled (see the module docstring)."""

    def current() -> tuple[str, PrefillSettings]:
        with campaign.db.read() as db:
            model = current_model(db) or ""
        return model, prefill_settings(campaign, detector)

    def start(key: Hashable, resources: Resources) -> ModelJob:
        model, settings = cast(tuple[str, PrefillSettings], key)
        return ModelJob(
            campaign, PREFILL, key=key, model_sha256=model, resources=resources, settings=settings
        )

    def pending(job: ModelJob, failed: set[int]) -> list[Any]:
        return [row for row in pending_prefill(campaign) if row["image_id"] not in failed]

    return run_model_job(
        campaign,
        cfg,
        PREFILL,
        follow=follow,
        current=current,
        start=start,
        pending=pending,
        on_progress=on_progress,
    )
