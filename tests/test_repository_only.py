"""The tests run from the repository alone: the guard in conftest flags files opened beside
the checkout (such as a ../shared folder that a user's fresh clone does not have)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from tests.conftest import REPO, _outside_repository


@pytest.mark.parametrize(
    ("path", "flagged"),
    [
        (REPO.parent / "shared" / "data" / "images" / "bus.jpg", True),
        (REPO.parent / "other-checkout" / "README.md", True),
        (REPO / "samples" / "images" / "dog.jpg", False),
        (REPO / "tests" / "data" / "sa1b_sample.json", False),
        (REPO.parent / ".cache" / "matplotlib" / "fontlist.json", False),
        (Path(tempfile.gettempdir()) / "x.jpg", False),
    ],
)
def test_guard_flags_only_files_beside_the_checkout(path: Path, flagged: bool) -> None:
    assert (_outside_repository(path) is not None) == flagged


def test_test_photos_are_in_the_repository() -> None:
    from tests.engine.inputs import PHOTOS, photo_rgb

    for name in PHOTOS:
        assert photo_rgb(name).ndim == 3
