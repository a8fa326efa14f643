from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
# The Apache-2.0 sample images shipped in the repository: the only photos tests read.
BUNDLED_IMAGES = REPO / "samples" / "images"
TEST_DATA = REPO / "tests" / "data"


def load_rgb(name: str) -> np.ndarray:
    """A bundled sample photo (dog.jpg, groceries.jpg, truck.jpg) as H x W x 3 uint8."""
    return np.array(Image.open(BUNDLED_IMAGES / name).convert("RGB"))


def portrait_rgb(name: str) -> np.ndarray:
    """A bundled photo turned a quarter (taller than wide), for portrait-shaped inputs."""
    return np.ascontiguousarray(np.rot90(load_rgb(name)))


def _outside_repository(path: object) -> str | None:
    """The path if it lies beside the checkout (a sibling folder such as ../shared), which
    a user's fresh clone does not have; None for paths inside the repository or elsewhere
    (the virtual environment, temporary folders, the system)."""
    if not isinstance(path, (str, bytes, os.PathLike)):
        return None
    try:
        resolved = Path(os.fsdecode(path)).resolve()
    except (OSError, ValueError):
        return None
    parent = REPO.parent
    if not resolved.is_relative_to(parent) or resolved.is_relative_to(REPO):
        return None
    if any(resolved.is_relative_to(allowed) for allowed in _ALLOWED):
        return None
    beside = resolved.relative_to(parent).parts
    # Hidden folders beside a clone in a home directory are tool caches (~/.cache, ~/.ray).
    return None if not beside or beside[0].startswith(".") else str(resolved)


# Folders that hold the checkout itself (a clone made under the temporary folder, as CI
# does) cannot exempt its siblings.
_ALLOWED = tuple(
    folder
    for folder in (Path(sys.prefix).resolve(), Path(tempfile.gettempdir()).resolve())
    if not REPO.parent.is_relative_to(folder)
)
_reads_outside: list[str] = []


def _audit(event: str, args: tuple) -> None:
    if event == "open" and args:
        outside = _outside_repository(args[0])
        if outside is not None:
            _reads_outside.append(outside)


sys.addaudithook(_audit)


@pytest.fixture(autouse=True)
def _repository_only() -> None:
    """Every test runs from the repository alone: a file opened beside the checkout (the
    way a test read ../shared before) fails the test."""
    _reads_outside.clear()
    yield
    found = sorted(set(_reads_outside))
    _reads_outside.clear()
    assert not found, f"the test read files outside the repository: {found[:3]}"


@pytest.fixture(autouse=True)
def _seed_and_threads() -> None:
    torch.manual_seed(0)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
