from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SHARED_IMAGES = REPO.parent / "shared" / "data" / "images"
BUNDLED_IMAGES = REPO / "samples" / "images"


def image_dir() -> Path:
    return SHARED_IMAGES if SHARED_IMAGES.is_dir() else BUNDLED_IMAGES


def load_rgb(name: str) -> np.ndarray:
    return np.array(Image.open(image_dir() / name).convert("RGB"))


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
