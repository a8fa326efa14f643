"""The app factory: one campaign's API routers, the middleware (request limits, body size
and time limits, cross-origin isolation headers), refusals as {"detail": "..."} with their
status (malformed requests too), the OpenAPI document with every answer, and the annotation
page."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse

from engine.campaigns.api import admin, files, leases, masks, review
from engine.campaigns.api.answers import complete_answers
from engine.campaigns.campaign import Campaign
from engine.campaigns.errors import RequestError
from engine.campaigns.limits import (
    UNLIMITED_PATHS,
    BodyLimit,
    IsolationHeaders,
    RequestLimits,
    ServeLimits,
)

ROUTERS = (admin.router, leases.router, files.router, masks.router, review.router)


def create_app(
    campaign: Campaign,
    *,
    static_dir: Path | None = None,
    lifespan: Any = None,
    limits: ServeLimits | None = None,
) -> FastAPI:
    """The API of one campaign (and the annotation page from `static_dir`, if given);
    lifespan: an async context manager run around serving (background jobs)."""
    limits = limits or ServeLimits()
    app = FastAPI(
        title="SA Data Engine campaign",
        description="Annotation campaign API: leases, embeddings, decoders, masks. Every "
        'refusal is a 4xx with {"detail": "one line"}.',
        lifespan=lifespan,
    )
    app.state.campaign = campaign
    app.add_middleware(BodyLimit, max_bytes=limits.max_body_bytes, timeout_s=limits.body_timeout_s)
    app.add_middleware(RequestLimits, limits=limits)
    app.add_middleware(IsolationHeaders)
    app.add_exception_handler(RequestError, _refused)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _malformed)  # type: ignore[arg-type]
    for router in ROUTERS:
        app.include_router(router)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    if static_dir is not None:  # what no route matches (a route's other methods get a 405)
        from engine.campaigns.page import page_files

        app.router.default = page_files(static_dir)
    return app


def _refused(_: Request, error: RequestError) -> JSONResponse:
    return JSONResponse({"detail": error.message}, status_code=error.status)


def _malformed(_: Request, error: RequestValidationError) -> JSONResponse:
    """A 422 with one line naming what is wrong (never echoing the input, which may not
    even be text that can be sent back)."""
    return JSONResponse({"detail": validation_message(error.errors())}, status_code=422)


def validation_message(errors: Any) -> str:
    """'body.rle.size.0: Input should be greater than or equal to 1; ...' (first three)."""
    parts = []
    for error in list(errors)[:3]:
        where = ".".join(str(part) for part in error.get("loc", ()))
        message = str(error.get("msg", "invalid")).encode("utf-8", "replace").decode()
        parts.append(f"{where}: {message}" if where else message)
    more = len(list(errors)) - len(parts)
    return "malformed request: " + "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


def _openapi(app: FastAPI) -> dict[str, Any]:
    if app.openapi_schema is None:
        schema = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        complete_answers(schema, unlimited=UNLIMITED_PATHS)
        app.openapi_schema = schema
    return app.openapi_schema
