"""Retraining rounds of a campaign, triggered by collected masks (`retrain_every`).

A round exports every mask accepted so far (up to a cutoff fixed when the round starts) as
SA-1B shards, holds out every `holdout_every`-th image for evaluation unless the config
names held-out datasets, runs a retraining round (engine.training: Ray Train, registry,
promotion against the parent on the same held-out data) and, when the new model is
promoted, publishes it as the campaign's next model version (decoder exported; the embed
job then recomputes the embeddings of images not yet done). `rounds.kind` chooses what a
round trains: `full` (every weight) or `decoder` (the prompt encoder and mask decoder only,
on the embeddings the campaign already computed: no image encoder pass, and the promoted
model keeps those embeddings, so nothing is embedded again). A campaign with a detector
(stage 2) also retrains the detector on the same export (every kept mask, prefilled or
manual), from its current one, on the current SAM's embeddings; it is promoted by its own
held-out metric (`rounds.detector.metric`) and the prefill job then uses it. Annotators keep
working meanwhile. A round interrupted at any point is resumed by running it again.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from dataclasses import asdict, dataclass, replace
from typing import Any

from omegaconf import DictConfig, OmegaConf

from engine.campaigns.campaign import (
    Campaign,
    CampaignError,
    campaign_detector,
    exclusive,
    set_campaign_detector,
)
from engine.campaigns.db import now
from engine.campaigns.export import export_dataset
from engine.campaigns.masks import count_accepted_after, last_mask_id
from engine.campaigns.state import RoundStatus
from engine.campaigns.versions import current_model, model_config_row, publish_model
from engine.cluster import ray_session
from engine.config import plain
from engine.errors import first_line
from engine.models import resolve_checkpoint_reference
from engine.registry import Registry
from engine.training.commands import train_config
from engine.training.decoder import DecoderTrainConfig, check_kind
from engine.training.rounds import EvalSettings, run_round


@dataclass(frozen=True)
class RoundOutcome:
    round_id: int
    name: str
    promoted: bool
    reason: str
    metrics: dict[str, Any]
    detector: dict[str, Any] | None = None
    kind: str = "full"
    parent_metrics: dict[str, Any] | None = None  # the model it was measured against


def new_masks(campaign: Campaign) -> int:
    """Accepted manual masks since the last round's cutoff."""
    with campaign.db.read() as db:
        cutoff = db.execute("SELECT COALESCE(MAX(mask_cutoff), 0) FROM rounds").fetchone()[0]
        return count_accepted_after(db, int(cutoff))


def round_due(campaign: Campaign) -> bool:
    """A round is running but unfinished (resume it), or retrain_every masks are new."""
    every = campaign.config.get("retrain_every")
    with campaign.db.read() as db:
        running = _running(db)
    return running is not None or (bool(every) and new_masks(campaign) >= int(every))


def round_counts(db: sqlite3.Connection) -> dict[str, int]:
    """How many rounds are in each status."""
    rows = db.execute("SELECT status, COUNT(*) FROM rounds GROUP BY status").fetchall()
    return {str(status): int(count) for status, count in rows}


def _running(db: sqlite3.Connection) -> sqlite3.Row | None:
    row: sqlite3.Row | None = db.execute(
        "SELECT round_id, mask_cutoff FROM rounds WHERE status = ?", (RoundStatus.RUNNING,)
    ).fetchone()
    return row


def registry_root(campaign: Campaign) -> str:
    configured = campaign.config.rounds.get("registry")
    return str(configured) if configured else str(campaign.dir.resolve() / "registry")


def run_campaign_round(
    campaign: Campaign, cfg: DictConfig, *, kind: str | None = None
) -> RoundOutcome:
    """Run (or resume) one round; see the module docstring. kind: full | decoder (None:
    the campaign's `rounds.kind`)."""
    kind = check_kind(kind or str(campaign.config.rounds.get("kind", "full")))
    with exclusive(campaign, "round"):
        round_id, cutoff = _start(campaign)
        try:
            return _run(campaign, cfg, round_id, cutoff, kind)
        except Exception as error:
            _fail(campaign, round_id, error)
            raise


def _run(
    campaign: Campaign, cfg: DictConfig, round_id: int, cutoff: int, kind: str
) -> RoundOutcome:
    tag = f"round_{round_id:03d}"
    data, eval_data = _export(campaign, tag, cutoff)
    settings = campaign.config.rounds
    with campaign.db.read() as db:
        sha = current_model(db) or ""
        model_config = model_config_row(db, sha)
    train = replace(
        train_config({**plain(settings.train), "data": data, "output": ""}),
        model=str(model_config["name"]),
        init_checkpoint=_weights_file(campaign, model_config, sha),
    )
    if kind == "decoder":
        train = DecoderTrainConfig(
            **asdict(train),
            embeddings=campaign.storage.url(),
            embeddings_sha256=campaign.embeddings(sha).model_sha256,
            embeddings_options=dict(campaign.storage.options),
        )
    with ray_session(cfg) if int(settings.workers) > 0 else contextlib.nullcontext():
        record = run_round(
            registry_root=registry_root(campaign),
            train=train,
            eval_data=eval_data,
            eval_settings=EvalSettings(**plain(settings.eval)),
            workers=int(settings.workers),
            use_gpu=bool(settings.use_gpu),
            config_yaml=OmegaConf.to_yaml(campaign.config),
            reevaluate_parent=True,
            kind=kind,
        )
    if record.promoted:
        checkpoint = str(Registry(registry_root(campaign)).checkpoint(record.name))
        model_config = {**model_config, "checkpoint": checkpoint}
        publish_model(campaign, model_config, round_name=record.name)
    detector = _detector_round(campaign, model_config, data, eval_data)
    outcome = RoundOutcome(
        round_id,
        record.name,
        record.promoted,
        record.reason,
        record.metrics,
        detector,
        kind,
        record.parent_metrics,
    )
    _finish(campaign, outcome)
    return outcome


def _detector_round(
    campaign: Campaign, model_config: dict[str, Any], data: list[str], eval_data: list[str]
) -> dict[str, Any] | None:
    """Stage 2: the campaign's detector retrained on this round's export (None when the
    campaign has no detector or `rounds.detector.retrain` is false)."""
    from engine.detection.job import DetectorJob, EmbedSettings
    from engine.detection.registry import DetectorRegistry, resolve_detector_reference
    from engine.detection.rounds import run_detector_round
    from engine.detection.trainer import DetectorTrainConfig
    from stages.semi import load_detector

    settings = plain(campaign.config.rounds.get("detector") or {})
    reference = campaign_detector(campaign)
    if reference is None or not settings.get("retrain", True):
        return None
    current = resolve_detector_reference(reference)
    detector, metadata = load_detector(current)
    root = registry_root(campaign)
    train = {
        k: v for k, v in settings.items() if k not in ("retrain", "metric", "target_precision")
    }
    job = DetectorJob(
        train=DetectorTrainConfig(data=tuple(data), output="", init_checkpoint=current, **train),
        detector=detector.config,
        eval_data=tuple(eval_data),
        model_config=model_config,
        target_precision=float(
            settings.get("target_precision") or metadata.target_precision or 0.9
        ),
        embed=EmbedSettings(),
    )
    metric = str(settings.get("metric", "ap"))
    record = run_detector_round(registry_root=root, job=job, metric=metric)
    if record.promoted:
        set_campaign_detector(campaign, str(DetectorRegistry(root).checkpoint(record.name)))
    return {
        "name": record.name,
        "promoted": record.promoted,
        "reason": record.reason,
        "metrics": {k: record.metrics.get(k) for k in ("ap", "ap50", "recall_50")},
    }


def _weights_file(campaign: Campaign, model_config: dict[str, Any], sha: str) -> str:
    """A checkpoint file of the current model to train from (a model made from a seed is
    saved once into the campaign folder)."""
    if model_config.get("checkpoint"):
        return resolve_checkpoint_reference(str(model_config["checkpoint"]))
    path = campaign.dir / "models" / f"{sha[:16]}.pth"
    if not path.exists():
        import torch
        from hydra.utils import instantiate

        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(instantiate(model_config).state_dict(), path)
    return str(path)


def _start(campaign: Campaign) -> tuple[int, int]:
    """The running round (resumed) or a new one with its mask cutoff fixed now."""
    with campaign.db.write() as db:
        running = _running(db)
        if running is not None:
            return int(running["round_id"]), int(running["mask_cutoff"])
        cutoff = last_mask_id(db)
        cursor = db.execute(
            "INSERT INTO rounds (status, mask_cutoff, started) VALUES (?, ?, ?)",
            (RoundStatus.RUNNING, cutoff, now()),
        )
        return int(cursor.lastrowid or 0), cutoff


def _export(campaign: Campaign, tag: str, cutoff: int) -> tuple[list[str], list[str]]:
    settings = campaign.config.rounds
    eval_data = [str(d) for d in plain(settings.eval_data) or []]
    every = int(settings.holdout_every)
    held_out = (lambda image_id: image_id % every == 0) if not eval_data else (lambda _: False)
    base = f"exports/{tag}"
    train = export_dataset(
        campaign,
        campaign.storage.url(f"{base}/train"),
        mask_cutoff=cutoff,
        keep_image=lambda image_id: not held_out(image_id),
        storage_options=campaign.storage.options,
        force=True,
    )
    if train.images == 0:
        raise CampaignError("no accepted masks to train on yet")
    if not eval_data:
        held = export_dataset(
            campaign,
            campaign.storage.url(f"{base}/eval"),
            mask_cutoff=cutoff,
            keep_image=held_out,
            storage_options=campaign.storage.options,
            force=True,
        )
        if held.images == 0:
            raise CampaignError(
                f"no held-out images yet (every {every}th annotated image is held out; "
                "or set rounds.eval_data)"
            )
        eval_data = [held.url]
    return [train.url], eval_data


def _finish(campaign: Campaign, outcome: RoundOutcome) -> None:
    detail = json.dumps(
        {
            "reason": outcome.reason,
            "kind": outcome.kind,
            "metrics": outcome.metrics,
            "parent_metrics": outcome.parent_metrics,
            "detector": outcome.detector,
        }
    )
    with campaign.db.write() as db:
        db.execute(
            "UPDATE rounds SET status = ?, name = ?, finished = ?, promoted = ?, detail = ? "
            "WHERE round_id = ?",
            (
                RoundStatus.DONE,
                outcome.name,
                now(),
                int(outcome.promoted),
                detail,
                outcome.round_id,
            ),
        )


def _fail(campaign: Campaign, round_id: int, error: BaseException) -> None:
    """A round that raised: recorded as failed; the next trigger exports everything again."""
    with campaign.db.write() as db:
        db.execute(
            "UPDATE rounds SET status = ?, finished = ?, detail = ? WHERE round_id = ?",
            (RoundStatus.FAILED, now(), json.dumps({"error": first_line(error)}), round_id),
        )
