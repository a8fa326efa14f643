"""Decoding input images into what a dataset stores: EXIF orientation applied, converted to
RGB, shortest side at most `max_short_side` (the SA-1B rule), and JPEG bytes.

A source JPEG that needs none of that is stored byte for byte. Anything that cannot be
decoded raises `ImageDecodeError` with a one-line message; the job turns it into an error
row of the manifest.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from engine.errors import first_line
from stages.automatic.images import ImageInputError, to_rgb_uint8


class ImageDecodeError(ValueError):
    """An input image that cannot be used (corrupt, truncated, too large, ...)."""


@dataclass(frozen=True)
class ImageOptions:
    """max_short_side: resize so the shortest side is at most this (None: keep size).
    max_pixels: refuse larger images before decoding them (decompression bombs).
    jpeg_quality: quality of re-encoded JPEGs. privacy: 'off' | 'blur' (find faces and
    licence plates with `privacy_detectors` and blur them in the stored image)."""

    max_short_side: int | None = 1500
    max_pixels: int = 100_000_000
    jpeg_quality: int = 95
    privacy: str = "off"
    privacy_detectors: tuple[str, ...] = ("faces", "plates")

    def __post_init__(self) -> None:
        object.__setattr__(self, "privacy_detectors", tuple(self.privacy_detectors))
        if self.privacy not in ("off", "blur"):
            raise ValueError(f"images.privacy must be off or blur, got {self.privacy!r}")
        if self.privacy == "blur" and not self.privacy_detectors:
            raise ValueError("images.privacy=blur needs at least one images.privacy_detectors")
        if self.max_short_side is not None and self.max_short_side < 1:
            raise ValueError(
                f"images.max_short_side must be >= 1 or null, got {self.max_short_side}"
            )
        if self.max_pixels < 1:
            raise ValueError(f"images.max_pixels must be >= 1, got {self.max_pixels}")
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"images.jpeg_quality must be in [1, 100], got {self.jpeg_quality}")


@dataclass
class DecodedImage:
    """rgb: H x W x 3 uint8, exactly the pixels of `jpeg` decoded. blurred: the regions
    blurred for privacy (None when privacy is off)."""

    jpeg: bytes
    rgb: np.ndarray
    blurred: list[dict[str, Any]] | None = None

    @property
    def size_hw(self) -> tuple[int, int]:
        return int(self.rgb.shape[0]), int(self.rgb.shape[1])


def decode_image(data: bytes, options: ImageOptions) -> DecodedImage:
    try:
        decoded = _decode(data, options)
    except ImageDecodeError:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise ImageDecodeError(f"cannot decode image: {first_line(error)}") from error
    return _blur_private(decoded, options) if options.privacy == "blur" else decoded


def _blur_private(decoded: DecodedImage, options: ImageOptions) -> DecodedImage:
    """Faces and plates blurred in the stored image (re-encoded when anything was found)."""
    from engine.privacy import blur_regions, find_regions

    regions = find_regions(decoded.rgb, options.privacy_detectors)
    if not regions:
        return DecodedImage(jpeg=decoded.jpeg, rgb=decoded.rgb, blurred=[])
    buffer = io.BytesIO()
    Image.fromarray(blur_regions(decoded.rgb, regions)).save(
        buffer, format="JPEG", quality=options.jpeg_quality
    )
    jpeg = buffer.getvalue()
    stored = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"))
    return DecodedImage(jpeg=jpeg, rgb=stored, blurred=[r.record() for r in regions])


def _decode(data: bytes, options: ImageOptions) -> DecodedImage:
    if not data:
        raise ImageDecodeError("empty file")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        Image.MAX_IMAGE_PIXELS = options.max_pixels
        try:
            image = Image.open(io.BytesIO(data))
        except Image.DecompressionBombError as error:
            raise _too_large(options) from error
        except UnidentifiedImageError as error:
            raise ImageDecodeError("not an image (unknown or damaged format)") from error
        width, height = image.size
        if width * height > options.max_pixels:
            raise _too_large(options, f"{width}x{height}")
        source_format = image.format
        image.load()
    oriented = ImageOps.exif_transpose(image)
    rotated = _has_orientation(image)
    rgb_image = _to_rgb_image(oriented)
    resized = _resize_short_side(rgb_image, options.max_short_side)
    untouched = (
        source_format == "JPEG" and image.mode == "RGB" and not rotated and resized is rgb_image
    )
    if untouched:
        return DecodedImage(jpeg=data, rgb=np.asarray(rgb_image))
    buffer = io.BytesIO()
    resized.save(buffer, format="JPEG", quality=options.jpeg_quality)
    jpeg = buffer.getvalue()
    stored = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"))
    return DecodedImage(jpeg=jpeg, rgb=stored)


def _too_large(options: ImageOptions, size: str = "") -> ImageDecodeError:
    what = f"image is {size} pixels" if size else "image is too large"
    return ImageDecodeError(
        f"{what}: over images.max_pixels={options.max_pixels} (decompression bomb guard)"
    )


def _has_orientation(image: Image.Image) -> bool:
    orientation = image.getexif().get(0x0112, 1)
    return orientation not in (None, 1)


def _to_rgb_image(image: Image.Image) -> Image.Image:
    if image.mode == "RGB":
        return image
    if image.mode in ("CMYK", "YCbCr", "LAB", "HSV", "P", "PA", "1"):
        return image.convert("RGBA" if image.mode in ("P", "PA") else "RGB").convert("RGB")
    try:
        return Image.fromarray(to_rgb_uint8(np.asarray(image)))
    except ImageInputError as error:
        raise ImageDecodeError(f"unsupported image ({image.mode}): {error}") from error


def _resize_short_side(image: Image.Image, max_short_side: int | None) -> Image.Image:
    width, height = image.size
    if max_short_side is None or min(width, height) <= max_short_side:
        return image
    scale = max_short_side / min(width, height)
    if width <= height:
        size = (max_short_side, max(1, round(height * scale)))
    else:
        size = (max(1, round(width * scale)), max_short_side)
    return image.resize(size, Image.Resampling.LANCZOS)
