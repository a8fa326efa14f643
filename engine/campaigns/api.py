"""The campaign's HTTP API (FastAPI): what the browser app and the scripted annotators use.

Every call but /api/health needs `Authorization: Bearer <token>`. An annotator reads and
writes only the image leased to them; admins also read statistics and export. Errors are a
clear 4xx with {"detail": "..."} and nothing stored. The server never runs the image
encoder: embeddings come from the embed job, the decoder runs in the client.
"""

from __future__ import annotations

import io
import re
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field

from engine.campaigns.auth import Annotator, authenticate
from engine.campaigns.campaign import Campaign
from engine.campaigns.errors import Forbidden, NotFound, RequestError
from engine.campaigns.leases import lease_view
from engine.campaigns.limits import BodyLimit, IsolationHeaders
from engine.campaigns.masks import (
    Submission,
    delete_mask,
    reject_prefilled,
    skip_object,
    submit_mask,
)
from engine.campaigns.queue import (
    check_lease,
    end_lease,
    heartbeat,
    lease_from_row,
    lease_next,
    waiting_images,
)

SHA256 = re.compile(r"^[0-9a-f]{64}$")
MAX_BODY_BYTES = 16 * 1024 * 1024  # an uncompressed RLE of a 3000 x 3000 mask fits
IMMUTABLE = "private, max-age=31536000, immutable"


class Rle(BaseModel):
    size: tuple[int, int]
    counts: str | list[int]


class Prompts(BaseModel):
    points: list[tuple[float, float, int]] = Field(default_factory=list, max_length=1000)
    box: tuple[float, float, float, float] | None = None

    def plain(self) -> dict[str, Any]:
        """As stored: {"points": [[x, y, label], ...], "box": [x0, y0, x1, y1] | None}."""
        return {
            "points": [list(point) for point in self.points],
            "box": list(self.box) if self.box is not None else None,
        }


class MaskIn(BaseModel):
    client_id: str = Field(min_length=1, max_length=100)
    lease_id: str = Field(min_length=1, max_length=100)
    image_id: int
    rle: Rle
    model_sha256: str = Field(pattern=SHA256.pattern)
    prompts: Prompts = Field(default_factory=Prompts)
    clicks: int = Field(default=0, ge=0)
    brush_strokes: int = Field(default=0, ge=0)
    seconds: float = Field(default=0.0, ge=0)
    predicted_iou: float | None = None


class SkipObjectIn(BaseModel):
    client_id: str = Field(min_length=1, max_length=100)
    lease_id: str = Field(min_length=1, max_length=100)
    seconds: float = Field(default=0.0, ge=0)
    clicks: int = Field(default=0, ge=0)
    prompts: Prompts = Field(default_factory=Prompts)


class LeaseAction(BaseModel):
    client_id: str | None = Field(default=None, min_length=1, max_length=100)


class RejectIn(BaseModel):
    client_id: str = Field(min_length=1, max_length=100)
    lease_id: str = Field(min_length=1, max_length=100)


def annotator(request: Request, authorization: Annotated[str | None, Header()] = None) -> Annotator:
    """The caller, from `Authorization: Bearer <token>`."""
    return authenticate(request.app.state.campaign, authorization)


def admin(who: Annotated[Annotator, Depends(annotator)]) -> Annotator:
    if not who.is_admin:
        raise Forbidden("admins only")
    return who


Who = Annotated[Annotator, Depends(annotator)]
Admin = Annotated[Annotator, Depends(admin)]


def create_app(
    campaign: Campaign, *, static_dir: Path | None = None, lifespan: Any = None
) -> FastAPI:
    """The API of one campaign (and the annotation page from `static_dir`, if given);
    lifespan: an async context manager run around serving (background jobs)."""
    app = FastAPI(
        title="SA Data Engine campaign",
        description="Annotation campaign API: leases, embeddings, decoders, masks.",
        lifespan=lifespan,
    )
    app.state.campaign = campaign
    app.add_middleware(BodyLimit, max_bytes=MAX_BODY_BYTES)
    app.add_middleware(IsolationHeaders)

    @app.exception_handler(RequestError)
    def _refused(_: Request, error: RequestError) -> JSONResponse:
        return JSONResponse({"detail": error.message}, status_code=error.status)

    @app.get("/api/health")
    def health() -> dict[str, Any]:
        return {"ok": True, "campaign": campaign.dir.name}

    @app.get("/api/me")
    def me(who: Who) -> dict[str, Any]:
        return {"name": who.name, "role": who.role}

    @app.post("/api/lease")
    def lease(who: Who, ahead: bool = False) -> dict[str, Any]:
        """Lease the next image (or get one's current lease back); {"lease": null} when
        nothing can be leased now, with "waiting": the images that will be leasable later
        (stage-2 images waiting for their prefill; 0: the queue is empty). ahead=true: a
        second lease, on the image after the current one, to fetch while annotating (at
        most two per annotator)."""
        held = lease_next(campaign, who.annotator_id, ahead=ahead)
        if held is not None:
            return {"lease": lease_view(campaign, held), "waiting": 0}
        from engine.campaigns.prefill import campaign_detector

        if campaign_detector(campaign) is None:  # nothing will prefill them: do not wait
            return {"lease": None, "waiting": 0}
        with campaign.db.read() as db:
            return {"lease": None, "waiting": waiting_images(db)}

    @app.get("/api/leases/{lease_id}")
    def get_lease(lease_id: str, who: Who) -> dict[str, Any]:
        """The lease again (e.g. to see whether its embedding is ready)."""
        with campaign.db.read() as db:
            row = check_lease(db, lease_id, who.annotator_id)
        return {"lease": lease_view(campaign, lease_from_row(row))}

    @app.post("/api/leases/{lease_id}/heartbeat")
    def renew(lease_id: str, who: Who) -> dict[str, Any]:
        return {"expires_at": heartbeat(campaign, lease_id, who.annotator_id)}

    @app.post("/api/leases/{lease_id}/finish")
    def finish(lease_id: str, body: LeaseAction, who: Who) -> dict[str, Any]:
        status = end_lease(
            campaign, lease_id, who.annotator_id, finish=True, client_id=body.client_id
        )
        return {"status": status}

    @app.post("/api/leases/{lease_id}/skip")
    def skip_image(lease_id: str, body: LeaseAction, who: Who) -> dict[str, Any]:
        status = end_lease(
            campaign, lease_id, who.annotator_id, finish=False, client_id=body.client_id
        )
        return {"status": status}

    @app.get("/api/images/{image_id}/image")
    def image(
        image_id: int,
        who: Who,
        max_side: Annotated[int | None, Query(ge=16, le=8192)] = None,
    ) -> Response:
        """The stored JPEG (max_side: scaled down for display, keeping its aspect)."""
        row = _readable_image(campaign, who, image_id)
        data = campaign.storage.read_bytes(campaign.image_path(row["key"]))
        if max_side is not None and max(row["width"], row["height"]) > max_side:
            data = _scaled(data, max_side)
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": IMMUTABLE})

    @app.get("/api/images/{image_id}/embedding")
    def embedding(
        image_id: int, who: Who, model: Annotated[str, Query(pattern=SHA256.pattern)]
    ) -> Response:
        """The image's fp16 embedding (NumPy .npy: 256 x h x w) for one model version."""
        row = _readable_image(campaign, who, image_id)
        with campaign.db.read() as db:
            ready = db.execute(
                "SELECT input_h, input_w FROM embeddings WHERE image_id = ? AND model_sha256 = ?",
                (image_id, model),
            ).fetchone()
        if ready is None:
            return JSONResponse(
                {"detail": "embedding not computed yet"},
                status_code=409,
                headers={"Retry-After": "2"},
            )
        data = campaign.embeddings(model).read_bytes(row["key"])
        headers = {
            "Cache-Control": IMMUTABLE,
            "X-Input-Size": f"{ready['input_h']},{ready['input_w']}",
            "X-Original-Size": f"{row['height']},{row['width']}",
        }
        return Response(data, media_type="application/octet-stream", headers=headers)

    @app.get("/api/models/{sha256}/{name}")
    def decoder(
        sha256: Annotated[str, PathParam(pattern=SHA256.pattern)], name: str, who: Who
    ) -> Response:
        """A model version's decoder: decoder.onnx or decoder.quant.onnx."""
        if name not in ("decoder.onnx", "decoder.quant.onnx"):
            raise NotFound(f"no {name}")
        with campaign.db.read() as db:
            known = db.execute("SELECT 1 FROM models WHERE sha256 = ?", (sha256,)).fetchone()
        path = campaign.decoder_path(sha256, quantized=name == "decoder.quant.onnx")
        if known is None or not campaign.storage.exists(path):
            raise NotFound(f"no {name} for model {sha256[:12]}")
        data = campaign.storage.read_bytes(path)
        return Response(
            data, media_type="application/octet-stream", headers={"Cache-Control": IMMUTABLE}
        )

    @app.post("/api/masks", status_code=201)
    def submit(body: MaskIn, who: Who, response: Response) -> dict[str, Any]:
        """Store an accepted mask. A retry with the same client_id answers 200 with the
        mask its first attempt stored."""
        mask_id, created = submit_mask(
            campaign,
            who.annotator_id,
            Submission(
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
            ),
        )
        if not created:
            response.status_code = 200
        return {"mask_id": mask_id, "created": created}

    @app.delete("/api/masks/{mask_id}")
    def delete(
        mask_id: int, lease_id: Annotated[str, Query(max_length=100)], who: Who
    ) -> dict[str, Any]:
        delete_mask(campaign, who.annotator_id, mask_id, lease_id)
        return {"deleted": mask_id}

    @app.post("/api/skip-object", status_code=201)
    def skip(body: SkipObjectIn, who: Who) -> dict[str, Any]:
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

    @app.post("/api/prefilled/{mask_id}/reject")
    def reject(mask_id: int, body: RejectIn, who: Who) -> dict[str, Any]:
        reject_prefilled(
            campaign, who.annotator_id, mask_id, lease_id=body.lease_id, client_id=body.client_id
        )
        return {"rejected": mask_id}

    @app.get("/api/stats")
    def stats(who: Admin) -> dict[str, Any]:
        from engine.campaigns.stats import campaign_stats

        return campaign_stats(campaign)

    if static_dir is not None:
        from engine.campaigns.page import page_files

        app.mount("/", page_files(static_dir), name="app")
    return app


def _readable_image(campaign: Campaign, who: Annotator, image_id: int) -> Any:
    """The image row if `who` may read it: held under a live lease, or an admin."""
    with campaign.db.read() as db:
        row = db.execute("SELECT * FROM images WHERE image_id = ?", (image_id,)).fetchone()
        if row is None or row["status"] == "planned" or not row["width"]:
            raise NotFound(f"no image {image_id}")
        if who.is_admin:
            return row
        if row["lease_annotator"] != who.annotator_id or row["lease_id"] is None:
            raise Forbidden(f"image {image_id} is not leased to you")
        check_lease(db, row["lease_id"], who.annotator_id)
    return row


@lru_cache(maxsize=64)
def _scaled(data: bytes, max_side: int) -> bytes:
    from PIL import Image

    image = Image.open(io.BytesIO(data))
    image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()
