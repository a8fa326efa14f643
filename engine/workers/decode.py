"""Reading and decoding input images in CPU tasks (one image, or a batch of them): a
`DecodedImage`, or a `Failure` whose message becomes the manifest's (or the campaign's)
error for that image."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from engine.errors import first_line
from engine.images import DecodedImage, ImageDecodeError, ImageOptions, decode_image
from engine.sources import ImageSource

T = TypeVar("T")


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


def decode_sources(
    sources: list[ImageSource], options: ImageOptions, storage_options: dict[str, Any]
) -> list[DecodedImage | Failure]:
    """A batch of images decoded in one task; an unexpected error on one image is its
    Failure ("internal error: ...") and the others go on."""
    return [guarded(decode_source, source, options, storage_options) for source in sources]


def guarded(work: Callable[..., T], *args: Any) -> T | Failure:
    """work(*args), or the Failure of one item of a batch that raised unexpectedly."""
    try:
        return work(*args)
    except Exception as error:  # noqa: BLE001 - one image's failure, not the batch's
        return Failure(f"internal error: {type(error).__name__}: {first_line(error)}")
