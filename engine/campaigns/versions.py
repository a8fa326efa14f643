"""The campaign's model versions and their embeddings' rows.

Version 0 is the model the campaign was created with, each promoted retraining round adds
the next. A version whose image encoder is the current version's (a decoder round's model)
keeps its embeddings: its row names the version whose embedding files it reads
(`embeddings_sha256`) and the current version's embedding rows are copied to it in the
transaction that adds it, so the annotators switch to it without any image being embedded
again. Publishing a version exports its decoder for the browsers (ONNX, and a
dynamically quantized variant) before its row is written, so a version the database names
always has its decoder; the newest version is the current model, whose embeddings the embed
job computes ahead of the queue. An embedding's row (the model-input size it was computed
at) is written after its file: the row is the commit marker.
"""

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


def current_model(db: sqlite3.Connection) -> str | None:
    """The SHA-256 of the newest version (None before the first is published)."""
    row = db.execute("SELECT sha256 FROM models ORDER BY version DESC LIMIT 1").fetchone()
    return None if row is None else str(row["sha256"])


def current_version(db: sqlite3.Connection) -> int | None:
    version = db.execute("SELECT MAX(version) FROM models").fetchone()[0]
    return None if version is None else int(version)


def model_known(db: sqlite3.Connection, model_sha256: str) -> bool:
    return (
        db.execute("SELECT 1 FROM models WHERE sha256 = ?", (model_sha256,)).fetchone() is not None
    )


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
    returns its weights SHA-256. Publishing the current model again does nothing. A model
    with the current one's image encoder keeps its embeddings (see the module docstring)."""
    sam: Sam = instantiate(model_config)
    sha, encoder = weights_sha256(sam), weights_sha256(sam.image_encoder)
    with campaign.db.read() as db:
        known = model_known(db, sha)
        current = db.execute("SELECT * FROM models ORDER BY version DESC LIMIT 1").fetchone()
    if known:
        return sha
    export_decoders(campaign, sam, sha)
    shared = current is not None and _encoder_sha256(current) == encoder
    with campaign.db.write() as db:
        if model_known(db, sha):
            return sha
        version = db.execute("SELECT COALESCE(MAX(version) + 1, 0) FROM models").fetchone()[0]
        owner = (current["embeddings_sha256"] or current["sha256"]) if shared else None
        db.execute(
            "INSERT INTO models (version, sha256, config, round, created, encoder_sha256, "
            "embeddings_sha256) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (version, sha, json.dumps(model_config), round_name, now(), encoder, owner),
        )
        if shared:
            db.execute(
                "INSERT OR IGNORE INTO embeddings (image_id, model_sha256, input_h, input_w, "
                "created) SELECT image_id, ?, input_h, input_w, created FROM embeddings "
                "WHERE model_sha256 = ?",
                (sha, current["sha256"]),
            )
    return sha


def _encoder_sha256(row: sqlite3.Row) -> str:
    """A version's image encoder SHA-256 (computed for a version recorded before the
    database kept it)."""
    if row["encoder_sha256"]:
        return str(row["encoder_sha256"])
    sam: Sam = instantiate(json.loads(row["config"]))
    return weights_sha256(sam.image_encoder)


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


def insert_embedding(
    db: sqlite3.Connection, image_id: int, model_sha256: str, input_hw: tuple[int, int]
) -> None:
    """The row of an embedding whose file is written (kept if it exists already)."""
    db.execute(
        "INSERT OR IGNORE INTO embeddings (image_id, model_sha256, input_h, input_w, created) "
        "VALUES (?, ?, ?, ?, ?)",
        (image_id, model_sha256, int(input_hw[0]), int(input_hw[1]), now()),
    )


def record_embedding(
    campaign: Campaign, model_sha256: str, image_id: int, result: tuple[int, int] | str
) -> bool:
    """The commit marker of one embedding (False: it failed, nothing recorded)."""
    if isinstance(result, str):
        return False
    with campaign.db.write() as db:
        insert_embedding(db, image_id, model_sha256, result)
    return True


def embedding_size(
    db: sqlite3.Connection, image_id: int, model_sha256: str
) -> tuple[int, int] | None:
    """The model-input size (h, w) of the image's embedding for the model; None when that
    embedding is not computed yet."""
    row = db.execute(
        "SELECT input_h, input_w FROM embeddings WHERE image_id = ? AND model_sha256 = ?",
        (image_id, model_sha256),
    ).fetchone()
    return None if row is None else (int(row["input_h"]), int(row["input_w"]))


def newest_embedded_version(db: sqlite3.Connection, image_id: int) -> sqlite3.Row | None:
    """The newest model version with an embedding of the image: sha256, version, input_h,
    input_w (None when there is none)."""
    row: sqlite3.Row | None = db.execute(
        "SELECT m.sha256, m.version, e.input_h, e.input_w FROM embeddings e "
        "JOIN models m ON m.sha256 = e.model_sha256 WHERE e.image_id = ? "
        "ORDER BY m.version DESC LIMIT 1",
        (image_id,),
    ).fetchone()
    return row


def count_embeddings(db: sqlite3.Connection, model_sha256: str | None) -> int:
    row = db.execute(
        "SELECT COUNT(*) FROM embeddings WHERE model_sha256 = ?", (model_sha256,)
    ).fetchone()
    return int(row[0])
