"""Masks: accept one (idempotent by client id), delete one's own, record an object given
up on, reject a wrong prefilled mask (stage 2)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import Response

from engine.campaigns.api.access import Served, Who
from engine.campaigns.api.answers import Deleted, MaskStored, ObjectSkipped, Rejected, refusals
from engine.campaigns.api.bodies import IdPath, LeaseId, MaskIn, RejectIn, SkipObjectIn
from engine.campaigns.masks import (
    Submission,
    delete_mask,
    reject_prefilled,
    skip_object,
    submit_mask,
)

router = APIRouter()
CHANGE = refusals(401, 403, 404, 409, 422)


@router.post(
    "/api/masks",
    status_code=201,
    response_model=MaskStored,
    responses={**CHANGE, 200: {"model": MaskStored, "description": "A retry: the first mask"}},
)
def submit(body: MaskIn, campaign: Served, who: Who, response: Response) -> dict[str, Any]:
    """Store an accepted mask. A retry with the same client_id and body answers 200 with
    the mask its first attempt stored; the client_id of another action or body is a 409."""
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


@router.delete("/api/masks/{mask_id}", response_model=Deleted, responses=CHANGE)
def delete(
    mask_id: IdPath, lease_id: Annotated[LeaseId, Query()], campaign: Served, who: Who
) -> dict[str, Any]:
    delete_mask(campaign, who.annotator_id, mask_id, lease_id)
    return {"deleted": mask_id}


@router.post("/api/skip-object", status_code=201, response_model=ObjectSkipped, responses=CHANGE)
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


@router.post("/api/prefilled/{mask_id}/reject", response_model=Rejected, responses=CHANGE)
def reject(mask_id: IdPath, body: RejectIn, campaign: Served, who: Who) -> dict[str, Any]:
    reject_prefilled(
        campaign, who.annotator_id, mask_id, lease_id=body.lease_id, client_id=body.client_id
    )
    return {"rejected": mask_id}
