"""Reading and decoding one input image in a CPU task: a `DecodedImage`, or a `Failure`
whose message becomes the manifest's (or the campaign's) error for that image."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from engine.errors import first_line
from engine.images import DecodedImage, ImageDecodeError, ImageOptions, decode_image
from engine.sources import ImageSource


@dataclass(frozen=True)
class Failure:
    """An image that could not be processed; `message` says why in one line."""

    message: str


def decode_source(
    source: ImageSource, options: ImageOptions, storage_options: dict[str, Any]
) -> DecodedImage | Failure:
    try:
        data = source.read_bytes(storage_options)
    except (OSError, ValueError) as error:
        return Failure(f"cannot read: {first_line(error)}")
    try:
        return decode_image(data, options)
    except ImageDecodeError as error:
        return Failure(str(error))
