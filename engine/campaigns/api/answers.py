"""What the API answers, as the OpenAPI document describes it: the JSON of each call, the
refusals ({"detail": "one line"} with their status) and the binary files, so that clients
can be generated from /openapi.json (the property-based fuzz in tests checks the server
against it)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

REASONS = {
    400: "The body is not JSON text",
    401: "Missing or unknown token",
    403: "Another annotator's lease or image, or admins only",
    404: "No such image, mask or file",
    408: "The request body took too long to arrive",
    409: "The lease ended or expired, the embedding is not computed yet (Retry-After), or "
    "the client id was used for another action or body",
    413: "The request body is over the server's limit",
    422: "Malformed input",
    429: "Over the token's request rate or its heavy requests at once (Retry-After)",
}
RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds to wait before trying again",
        "schema": {"type": "integer"},
    }
}


class Refusal(BaseModel):
    """Every refusal: a one-line reason."""

    detail: str


def refusals(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The `responses` of a route for these refusal statuses."""
    answers: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        answer: dict[str, Any] = {"model": Refusal, "description": REASONS[status]}
        if status in (409, 429):
            answer["headers"] = RETRY_AFTER
        answers[status] = answer
    return answers


def binary(media_type: str, description: str) -> dict[int | str, dict[str, Any]]:
    """A 200 answer that is a file, not JSON."""
    schema = {"type": "string", "format": "binary"}
    return {200: {"description": description, "content": {media_type: {"schema": schema}}}}


class Health(BaseModel):
    ok: bool
    campaign: str


class Me(BaseModel):
    name: str
    role: str
    names: dict[str, dict[str, str | int]]
    mode: str


class ImageView(BaseModel):
    image_id: int
    key: str
    width: int
    height: int
    stage: int
    url: str


class ModelView(BaseModel):
    sha256: str
    version: int
    is_current: bool
    decoder_url: str
    decoder_quant_url: str | None
    input_size: list[int]


class RleView(BaseModel):
    size: list[int]
    counts: str


class MaskView(BaseModel):
    mask_id: int
    origin: str
    state: str
    annotator: str | None
    rle: RleView
    bbox: list[int]
    area: int
    model_sha256: str
    detector_score: float | None


class Progress(BaseModel):
    """The campaign's images: done, in all (not counting error rows), left to do (queued or
    leased), and those this annotator finished."""

    done: int
    total: int
    left: int
    mine: int


class LeaseView(BaseModel):
    lease_id: str
    expires_at: float
    ttl_s: float
    server_time: float
    image: ImageView
    model: ModelView | None
    embedding_url: str | None
    embedding_eta_s: float | None
    masks: list[MaskView]
    progress: Progress


class LeaseAnswer(BaseModel):
    lease: LeaseView | None
    waiting: int


class LeaseAgain(BaseModel):
    lease: LeaseView


class Renewed(BaseModel):
    expires_at: float


class Ended(BaseModel):
    status: str


class MaskStored(BaseModel):
    mask_id: int
    created: bool


class Deleted(BaseModel):
    deleted: int


class ObjectSkipped(BaseModel):
    event_id: int


class Rejected(BaseModel):
    rejected: int


class Answered(BaseModel):
    review_id: int


class Corrected(BaseModel):
    mask_id: int
    created: bool
    corrects: int


def complete_answers(schema: dict[str, Any], *, unlimited: tuple[str, ...]) -> None:
    """The OpenAPI document made whole: every refusal is JSON (also on the routes that
    answer files), and the refusals the middleware sends (engine.campaigns.limits) are
    listed: 429 on every API call but the `unlimited` paths; 400 (the body is not text),
    408 and 413 on those with a body."""
    refusal = {"application/json": {"schema": {"$ref": REFUSAL_REF}}}
    for path, operations in schema.get("paths", {}).items():
        if not path.startswith("/api/"):
            continue
        for operation in operations.values():
            answers = operation["responses"]
            for status, answer in answers.items():
                if int(status) >= 400:
                    answer["content"] = refusal
            if path in unlimited:
                continue
            statuses = (400, 408, 413, 429) if "requestBody" in operation else (429,)
            for status, answer in refusals(*statuses).items():
                extra = {"headers": answer["headers"]} if "headers" in answer else {}
                answers.setdefault(
                    str(status),
                    {"description": answer["description"], "content": refusal, **extra},
                )


REFUSAL_REF = "#/components/schemas/Refusal"
