"""The campaign's model versions: version 0 is the model it was created with, each promoted
retraining round adds the next. Publishing a version exports its decoder for the browsers
(ONNX, and a dynamically quantized variant) before its row is written, so a version the
database names always has its decoder; the newest version is the current model, whose
embeddings the embed job computes ahead of the queue."""

from __future__ import annotations

import json
import sqlite3
import tempfile
from pathlib import Path
from typing import Any

from hydra.utils import instantiate

from engine.campaigns.campaign import Campaign
from engine.campaigns.db import now
from engine.models import weights_sha256
from model import Sam


def model_config_row(db: sqlite3.Connection, model_sha256: str) -> dict[str, Any]:
    row = db.execute("SELECT config FROM models WHERE sha256 = ?", (model_sha256,)).fetchone()
    if row is None:
        raise KeyError(model_sha256)
    config: dict[str, Any] = json.loads(row["config"])
    return config


def versions(db: sqlite3.Connection) -> list[sqlite3.Row]:
    return list(db.execute("SELECT * FROM models ORDER BY version").fetchall())


def publish_model(
    campaign: Campaign, model_config: dict[str, Any], *, round_name: str | None = None
) -> str:
    """Make `model_config` (a `_target_` model config) the campaign's current model;
    returns its weights SHA-256. Publishing the current model again does nothing."""
    sam: Sam = instantiate(model_config)
    sha = weights_sha256(sam)
    with campaign.db.read() as db:
        known = db.execute("SELECT version FROM models WHERE sha256 = ?", (sha,)).fetchone()
    if known is None:
        export_decoders(campaign, sam, sha)
    with campaign.db.write() as db:
        if db.execute("SELECT 1 FROM models WHERE sha256 = ?", (sha,)).fetchone() is None:
            version = db.execute("SELECT COALESCE(MAX(version) + 1, 0) FROM models").fetchone()[0]
            db.execute(
                "INSERT INTO models (version, sha256, config, round, created) "
                "VALUES (?, ?, ?, ?, ?)",
                (version, sha, json.dumps(model_config), round_name, now()),
            )
    return sha


def export_decoders(campaign: Campaign, sam: Sam, model_sha256: str) -> None:
    """decoder.onnx (and decoder.quant.onnx when onnx.quantize) for the browsers."""
    from stages.assisted.onnx_export import export_decoder_onnx, quantize_decoder_onnx

    with tempfile.TemporaryDirectory() as folder:
        plain = export_decoder_onnx(sam, Path(folder) / "decoder.onnx")
        campaign.storage.write_bytes(campaign.decoder_path(model_sha256), plain.read_bytes())
        if bool(campaign.config.onnx.quantize):
            quantized = quantize_decoder_onnx(plain, Path(folder) / "decoder.quant.onnx")
            path = campaign.decoder_path(model_sha256, quantized=True)
            campaign.storage.write_bytes(path, quantized.read_bytes())
