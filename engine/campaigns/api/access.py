"""Who is calling, and which campaign is served: FastAPI dependencies of every route."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Request

from engine.campaigns.auth import Annotator, authenticate
from engine.campaigns.campaign import Campaign
from engine.campaigns.errors import Forbidden


def served_campaign(request: Request) -> Campaign:
    campaign: Campaign = request.app.state.campaign
    return campaign


def annotator(request: Request, authorization: Annotated[str | None, Header()] = None) -> Annotator:
    """The caller, from `Authorization: Bearer <token>`."""
    return authenticate(served_campaign(request), authorization)


def admin(who: Annotated[Annotator, Depends(annotator)]) -> Annotator:
    if not who.is_admin:
        raise Forbidden("admins only")
    return who


Served = Annotated[Campaign, Depends(served_campaign)]
Who = Annotated[Annotator, Depends(annotator)]
Admin = Annotated[Annotator, Depends(admin)]
