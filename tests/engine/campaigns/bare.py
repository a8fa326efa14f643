"""A campaign folder made directly (database, config, model row, image rows), for unit tests
of the queue and the mask store that need no model, no images and no server."""

from __future__ import annotations

import json
import time
from pathlib import Path

from omegaconf import OmegaConf

from engine.campaigns.campaign import CONFIG_FILE, Campaign
from engine.campaigns.db import DB_FILE, Database
from engine.campaigns.state import ImageStatus, Stage

MODEL_SHA = "ab" * 32
OTHER_SHA = "cd" * 32


def bare_campaign(
    folder: Path, *, num_images: int = 4, size_hw: tuple[int, int] = (20, 30), **queue: float
) -> Campaign:
    folder.mkdir(parents=True, exist_ok=True)
    config = {
        "dir": str(folder),
        "stage": "manual",
        "data": None,
        "storage_options": {},
        "queue": {"lease_ttl_s": 60.0, "max_image_skips": 2, **queue},
        "onnx": {"quantize": False},
        "embed": {"ahead": 2, "poll_s": 0.1},
    }
    (folder / CONFIG_FILE).write_text(OmegaConf.to_yaml(OmegaConf.create(config)))
    height, width = size_hw
    database = Database(folder / DB_FILE)
    database.create_schema()
    with database.write() as db:
        db.execute(
            "INSERT INTO models (version, sha256, config, round, created) "
            "VALUES (0, ?, ?, NULL, ?)",
            (MODEL_SHA, json.dumps({"name": "vit_tiny"}), time.time()),
        )
        db.executemany(
            "INSERT INTO images (image_id, key, source, stage, status, width, height) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    i,
                    f"sa_{i}",
                    f"/photos/{i}.jpg",
                    Stage.ASSISTED,
                    ImageStatus.QUEUED,
                    width,
                    height,
                )
                for i in range(1, num_images + 1)
            ],
        )
    database.close()
    return Campaign(folder)


def add_embedding(campaign: Campaign, image_id: int, model: str = MODEL_SHA) -> None:
    with campaign.db.write() as db:
        db.execute(
            "INSERT INTO embeddings (image_id, model_sha256, input_h, input_w, created) "
            "VALUES (?, ?, 16, 16, ?)",
            (image_id, model, time.time()),
        )
