"""Leases: the next image (or one's current lease again), heartbeats, finish and skip; and
what a client receives with a lease: the image, the model version whose embedding is ready
for it (the current model when ready, else the newest one that is), where to fetch the
image, embedding and decoder, and the image's masks so far (nothing accepted is lost when a
lease expires or a page reloads)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from engine.campaigns.api.access import Served, Who
from engine.campaigns.api.answers import (
    Ended,
    LeaseAgain,
    LeaseAnswer,
    Renewed,
    refusals,
)
from engine.campaigns.api.bodies import LeaseAction, LeaseIdPath
from engine.campaigns.campaign import Campaign, campaign_detector
from engine.campaigns.db import now
from engine.campaigns.masks import image_masks
from engine.campaigns.queue import (
    Lease,
    check_lease,
    embedding_eta_s,
    end_lease,
    heartbeat,
    lease_from_row,
    lease_next,
    queue_progress,
    waiting_images,
)
from engine.campaigns.versions import current_model, current_version, newest_embedded_version

router = APIRouter()


HELD = refusals(401, 403, 409, 422)  # a call on a lease one holds


@router.post("/api/lease", response_model=LeaseAnswer, responses=refusals(401, 422))
def lease(campaign: Served, who: Who, ahead: bool = False) -> dict[str, Any]:
    """Lease the next image (or get one's current lease back); {"lease": null} when
    nothing can be leased now, with "waiting": the images that will be leasable later
    (stage-2 images waiting for their prefill; 0: the queue is empty). ahead=true: a
    second lease, on the image after the current one, to fetch while annotating (at
    most two per annotator)."""
    held = lease_next(campaign, who.annotator_id, ahead=ahead)
    if held is not None:
        return {"lease": lease_view(campaign, held, who.annotator_id), "waiting": 0}
    if campaign_detector(campaign) is None:  # nothing will prefill them: do not wait
        return {"lease": None, "waiting": 0}
    with campaign.db.read() as db:
        return {"lease": None, "waiting": waiting_images(db)}


@router.get("/api/leases/{lease_id}", response_model=LeaseAgain, responses=HELD)
def get_lease(lease_id: LeaseIdPath, campaign: Served, who: Who) -> dict[str, Any]:
    """The lease again (e.g. to see whether its embedding is ready)."""
    with campaign.db.read() as db:
        row = check_lease(db, lease_id, who.annotator_id)
    return {"lease": lease_view(campaign, lease_from_row(row), who.annotator_id)}


@router.post("/api/leases/{lease_id}/heartbeat", response_model=Renewed, responses=HELD)
def renew(lease_id: LeaseIdPath, campaign: Served, who: Who) -> dict[str, Any]:
    return {"expires_at": heartbeat(campaign, lease_id, who.annotator_id)}


@router.post("/api/leases/{lease_id}/finish", response_model=Ended, responses=HELD)
def finish(lease_id: LeaseIdPath, body: LeaseAction, campaign: Served, who: Who) -> dict[str, Any]:
    """Finish the image (done); a retry with the same client_id answers the same."""
    status = end_lease(campaign, lease_id, who.annotator_id, finish=True, client_id=body.client_id)
    return {"status": status}


@router.post("/api/leases/{lease_id}/skip", response_model=Ended, responses=HELD)
def skip_image(
    lease_id: LeaseIdPath, body: LeaseAction, campaign: Served, who: Who
) -> dict[str, Any]:
    """Skip the image (back to the queue for the others, or set aside)."""
    status = end_lease(campaign, lease_id, who.annotator_id, finish=False, client_id=body.client_id)
    return {"status": status}


def lease_view(campaign: Campaign, lease: Lease, annotator_id: int) -> dict[str, Any]:
    with campaign.db.read() as db:
        model = newest_embedded_version(db, lease.image_id)
        current = current_version(db)
        masks = image_masks(db, lease.image_id)
        progress = queue_progress(db, annotator_id)
        eta = None if model is not None else embedding_eta_s(db, lease.image_id, current_model(db))
    image_id = lease.image_id
    return {
        "lease_id": lease.lease_id,
        "expires_at": lease.expires_at,
        "ttl_s": campaign.queue.lease_ttl_s,
        "server_time": now(),
        "image": {
            "image_id": image_id,
            "key": lease.key,
            "width": lease.width,
            "height": lease.height,
            "stage": lease.stage,
            "url": f"/api/images/{image_id}/image",
        },
        "model": None if model is None else _model_view(campaign, model, current),
        "embedding_url": None
        if model is None
        else f"/api/images/{image_id}/embedding?model={model['sha256']}",
        "embedding_eta_s": eta,
        "masks": masks,
        "progress": progress,
    }


def _model_view(campaign: Campaign, model: Any, current: int | None) -> dict[str, Any]:
    sha = model["sha256"]
    quantized = campaign.storage.exists(campaign.decoder_path(sha, quantized=True))
    return {
        "sha256": sha,
        "version": model["version"],
        "is_current": model["version"] == current,
        "decoder_url": f"/api/models/{sha}/decoder.onnx",
        "decoder_quant_url": f"/api/models/{sha}/decoder.quant.onnx" if quantized else None,
        "input_size": [model["input_h"], model["input_w"]],
    }
