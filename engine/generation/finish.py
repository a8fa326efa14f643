"""The CPU end of a batch of images in a generation job: for each image the generator's
finishing steps (holes and islands, RLE) and its SA-1B JSON, then the batch's files staged
for its shard as one piece (`engine.dataset.writer.stage_piece`). Plain functions, usable
in-process; the pipeline runs `finish_batch` as a Ray task."""

from __future__ import annotations

from typing import Any

from engine.dataset import ManifestRow, dumps_json
from engine.dataset.writer import StagedFiles, error_row, image_entry, numbered, ok_row, stage_piece
from engine.generation.plan import ImagePlan, PlanBatch
from engine.images import DecodedImage
from engine.storage import Storage
from engine.workers.decode import Failure, guarded
from stages.automatic import GeneratorConfig, finish_candidates, to_annotations
from stages.automatic.columns import MaskColumns


def finish_batch(
    batch: PlanBatch,
    decoded: list[DecodedImage | Failure],
    candidates: list[MaskColumns | Failure],
    *,
    storage: Storage,
    generator_config: GeneratorConfig,
) -> list[ManifestRow]:
    """Post-processing and SA-1B JSON of each image of a batch (all of one shard, in image
    order), their files staged as one piece named by the first image; returns their manifest
    rows (an image that failed anywhere is an error row, the others go on)."""
    plans = batch.plans()
    rows: list[ManifestRow] = []
    staged: list[StagedFiles] = []
    for plan, image, masks in zip(plans, decoded, candidates, strict=True):
        finished = guarded(finish_image, plan, image, masks, generator_config)
        if isinstance(finished, Failure):
            rows.append(failed_row(plan, finished.message))
            continue
        row, files = finished
        rows.append(row)
        if files is not None:
            staged.append((plan.key, files))
    if staged:
        stage_piece(storage, plans[0].shard, plans[0].image_id, staged)
    return rows


def finish_image(
    plan: ImagePlan,
    decoded: DecodedImage | Failure,
    candidates: MaskColumns | Failure,
    generator_config: GeneratorConfig,
) -> tuple[ManifestRow, dict[str, bytes] | None]:
    """One image's manifest row and its files for the shard (None when it failed)."""
    for failed in (decoded, candidates):
        if isinstance(failed, Failure):
            return failed_row(plan, failed.message), None
    assert isinstance(decoded, DecodedImage) and not isinstance(candidates, Failure)
    annotations = to_annotations(finish_candidates(candidates, generator_config))
    height, width = decoded.size_hw
    image: dict[str, Any] = image_entry(plan.image_id, plan.key, width=width, height=height)
    if decoded.blurred is not None:
        image["privacy_blurred"] = decoded.blurred  # regions blurred before generation
    record = {"image": image, "annotations": numbered(plan.image_id, annotations)}
    row = ok_row(
        plan.shard, image_id=plan.image_id, key=plan.key, source=plan.source.source, record=record
    )
    return row, {"jpg": decoded.jpeg, "json": dumps_json(record)}


def failed_row(plan: ImagePlan, message: str) -> ManifestRow:
    """The manifest row of an image of the plan that could not be processed."""
    return error_row(
        image_id=plan.image_id,
        key=plan.key,
        source=plan.source.source,
        shard=plan.shard,
        message=message,
    )
