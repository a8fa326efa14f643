"""The service and its people: health (no token), the caller with the campaign's names
(`state.served_names`: the page uses them instead of spelling states itself), and the
statistics of `saengine campaign stats` (admins only)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from engine.campaigns.api.access import Admin, Served, Who
from engine.campaigns.api.answers import Health, Me, refusals
from engine.campaigns.state import served_names

router = APIRouter()


@router.get("/api/health", response_model=Health)
async def health(campaign: Served) -> dict[str, Any]:
    """No token; answered on the event loop, never behind other requests' threads."""
    return {"ok": True, "campaign": campaign.dir.name}


@router.get("/api/me", response_model=Me, responses=refusals(401))
def me(campaign: Served, who: Who) -> dict[str, Any]:
    """The caller, the campaign's names and its mode (the page follows it)."""
    return {"name": who.name, "role": who.role, "names": served_names(), "mode": campaign.mode}


@router.get("/api/stats", responses=refusals(401, 403))
def stats(campaign: Served, who: Admin) -> dict[str, Any]:
    from engine.campaigns.stats import campaign_stats

    return campaign_stats(campaign)
