"""The API's request bodies (pydantic): what a client sends, checked before anything runs.
Numbers are bounded (ids fit SQLite's integers, floats are finite) and text must be valid
Unicode, so every malformed body is a 422 and never reaches the store."""

from __future__ import annotations

import re
from typing import Annotated, Any

from fastapi import Path
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

SHA256 = re.compile(r"^[0-9a-f]{64}$")
MAX_ID = 2**63 - 1  # SQLite's largest integer
MAX_COUNT = 10**9  # clicks, strokes
MAX_SIDE = 20_000  # of a mask (engine.campaigns.masks.MAX_SIDE)
MAX_RUNS = 2**31  # uncompressed counts (the body size limit comes first)


def valid_unicode(text: str) -> str:
    """Text that can be stored and sent back: no lone surrogates (JSON's "\\ud800")."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise ValueError("text is not valid Unicode (a lone surrogate)") from error
    return text


Text = Annotated[str, AfterValidator(valid_unicode)]
ClientId = Annotated[Text, Field(min_length=1, max_length=100)]
LeaseId = Annotated[Text, Field(min_length=1, max_length=100)]
Id = Annotated[int, Field(ge=1, le=MAX_ID)]
Count = Annotated[int, Field(ge=0, le=MAX_COUNT)]
Seconds = Annotated[float, Field(ge=0, le=10**7, allow_inf_nan=False)]
Coordinate = Annotated[float, Field(ge=-1e6, le=1e6, allow_inf_nan=False)]
Label = Annotated[int, Field(ge=-1, le=3)]


LeaseIdPath = Annotated[str, Path(min_length=1, max_length=100)]
IdPath = Annotated[int, Path(ge=1, le=MAX_ID)]


class Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class Rle(Body):
    """COCO RLE at the stored image's size: counts a compressed string or run lengths
    (column-major, starting with background)."""

    size: tuple[Annotated[int, Field(ge=1, le=MAX_SIDE)], Annotated[int, Field(ge=1, le=MAX_SIDE)]]
    counts: Text | list[Annotated[int, Field(ge=0, le=MAX_RUNS)]]


class Prompts(Body):
    points: list[tuple[Coordinate, Coordinate, Label]] = Field(
        default_factory=list, max_length=1000
    )
    box: tuple[Coordinate, Coordinate, Coordinate, Coordinate] | None = None

    def plain(self) -> dict[str, Any]:
        """As stored: {"points": [[x, y, label], ...], "box": [x0, y0, x1, y1] | None}."""
        return {
            "points": [list(point) for point in self.points],
            "box": list(self.box) if self.box is not None else None,
        }


class MaskIn(Body):
    client_id: ClientId
    lease_id: LeaseId
    image_id: Id
    rle: Rle
    model_sha256: Annotated[str, Field(pattern=SHA256.pattern)]
    prompts: Prompts = Field(default_factory=Prompts)
    clicks: Count = 0
    brush_strokes: Count = 0
    seconds: Seconds = 0.0
    predicted_iou: Annotated[float, Field(ge=-100, le=100, allow_inf_nan=False)] | None = None


class SkipObjectIn(Body):
    client_id: ClientId
    lease_id: LeaseId
    seconds: Seconds = 0.0
    clicks: Count = 0
    prompts: Prompts = Field(default_factory=Prompts)


class LeaseAction(Body):
    client_id: ClientId | None = None


class RejectIn(Body):
    client_id: ClientId
    lease_id: LeaseId


class AnswerIn(Body):
    """A one-key answer on a proposed mask: verdict keep or reject (`state.Verdict`)."""

    client_id: ClientId
    lease_id: LeaseId
    verdict: Annotated[Text, Field(max_length=20)]
    missing: bool = False
    seconds: Seconds = 0.0
