"""The API's request bodies (pydantic): what a client sends, checked before anything runs."""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, Field

SHA256 = re.compile(r"^[0-9a-f]{64}$")


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


class AnswerIn(BaseModel):
    """A one-key answer on a proposed mask: verdict keep or reject (`state.Verdict`)."""

    client_id: str = Field(min_length=1, max_length=100)
    lease_id: str = Field(min_length=1, max_length=100)
    verdict: str = Field(max_length=20)
    missing: bool = False
    seconds: float = Field(default=0.0, ge=0)
