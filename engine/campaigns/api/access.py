"""Who is calling, and which campaign is served: FastAPI dependencies of every route."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from engine.campaigns.auth import Annotator, authenticate
from engine.campaigns.campaign import Campaign
from engine.campaigns.errors import Forbidden

BEARER = HTTPBearer(auto_error=False, description="The token of saengine campaign add-annotator")


async def served_campaign(request: Request) -> Campaign:
    campaign: Campaign = request.app.state.campaign
    return campaign


def annotator(
    request: Request,
    _: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)] = None,
) -> Annotator:
    """The caller, from `Authorization: Bearer <token>` (declared as the API's security
    scheme; checked here, so a missing or unknown token is a 401)."""
    campaign: Campaign = request.app.state.campaign
    return authenticate(campaign, request.headers.get("authorization"))


def admin(who: Annotated[Annotator, Depends(annotator)]) -> Annotator:
    if not who.is_admin:
        raise Forbidden("admins only")
    return who


Served = Annotated[Campaign, Depends(served_campaign)]
Who = Annotated[Annotator, Depends(annotator)]
Admin = Annotated[Annotator, Depends(admin)]
