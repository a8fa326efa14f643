"""The app factory: one campaign's API routers, the middleware (body size limit,
cross-origin isolation headers), refusals as {"detail": ...} with their status, and the
annotation page."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from engine.campaigns.api import admin, files, leases, masks, review
from engine.campaigns.campaign import Campaign
from engine.campaigns.errors import RequestError
from engine.campaigns.limits import BodyLimit, IsolationHeaders

MAX_BODY_BYTES = 16 * 1024 * 1024  # an uncompressed RLE of a 3000 x 3000 mask fits
ROUTERS = (admin.router, leases.router, files.router, masks.router, review.router)


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
    app.add_exception_handler(RequestError, _refused)  # type: ignore[arg-type]
    for router in ROUTERS:
        app.include_router(router)
    if static_dir is not None:
        from engine.campaigns.page import page_files

        app.mount("/", page_files(static_dir), name="app")
    return app


def _refused(_: Request, error: RequestError) -> JSONResponse:
    return JSONResponse({"detail": error.message}, status_code=error.status)
