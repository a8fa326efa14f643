"""The CPU end of one image in a generation job: the generator's finishing steps (holes and
islands, RLE), its SA-1B JSON, and its two files staged for its shard
(`engine.dataset.writer`). A plain function, usable in-process; the pipeline runs it as a Ray
task."""

from __future__ import annotations

from typing import Any

from engine.dataset import ManifestRow
from engine.dataset.writer import error_row, image_entry, numbered, stage_image
from engine.generation.plan import ImagePlan
from engine.images import DecodedImage
from engine.storage import Storage
from engine.workers.decode import Failure
from stages.automatic import GeneratorConfig, finish_candidates, to_annotations
from stages.automatic.columns import MaskColumns


def finish_image(
    plan: ImagePlan,
    decoded: DecodedImage | Failure,
    candidates: MaskColumns | Failure,
    *,
    storage: Storage,
    generator_config: GeneratorConfig,
) -> ManifestRow:
    """Post-processing, SA-1B JSON, and the image's two files staged for its shard."""
    for failed in (decoded, candidates):
        if isinstance(failed, Failure):
            return failed_row(plan, failed.message)
    assert isinstance(decoded, DecodedImage) and not isinstance(candidates, Failure)
    annotations = to_annotations(finish_candidates(candidates, generator_config))
    height, width = decoded.size_hw
    image: dict[str, Any] = image_entry(plan.image_id, plan.key, width=width, height=height)
    if decoded.blurred is not None:
        image["privacy_blurred"] = decoded.blurred  # regions blurred before generation
    return stage_image(
        storage,
        plan.shard,
        image_id=plan.image_id,
        key=plan.key,
        source=plan.source.source,
        jpeg=decoded.jpeg,
        record={"image": image, "annotations": numbered(plan.image_id, annotations)},
    )


def failed_row(plan: ImagePlan, message: str) -> ManifestRow:
    """The manifest row of an image of the plan that could not be processed."""
    return error_row(
        image_id=plan.image_id,
        key=plan.key,
        source=plan.source.source,
        shard=plan.shard,
        message=message,
    )
