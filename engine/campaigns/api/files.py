"""Image and model files: the stored image (or a smaller copy for display), an image's
embedding for one model version, a model version's browser decoder. Versioned files are
sent as immutable (cacheable for good)."""

from __future__ import annotations

import io
from functools import lru_cache
from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi import Path as PathParam
from fastapi.responses import JSONResponse, Response

from engine.campaigns.api.access import Served, Who
from engine.campaigns.api.answers import binary, refusals
from engine.campaigns.api.bodies import SHA256, IdPath
from engine.campaigns.auth import Annotator
from engine.campaigns.campaign import Campaign
from engine.campaigns.errors import Forbidden, NotFound
from engine.campaigns.queue import check_lease, image_row
from engine.campaigns.state import ImageStatus
from engine.campaigns.versions import embedding_size, model_known

IMMUTABLE = "private, max-age=31536000, immutable"
DECODER_FILES = ("decoder.onnx", "decoder.quant.onnx")

router = APIRouter()
READ = refusals(401, 403, 404, 409, 422)


class JpegResponse(Response):
    media_type = "image/jpeg"


class FileResponse(Response):
    media_type = "application/octet-stream"


@router.get(
    "/api/images/{image_id}/image",
    response_class=JpegResponse,
    responses=binary("image/jpeg", "The stored image, or a smaller copy") | READ,
)
def image(
    image_id: IdPath,
    campaign: Served,
    who: Who,
    max_side: Annotated[int | None, Query(ge=16, le=8192)] = None,
) -> Response:
    """The stored JPEG (max_side: scaled down for display, keeping its aspect)."""
    row = _readable_image(campaign, who, image_id)
    data = campaign.storage.read_bytes(campaign.image_path(row["key"]))
    if max_side is not None and max(row["width"], row["height"]) > max_side:
        data = _scaled(data, max_side)
    return JpegResponse(data, headers={"Cache-Control": IMMUTABLE})


@router.get(
    "/api/images/{image_id}/embedding",
    response_class=FileResponse,
    responses=binary("application/octet-stream", "The fp16 embedding (.npy)") | READ,
)
def embedding(
    image_id: IdPath,
    campaign: Served,
    who: Who,
    model: Annotated[str, Query(pattern=SHA256.pattern)],
) -> Response:
    """The image's fp16 embedding (NumPy .npy: 256 x h x w) for one model version."""
    row = _readable_image(campaign, who, image_id)
    with campaign.db.read() as db:
        size = embedding_size(db, image_id, model)
    if size is None:
        return JSONResponse(
            {"detail": "embedding not computed yet"},
            status_code=409,
            headers={"Retry-After": "2"},
        )
    data = campaign.embeddings(model).read_bytes(row["key"])
    headers = {
        "Cache-Control": IMMUTABLE,
        "X-Input-Size": f"{size[0]},{size[1]}",
        "X-Original-Size": f"{row['height']},{row['width']}",
    }
    return FileResponse(data, headers=headers)


@router.get(
    "/api/models/{sha256}/{name}",
    response_class=FileResponse,
    responses=binary("application/octet-stream", "The ONNX decoder") | refusals(401, 404, 422),
)
def decoder(
    sha256: Annotated[str, PathParam(pattern=SHA256.pattern)],
    name: Annotated[str, PathParam(max_length=40)],
    campaign: Served,
    who: Who,
) -> Response:
    """A model version's decoder: decoder.onnx or decoder.quant.onnx."""
    if name not in DECODER_FILES:
        raise NotFound(f"no {name}")
    with campaign.db.read() as db:
        known = model_known(db, sha256)
    path = campaign.decoder_path(sha256, quantized=name == "decoder.quant.onnx")
    if not known or not campaign.storage.exists(path):
        raise NotFound(f"no {name} for model {sha256[:12]}")
    data = campaign.storage.read_bytes(path)
    return FileResponse(data, headers={"Cache-Control": IMMUTABLE})


def _readable_image(campaign: Campaign, who: Annotator, image_id: int) -> Any:
    """The image row if `who` may read it: held under a live lease, or an admin."""
    with campaign.db.read() as db:
        row = image_row(db, image_id)
        if row is None or row["status"] == ImageStatus.PLANNED or not row["width"]:
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

    picture = Image.open(io.BytesIO(data))
    picture.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()
