"""`saengine campaign create`: plan a campaign's images with the input handling of
`saengine generate` and publish its first model.

The images are listed (sorted; image i gets id i + 1 and key sa_<id>), then each is decoded
with the same rules (EXIF orientation, RGB, shortest side) and stored as the JPEG the
annotators see and the masks refer to. Files that cannot be used become error rows with
their message. Creating again with the same config continues an interrupted plan.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from engine.campaigns.auth import add_annotator, count_annotators
from engine.campaigns.campaign import CONFIG_FILE, Campaign, CampaignError, data_storage
from engine.campaigns.db import DB_FILE, Database
from engine.campaigns.queue import plan_images, planned_images, record_decoded
from engine.campaigns.state import CampaignMode, Role, Stage, mode_named, stage_named
from engine.campaigns.versions import publish_model
from engine.config import plain
from engine.dataset import image_key
from engine.files import write_atomic
from engine.images import DecodedImage, ImageOptions
from engine.sources import ImageSource, list_sources
from engine.workers.decode import Failure, decode_source

# What a campaign is made of; creating again must give the same, or it is another campaign.
# Keys absent from an older campaign.yaml count as their default.
IDENTITY_KEYS = ("input", "stage", "data", "images", "model", "mode", "sample", "seed", "labels")
IDENTITY_DEFAULTS = {"mode": str(CampaignMode.ANNOTATE)}
DECODE_THREADS = 8


def create_campaign(
    cfg: DictConfig, sources: list[ImageSource] | None = None
) -> tuple[Campaign, str | None]:
    """Create (or finish creating) the campaign; returns it and the admin token (None when
    the admin existed already). sources: the images, when the caller chose them (an audit's
    sample of a dataset); None lists `cfg.input`."""
    directory = Path(str(cfg.dir))
    _check_stage_and_mode(cfg)
    model_config = _absolute_checkpoint(plain(cfg.model))
    cfg = OmegaConf.merge(cfg, {"model": model_config})  # type: ignore[assignment]
    _claim(directory, cfg)
    campaign = Campaign(directory)
    publish_model(campaign, model_config)
    if sources is None:
        sources = list_sources(_inputs(cfg), _options(cfg))
    plan_images(campaign, [(image_key(i + 1), s.source) for i, s in enumerate(sources)])
    _decode_planned(campaign, sources, bool(cfg.progress))
    if cfg.get("labels"):
        _import(campaign, str(cfg.labels), cfg.get("labels_format"), bool(cfg.progress))
    token = None
    with campaign.db.read() as db:
        admins = count_annotators(db, Role.ADMIN)
    if not admins:
        token = add_annotator(campaign, "admin", role=Role.ADMIN)
    return campaign, token


def _import(campaign: Campaign, labels: str, format: str | None, progress: bool) -> None:
    from engine.campaigns.labels import import_labels

    report = import_labels(
        campaign, labels, format=None if format is None else str(format), progress=progress
    )
    print(
        f"labels: {report.masks} masks and {report.boxes} boxes (for SAM) on {report.images} "
        f"images; {len(report.unmatched)} labelled images are not in the input"
        + (f" (first: {report.unmatched[0]})" if report.unmatched else "")
    )


def _check_stage_and_mode(cfg: DictConfig) -> None:
    """A known stage and mode; reviewing modes need proposed masks: stage-2 images."""
    try:
        stage = stage_named(str(cfg.stage))
        mode = mode_named(str(cfg.get("mode", CampaignMode.ANNOTATE)))
    except ValueError as error:
        raise CampaignError(str(error)) from error
    if mode != CampaignMode.ANNOTATE and stage != Stage.SEMI:
        raise CampaignError(
            f"mode={mode} reviews proposed masks: give stage=semi with a detector "
            f"(prefill.detector=...), or use saengine {mode} create <dataset>"
        )


def _claim(directory: Path, cfg: DictConfig) -> None:
    """Write the config and the database, or check that an existing campaign is this one."""
    config_path = directory / CONFIG_FILE
    if config_path.exists():
        previous = OmegaConf.load(config_path)
        assert isinstance(previous, DictConfig)
        changed = [k for k in IDENTITY_KEYS if _identity(previous, k) != _identity(cfg, k)]
        if changed:
            raise CampaignError(
                f"{directory} holds a campaign with another {', '.join(changed)}; "
                "use another folder"
            )
        return
    if directory.exists() and any(directory.iterdir()):
        raise CampaignError(f"{directory} exists and is not empty; use a new folder")
    directory.mkdir(parents=True, exist_ok=True)
    database = Database(directory / DB_FILE)
    database.create_schema()
    database.close()
    write_atomic(config_path, OmegaConf.to_yaml(cfg, resolve=True))
    data_storage(directory, cfg)  # fails early on a bad data URL


def _identity(cfg: DictConfig, key: str) -> Any:
    return plain(cfg.get(key, IDENTITY_DEFAULTS.get(key)))


def _decode_planned(campaign: Campaign, sources: list[ImageSource], progress: bool) -> None:
    """Decode and store every image still planned (`sources` in image-id order)."""
    with campaign.db.read() as db:
        planned = planned_images(db)
    if not planned:
        return
    options = ImageOptions(**plain(campaign.config.images))
    storage_options = _options(campaign.config)

    def store(row: Any) -> tuple[int, DecodedImage | Failure]:
        decoded = decode_source(sources[row["image_id"] - 1], options, storage_options)
        if isinstance(decoded, DecodedImage):
            campaign.storage.write_bytes(campaign.image_path(row["key"]), decoded.jpeg)
        return row["image_id"], decoded

    bar = tqdm(total=len(planned), desc="plan", unit="img", disable=not progress)
    with ThreadPoolExecutor(DECODE_THREADS) as pool, bar:
        for image_id, decoded in pool.map(store, planned):
            outcome = decoded.message if isinstance(decoded, Failure) else decoded.size_hw
            record_decoded(campaign, image_id, outcome)
            bar.update(1)


def _inputs(cfg: DictConfig) -> list[str]:
    value = plain(cfg.input)
    return [str(v) for v in value] if isinstance(value, list) else [str(value)]


def _options(cfg: DictConfig) -> dict[str, Any]:
    options = plain(cfg.get("storage_options") or {})
    return dict(options) if isinstance(options, dict) else {}


def _absolute_checkpoint(model_config: Any) -> dict[str, Any]:
    """A local checkpoint path made absolute: the campaign's jobs run from anywhere."""
    config = dict(model_config)
    checkpoint = config.get("checkpoint")
    if checkpoint and "://" not in str(checkpoint) and os.path.exists(str(checkpoint)):
        config["checkpoint"] = str(Path(str(checkpoint)).resolve())
    return config
