"""Reviews of proposed masks (audit and verify modes): a one-key answer (keep or reject, and
"something is missing here"), and the audit's corrected version of a mask."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import Response

from engine.campaigns.api.access import Served, Who
from engine.campaigns.api.answers import Answered, Corrected
from engine.campaigns.api.bodies import AnswerIn, IdPath, MaskIn
from engine.campaigns.api.masks import CHANGE, as_submission
from engine.campaigns.errors import BadInput
from engine.campaigns.review import Answer, answer_proposed, correct_proposed
from engine.campaigns.state import Verdict

router = APIRouter()


@router.post(
    "/api/proposed/{mask_id}/answer", status_code=201, response_model=Answered, responses=CHANGE
)
def answer(mask_id: IdPath, body: AnswerIn, campaign: Served, who: Who) -> dict[str, Any]:
    """Keep (accept) or reject a proposed mask of the leased image; a retry with the same
    client_id and body returns the first answer's id; another action or body is a 409."""
    try:
        verdict = Verdict(body.verdict)
    except ValueError as error:
        raise BadInput(f"unknown verdict {body.verdict!r}") from error
    review_id = answer_proposed(
        campaign,
        who.annotator_id,
        Answer(
            client_id=body.client_id,
            lease_id=body.lease_id,
            mask_id=mask_id,
            verdict=verdict,
            missing=body.missing,
            seconds=body.seconds,
        ),
    )
    return {"review_id": review_id}


@router.post(
    "/api/proposed/{mask_id}/correct",
    status_code=201,
    response_model=Corrected,
    responses={**CHANGE, 200: {"model": Corrected, "description": "A retry: the first mask"}},
)
def correct(
    mask_id: IdPath, body: MaskIn, campaign: Served, who: Who, response: Response
) -> dict[str, Any]:
    """The corrected version of a proposed mask (a mask body, as POST /api/masks takes),
    stored as the reviewer's mask in its place."""
    corrected, created = correct_proposed(campaign, who.annotator_id, mask_id, as_submission(body))
    if not created:
        response.status_code = 200
    return {"mask_id": corrected, "created": created, "corrects": mask_id}
