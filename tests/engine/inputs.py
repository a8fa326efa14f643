"""Input images for engine tests: real photos (small) and the bad files real folders hold."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from tests.conftest import load_rgb, portrait_rgb

# The bundled photos, then portrait versions of them (the repository ships only three).
PHOTOS = ("dog.jpg", "groceries.jpg", "truck.jpg", "dog_portrait.jpg", "truck_portrait.jpg")


def photo_rgb(name: str) -> np.ndarray:
    """A bundled photo, or `<name>_portrait.jpg`: that photo turned a quarter."""
    if name.endswith("_portrait.jpg"):
        return portrait_rgb(name.replace("_portrait", ""))
    return load_rgb(name)


def small_photo(name: str, long_side: int = 200) -> Image.Image:
    image = Image.fromarray(photo_rgb(name))
    scale = long_side / max(image.size)
    return image.resize((round(image.width * scale), round(image.height * scale)))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height pixels (a decompression bomb's signature)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )


def write_good_photos(folder: Path, count: int = 3, long_side: int = 200) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in PHOTOS[:count]:
        path = folder / name
        small_photo(name, long_side).save(path, quality=92)
        paths.append(path)
    return paths


def write_bad_inputs(folder: Path) -> dict[str, str]:
    """Corrupt, truncated, huge, 16-bit, CMYK and EXIF-rotated files; returns
    file name -> expected status."""
    folder.mkdir(parents=True, exist_ok=True)
    photo = small_photo("dog.jpg")
    (folder / "corrupt.jpg").write_bytes(b"this is not an image" * 20)
    good = folder / "whole.jpg"
    photo.save(good, quality=92)
    data = good.read_bytes()
    good.unlink()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 3])
    (folder / "huge.png").write_bytes(png_header_only(60_000, 60_000))
    gray16 = (np.asarray(photo.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
    Image.fromarray(gray16).save(folder / "gray16.png")
    photo.convert("CMYK").save(folder / "cmyk.jpg", quality=92)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    photo.save(folder / "rotated.jpg", exif=exif, quality=92)
    return {
        "corrupt.jpg": "error",
        "truncated.jpg": "error",
        "huge.png": "error",
        "gray16.png": "ok",
        "cmyk.jpg": "ok",
        "rotated.jpg": "ok",
    }
