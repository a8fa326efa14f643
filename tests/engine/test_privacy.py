"""Privacy blurring (images.privacy=blur): faces found and blurred in the stored image, the
blurred regions listed in the image's JSON, the dataset still valid; user detectors plug in.

Photos with people: matplotlib's bundled portrait of Grace Hopper (public domain) always;
the project's shared bus.jpg and zidane.jpg when SAENGINE_PEOPLE_PHOTOS names a folder
holding copies of them (they may not be bundled). Face points were marked by hand."""

from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.images import ImageOptions, decode_image
from engine.privacy import Detection
from tests.engine.jobrun import FAST, run_saengine

# Hand-marked points on each face (eyes, mouth), x y in the photo's pixels.
FACES = {
    "grace_hopper.jpg": [[(225, 195), (310, 195), (262, 275)]],
    "bus.jpg": [[(135, 430)], [(287, 440)]],
    "zidane.jpg": [[(600, 330)], [(980, 180)]],
}


def _photo(name: str) -> bytes:
    if name == "grace_hopper.jpg":
        import matplotlib.cbook

        return Path(matplotlib.cbook.get_sample_data(name, asfileobj=False)).read_bytes()
    folder = os.environ.get("SAENGINE_PEOPLE_PHOTOS")
    if not folder or not (Path(folder) / name).exists():
        pytest.skip(f"set SAENGINE_PEOPLE_PHOTOS to a folder with {name}")
    return (Path(folder) / name).read_bytes()


def _inside(point: tuple[int, int], bbox: list[int]) -> bool:
    x, y, w, h = bbox
    return x <= point[0] <= x + w and y <= point[1] <= y + h


@pytest.mark.parametrize("name", sorted(FACES))
def test_every_face_is_found_and_blurred(name: str) -> None:
    data = _photo(name)
    options = ImageOptions(max_short_side=None, privacy="blur", privacy_detectors=("faces",))
    plain = decode_image(data, ImageOptions(max_short_side=None))
    blurred = decode_image(data, options)
    faces = [r["bbox"] for r in blurred.blurred or [] if r["label"] == "face"]
    for points in FACES[name]:
        assert any(all(_inside(p, box) for p in points) for box in faces), (name, faces)
    for x, y, w, h in faces:
        before = plain.rgb[y : y + h, x : x + w].astype(float)
        after = blurred.rgb[y : y + h, x : x + w].astype(float)
        detail = np.abs(np.diff(before, axis=1)).mean()
        assert np.abs(np.diff(after, axis=1)).mean() < 0.5 * detail, "not blurred"
    assert blurred.jpeg != data


class FixedBox:
    """A user's detector (images.privacy_detectors=[module:Class])."""

    def detect(self, rgb: np.ndarray) -> list[Detection]:
        return [Detection("sign", (10, 20, 50, 60), 0.5)]


def test_generate_blurs_before_masks_and_lists_the_regions(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "portrait.jpg").write_bytes(_photo("grace_hopper.jpg"))
    shutil.copy(photos / "portrait.jpg", photos / "again.jpg")
    output = tmp_path / "dataset"
    result = run_saengine(
        "generate",
        f"input={photos}",
        f"output={output}",
        *FAST,
        "images.max_short_side=null",
        "images.privacy=blur",
        "images.privacy_detectors=[faces,tests.engine.test_privacy:FixedBox]",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    with tarfile.open(output / "sa_000000.tar") as tar:
        record = json.load(tar.extractfile("sa_1.json"))  # type: ignore[arg-type]
        stored = Image.open(io.BytesIO(tar.extractfile("sa_1.jpg").read()))  # type: ignore[union-attr]
    regions = record["image"]["privacy_blurred"]
    assert [r["label"] for r in regions] == ["face", "sign"]
    assert regions[1]["bbox"] == [10, 20, 40, 40]
    assert all(_inside(p, regions[0]["bbox"]) for p in FACES["grace_hopper.jpg"][0])
    original = np.asarray(Image.open(photos / "portrait.jpg").convert("RGB")).astype(float)
    x, y, w, h = regions[0]["bbox"]
    face_change = np.abs(np.asarray(stored, dtype=float) - original)[y : y + h, x : x + w]
    assert face_change.mean() > 5
    assert run_saengine("inspect", str(output)).returncode == 0


def test_privacy_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="images.privacy"):
        ImageOptions(privacy="pixelate")
    with pytest.raises(ValueError, match="privacy_detectors"):
        ImageOptions(privacy="blur", privacy_detectors=())
