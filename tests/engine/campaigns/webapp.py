"""Campaigns for the annotation page's browser tests, made the way users make them:
`saengine campaign create` on the bundled photos with the bundled model (which exports its
ONNX decoders), `saengine campaign embed` (Ray), `saengine campaign add-annotator`, and a
real `saengine campaign serve`. The campaign is made once per session (`template`) and
copied for each test module."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from omegaconf import OmegaConf
from PIL import Image

from engine.campaigns.campaign import CONFIG_FILE, Campaign
from engine.campaigns.serve import saengine_command
from engine.campaigns.server_process import start_server
from tests.conftest import BUNDLED_IMAGES

# Image ids follow the sorted input: 1 dog (800 x 534), 2 groceries (800 x 534), 3 truck
# (1800 x 1200, larger than the page's 1024-pixel work size).
DOG, GROCERIES, TRUCK = 1, 2, 3


def saengine(*args: str) -> str:
    done = subprocess.run(
        [*saengine_command(), *args], capture_output=True, text=True, timeout=600, check=False
    )
    assert done.returncode == 0, f"saengine {' '.join(args)} failed:\n{done.stderr[-3000:]}"
    return done.stdout


_template: list[Path] = []


def template(factory: pytest.TempPathFactory) -> Path:
    """The session's campaign on the bundled photos with the bundled model, embedded (made on
    first use; copy it to use it)."""
    if not _template:
        _template.append(make_campaign(factory.mktemp("webapp") / "template"))
    return _template[0]


def make_campaign(folder: Path) -> Path:
    saengine(
        "campaign", "create", str(folder), f"input={BUNDLED_IMAGES}", "model=bundled",
        "progress=false",
    )  # fmt: skip
    saengine("campaign", "embed", str(folder), "progress=false")
    return folder


def copy_campaign(template: Path, folder: Path, **queue: float) -> Campaign:
    """A copy of a campaign folder (nothing has it open), with other queue settings."""
    shutil.copytree(template, folder)
    config = OmegaConf.load(folder / CONFIG_FILE)
    for key, value in queue.items():
        config.queue[key] = value
    (folder / CONFIG_FILE).write_text(OmegaConf.to_yaml(config))
    return Campaign(folder)


def add_annotator(campaign: Campaign, name: str) -> str:
    return saengine("campaign", "add-annotator", str(campaign.dir), f"name={name}").strip()


@contextlib.contextmanager
def served(campaign: Campaign) -> Iterator[str]:
    """`saengine campaign serve` on the campaign (no embed job, no rounds); its URL."""
    process, url = start_server(campaign, "embed=false", "rounds=false")
    try:
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def stored_rgb(campaign: Campaign, image_id: int) -> np.ndarray:
    """The image as the campaign stored it (what the annotators see and masks refer to)."""
    import io

    data = campaign.storage.read_bytes(campaign.image_path(f"sa_{image_id}"))
    return np.array(Image.open(io.BytesIO(data)).convert("RGB"))


def mask_rows(campaign: Campaign, image_id: int | None = None) -> list[Any]:
    query = "SELECT * FROM masks" + (" WHERE image_id = ?" if image_id is not None else "")
    with campaign.db.read() as db:
        return list(db.execute(query, () if image_id is None else (image_id,)).fetchall())
