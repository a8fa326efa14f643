"""Decoding what real folders contain into what a dataset stores."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from engine.images import ImageDecodeError, ImageOptions, decode_image
from tests.engine.inputs import png_header_only, small_photo


def _jpeg(image: Image.Image, **kwargs: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=92, **kwargs)
    return buffer.getvalue()


def test_plain_rgb_jpeg_is_stored_byte_for_byte() -> None:
    data = _jpeg(small_photo("dog.jpg"))
    decoded = decode_image(data, ImageOptions())
    assert decoded.jpeg == data
    assert np.array_equal(decoded.rgb, np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))


def test_exif_orientation_is_applied() -> None:
    photo = small_photo("dog.jpg")  # landscape
    exif = Image.Exif()
    exif[0x0112] = 6
    decoded = decode_image(_jpeg(photo, exif=exif), ImageOptions())
    assert decoded.size_hw == (photo.width, photo.height)  # now portrait
    stored = Image.open(io.BytesIO(decoded.jpeg))
    assert stored.size == (photo.height, photo.width)
    assert stored.getexif().get(0x0112, 1) == 1
    # Rotating the original clockwise gives the stored pixels (up to JPEG noise).
    expected = np.asarray(photo.transpose(Image.Transpose.ROTATE_270), dtype=np.float32)
    assert np.abs(decoded.rgb.astype(np.float32) - expected).mean() < 6


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "CMYK", "P", "I;16"])
def test_modes_become_rgb(mode: str) -> None:
    photo = small_photo("groceries.jpg")
    if mode == "I;16":
        image = Image.fromarray(np.asarray(photo.convert("L"), dtype=np.uint16) * 257)
    else:
        image = photo.convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format="TIFF" if mode == "CMYK" else "PNG")
    decoded = decode_image(buffer.getvalue(), ImageOptions())
    assert decoded.rgb.dtype == np.uint8 and decoded.rgb.shape == (photo.height, photo.width, 3)
    gray = np.asarray(photo.convert("L"), dtype=np.float32)
    if mode in ("L", "LA", "I;16"):
        assert np.abs(decoded.rgb[:, :, 0].astype(np.float32) - gray).mean() < 3
    assert Image.open(io.BytesIO(decoded.jpeg)).format == "JPEG"


def test_shortest_side_is_limited_and_jpeg_matches_pixels() -> None:
    photo = small_photo("truck.jpg", long_side=600)  # 600 x 400
    decoded = decode_image(_jpeg(photo), ImageOptions(max_short_side=150))
    assert decoded.size_hw == (150, 225)
    stored = np.asarray(Image.open(io.BytesIO(decoded.jpeg)).convert("RGB"))
    assert np.array_equal(decoded.rgb, stored)
    unchanged = decode_image(_jpeg(photo), ImageOptions(max_short_side=None))
    assert unchanged.size_hw == (400, 600)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty"),
        (b"not an image at all" * 10, "not an image"),
        (png_header_only(60_000, 60_000), "decompression bomb"),
        (png_header_only(12_000, 10_000), "12000x10000"),
    ],
)
def test_bad_inputs_raise_one_line(data: bytes, message: str) -> None:
    with pytest.raises(ImageDecodeError, match=message) as caught:
        decode_image(data, ImageOptions(max_pixels=100_000_000))
    assert "\n" not in str(caught.value)


def test_truncated_jpeg_is_refused() -> None:
    data = _jpeg(small_photo("dog.jpg"))
    with pytest.raises(ImageDecodeError, match="truncated"):
        decode_image(data[: len(data) // 3], ImageOptions())


def test_options_are_validated() -> None:
    with pytest.raises(ValueError, match="max_short_side"):
        ImageOptions(max_short_side=0)
    with pytest.raises(ValueError, match="jpeg_quality"):
        ImageOptions(jpeg_quality=101)
