"""Masks: accept one (idempotent by client id), delete one's own, record an object given
up on, reject a wrong prefilled mask (stage 2)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import Response

from engine.campaigns.api.access import Served, Who
from engine.campaigns.api.bodies import MaskIn, RejectIn, SkipObjectIn
from engine.campaigns.masks import (
    Submission,
    delete_mask,
    reject_prefilled,
    skip_object,
    submit_mask,
)

router = APIRouter()


@router.post("/api/masks", status_code=201)
def submit(body: MaskIn, campaign: Served, who: Who, response: Response) -> dict[str, Any]:
    """Store an accepted mask. A retry with the same client_id answers 200 with the
    mask its first attempt stored."""
    mask_id, created = submit_mask(campaign, who.annotator_id, as_submission(body))
    if not created:
        response.status_code = 200
    return {"mask_id": mask_id, "created": created}


def as_submission(body: MaskIn) -> Submission:
    return Submission(
        client_id=body.client_id,
        lease_id=body.lease_id,
        image_id=body.image_id,
        rle=body.rle.model_dump(),
        model_sha256=body.model_sha256,
        prompts=body.prompts.plain(),
        clicks=body.clicks,
        brush_strokes=body.brush_strokes,
        seconds=body.seconds,
        predicted_iou=body.predicted_iou,
    )


@router.delete("/api/masks/{mask_id}")
def delete(
    mask_id: int, lease_id: Annotated[str, Query(max_length=100)], campaign: Served, who: Who
) -> dict[str, Any]:
    delete_mask(campaign, who.annotator_id, mask_id, lease_id)
    return {"deleted": mask_id}


@router.post("/api/skip-object", status_code=201)
def skip(body: SkipObjectIn, campaign: Served, who: Who) -> dict[str, Any]:
    event_id = skip_object(
        campaign,
        who.annotator_id,
        lease_id=body.lease_id,
        client_id=body.client_id,
        seconds=body.seconds,
        clicks=body.clicks,
        prompts=body.prompts.plain(),
    )
    return {"event_id": event_id}


@router.post("/api/prefilled/{mask_id}/reject")
def reject(mask_id: int, body: RejectIn, campaign: Served, who: Who) -> dict[str, Any]:
    reject_prefilled(
        campaign, who.annotator_id, mask_id, lease_id=body.lease_id, client_id=body.client_id
    )
    return {"rejected": mask_id}
