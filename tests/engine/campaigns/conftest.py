"""Campaigns made the way users make them (`saengine campaign create`), on synthetic scenes
with exact masks (the truth for scripted annotators) and on photos."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.training.synthetic import write_synthetic_dataset


@pytest.fixture(scope="session")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Synthetic scenes as SA-1B tar shards: a campaign's input and its truth, and a
    held-out split for rounds."""
    root = tmp_path_factory.mktemp("scenes")
    write_synthetic_dataset(str(root / "train"), num_images=24, split="train", images_per_shard=8)
    write_synthetic_dataset(str(root / "val"), num_images=8, split="val")
    return {"train": root / "train", "val": root / "val"}
