"""`saengine campaign <command> <dir> key=value ...`: the campaign commands, each a function
of its composed config (registered in `engine.cli`)."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from engine.campaigns.campaign import Campaign, CampaignError
from engine.campaigns.jobs import JobTally
from engine.campaigns.state import Role, stage_named
from engine.config import plain

STATIC_DIR = Path(__file__).resolve().parent / "static"


def create(cfg: DictConfig) -> None:
    from engine.campaigns.plan import create_campaign

    campaign, token = create_campaign(cfg)
    print(status_text(campaign))
    if token:
        print(f"admin token (shown once; keep it): {token}")
    print(
        f"next: saengine campaign add-annotator {campaign.dir} name=<name>; "
        f"saengine campaign serve {campaign.dir}"
    )


def status(cfg: DictConfig) -> None:
    print(status_text(Campaign(str(cfg.dir))))


def status_text(campaign: Campaign) -> str:
    from engine.campaigns.auth import count_annotators
    from engine.campaigns.masks import state_counts
    from engine.campaigns.queue import error_images, status_counts
    from engine.campaigns.rounds import round_counts
    from engine.campaigns.serve import server_url
    from engine.campaigns.versions import count_embeddings, current_model, versions

    with campaign.db.read() as db:
        images = status_counts(db)
        model = current_model(db)
        version = len(versions(db)) - 1
        embedded = count_embeddings(db, model)
        masks = state_counts(db)
        people = count_annotators(db, Role.ANNOTATOR)
        rounds = round_counts(db)
        errors = error_images(db, limit=5)
    lines = [
        f"campaign: {campaign.dir} (stage {campaign.stage}, data at {campaign.storage.url()})",
        f"images: {sum(images.values())} ({_counts(images)})",
        f"model: version {version}, {str(model)[:12]}; embeddings ready for {embedded} images",
        f"masks: {_counts(masks) or 'none yet'}",
        f"annotators: {people}; rounds: {rounds or 'none yet'}",
        f"server: {server_url(campaign) or 'not running'}",
    ]
    lines += [f"  error {row['key']} ({row['source']}): {row['error']}" for row in errors]
    return "\n".join(lines)


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{value} {key}" for key, value in sorted(counts.items()))


def add_annotator(cfg: DictConfig) -> None:
    from engine.campaigns.auth import add_annotator

    token = add_annotator(Campaign(str(cfg.dir)), str(cfg.name), role=str(cfg.role))
    print(token)


def embed(cfg: DictConfig) -> None:
    from engine.campaigns.embed import run_embed

    campaign = Campaign(str(cfg.dir))
    follow = bool(cfg.follow)
    ahead = (
        cfg.ahead if cfg.ahead is not None else (campaign.config.embed.ahead if follow else None)
    )
    with _job_progress("embed", bool(cfg.progress)) as progress:
        tally = run_embed(
            campaign,
            _job_config(campaign, cfg),
            follow=follow,
            ahead=None if ahead is None else int(ahead),
            on_progress=progress,
        )
    print(f"embedded {tally.done} images ({len(tally.failed)} failed)")


def prefill(cfg: DictConfig) -> None:
    from engine.campaigns.prefill import run_prefill

    campaign = Campaign(str(cfg.dir))
    with _job_progress("prefill", bool(cfg.progress)) as progress:
        tally = run_prefill(
            campaign,
            _job_config(campaign, cfg),
            follow=bool(cfg.follow),
            detector=None if cfg.detector is None else str(cfg.detector),
            on_progress=progress,
        )
    print(f"prefilled {tally.done} images ({len(tally.failed)} failed)")


@contextlib.contextmanager
def _job_progress(name: str, enabled: bool) -> Iterator[Callable[[JobTally, int], None]]:
    """A progress bar for a background job: rows found grow its total, each one done moves it."""
    with tqdm(desc=name, unit="img", disable=not enabled, dynamic_ncols=True) as bar:

        def progress(tally: JobTally, todo: int) -> None:
            if todo:
                bar.total = (bar.total or 0) + todo
                bar.refresh()
            else:
                bar.update(1)
                bar.set_postfix_str(f"{len(tally.failed)} failed", refresh=False)

        yield progress


def set_stage(cfg: DictConfig) -> None:
    from engine.campaigns.campaign import campaign_detector, set_campaign_detector
    from engine.campaigns.prefill import prefill_settings
    from engine.campaigns.queue import move_to_stage
    from engine.campaigns.state import Stage

    campaign = Campaign(str(cfg.dir))
    try:
        stage = stage_named(str(cfg.stage))
    except ValueError as error:
        raise CampaignError(str(error)) from error
    if stage == Stage.SEMI:
        detector = None if cfg.detector is None else str(cfg.detector)
        prefill_settings(campaign, detector, require_detector=True)  # it must exist
        if detector is not None:
            set_campaign_detector(campaign, detector)
    moved = move_to_stage(campaign, stage)
    print(
        f"{moved} images not yet annotated are now stage {stage} ({stage.config_name})"
        + (f"; detector {campaign_detector(campaign)}" if stage == Stage.SEMI else "")
    )


def _job_config(campaign: Campaign, cfg: DictConfig) -> DictConfig:
    """The campaign's ray/resources settings with the command line's non-null ones over them."""
    merged = OmegaConf.create({"ray": campaign.config.ray, "resources": campaign.config.resources})
    for section in ("ray", "resources"):
        for key, value in (cfg.get(section) or {}).items():
            if value is not None:
                merged[section][key] = value
    return merged


def serve(cfg: DictConfig) -> None:
    from engine.campaigns.limits import ServeLimits
    from engine.campaigns.page import vendor_problem
    from engine.campaigns.serve import serve

    try:
        limits = ServeLimits(**plain(cfg.limits))
    except (TypeError, ValueError) as error:
        raise CampaignError(str(error)) from error
    campaign = Campaign(str(cfg.dir))
    problem = vendor_problem(STATIC_DIR) if STATIC_DIR.is_dir() else None
    if problem:
        print(f"warning: the annotation page will not work: {problem}", file=sys.stderr)
    serve(
        campaign,
        host=str(cfg.host),
        port=int(cfg.port),
        embed=bool(cfg.embed),
        rounds=bool(cfg.rounds),
        static_dir=STATIC_DIR if STATIC_DIR.is_dir() else None,
        log_level=str(cfg.log_level),
        limits=limits,
    )


def simulate(cfg: DictConfig) -> None:
    from engine.campaigns.simulate import simulate
    from stages.assisted.annotator import AnnotatorPolicy

    campaign = Campaign(str(cfg.dir))
    policy = AnnotatorPolicy(**plain(cfg.annotator))
    truth = plain(cfg.truth)
    truth = [str(t) for t in truth] if isinstance(truth, list) else [str(truth)]
    with _server(campaign, cfg.server) as url:
        reports = simulate(
            campaign,
            url=url,
            truth=truth,
            annotators=int(cfg.annotators),
            policy=policy,
            seed=int(cfg.seed),
            max_images=None if cfg.max_images is None else int(cfg.max_images),
        )
        if bool(cfg.wait_for_rounds):
            _wait_for_rounds(campaign)
    for report in reports:
        print(
            f"{report.name}: {report.images} images, {report.masks} masks, {report.skipped} "
            f"skipped objects, {report.rejected} prefilled rejected, {report.clicks} clicks"
        )


def _server(campaign: Campaign, url: Any) -> Any:
    from engine.campaigns.server_process import running_server

    return running_server(campaign, None if url is None else str(url))


def _wait_for_rounds(campaign: Campaign) -> None:
    import time

    from engine.campaigns.rounds import round_due

    while round_due(campaign):
        time.sleep(2)


def round_now(cfg: DictConfig) -> None:
    from engine.campaigns.rounds import run_campaign_round

    campaign = Campaign(str(cfg.dir))
    kind = None if cfg.get("kind") is None else str(cfg.kind)
    outcome = run_campaign_round(campaign, _job_config(campaign, OmegaConf.create({})), kind=kind)
    state = "promoted: the campaign now uses it" if outcome.promoted else "not promoted"
    print(f"{outcome.name} ({outcome.kind} round): {state} ({outcome.reason})")
    if outcome.detector is not None:
        detector = outcome.detector
        state = "promoted: prefill now uses it" if detector["promoted"] else "not promoted"
        print(f"detector {detector['name']}: {state} ({detector['reason']})")


def export(cfg: DictConfig) -> None:
    from engine.campaigns.export import export_dataset

    campaign = Campaign(str(cfg.dir))
    report = export_dataset(
        campaign,
        str(cfg.output),
        images_per_shard=int(cfg.images_per_shard),
        storage_options=plain(cfg.storage_options),
        force=bool(cfg.force),
    )
    print(
        f"exported {report.masks} masks on {report.images} images in {report.shards} shards "
        f"-> {report.url} (look at it: saengine inspect {report.url})"
    )


def stats(cfg: DictConfig) -> None:
    from engine.campaigns.stats import campaign_stats, format_stats, plot_stats

    campaign = Campaign(str(cfg.dir))
    stats = campaign_stats(campaign)
    if bool(cfg.json):
        json.dump(stats, sys.stdout, indent=2)
        print()
    else:
        print(format_stats(stats))
    path = plot_stats(stats, Path(str(cfg.plot)) if cfg.plot else campaign.dir / "stats.png")
    print(f"plot: {path}")


# The audit and verify modes ---------------------------------------------------------------


def review_create(cfg: DictConfig) -> None:
    """`audit create` and `verify create` (cfg.mode says which)."""
    from engine.campaigns.proposals import create_review_campaign

    campaign, token, stored = create_review_campaign(cfg)
    print(status_text(campaign))
    print(f"proposed masks stored now: {stored} (from {cfg.dataset})")
    if token:
        print(f"admin token (shown once; keep it): {token}")
    print(
        f"next: saengine campaign add-annotator {campaign.dir} name=<name>; saengine campaign "
        f"serve {campaign.dir}; or scripted: saengine {campaign.mode} simulate {campaign.dir} "
        "truth=<dataset>"
    )


def review_simulate(cfg: DictConfig) -> None:
    """`audit simulate` and `verify simulate`: scripted reviewers of the campaign's mode."""
    from engine.campaigns.reviewers import ReviewerReport, simulate_reviewers
    from engine.campaigns.state import CampaignMode
    from engine.config import from_config
    from stages.assisted.annotator import AnnotatorPolicy
    from stages.assisted.reviewer import ReviewPolicy

    campaign = Campaign(str(cfg.dir))
    if campaign.mode == CampaignMode.ANNOTATE:
        raise CampaignError(f"{campaign.dir} is not an audit or verify campaign")
    truth = plain(cfg.truth)
    with _server(campaign, cfg.server) as url:
        reports = simulate_reviewers(
            campaign,
            auditor=campaign.mode == CampaignMode.AUDIT,
            review=from_config(ReviewPolicy, cfg.reviewer),
            url=url,
            truth=[str(t) for t in truth] if isinstance(truth, list) else [str(truth)],
            annotators=int(cfg.annotators),
            policy=from_config(AnnotatorPolicy, cfg.get("annotator") or {}),
            seed=int(cfg.seed),
            max_images=None if cfg.max_images is None else int(cfg.max_images),
        )
    for report in reports:
        assert isinstance(report, ReviewerReport)
        print(
            f"{report.name}: {report.images} images, {report.answered} masks answered "
            f"({report.kept} kept, {report.corrected} corrected, {report.rejected} rejected), "
            f"{report.masks - report.corrected} added, {report.seconds:.0f} simulated s"
        )


def audit_report(cfg: DictConfig) -> None:
    from engine.campaigns.audit import audit_report, format_report, write_report

    campaign = Campaign(str(cfg.dir))
    report = audit_report(
        campaign,
        predicted_iou_bins=[float(v) for v in cfg.bins.predicted_iou],
        stability_bins=[float(v) for v in cfg.bins.stability_score],
    )
    plot = write_report(campaign, report, Path(str(cfg.plot)) if cfg.plot else None)
    if bool(cfg.json):
        print(json.dumps(report))
        return
    print(format_report(report))
    print(f"written: {campaign.dir}/audit_report.json, audit_corrections.jsonl; plot: {plot}")


def verify_round(cfg: DictConfig) -> None:
    from engine.campaigns.verify import run_verify_round

    record, applied = run_verify_round(Campaign(str(cfg.dir)), cfg)
    test = record.metrics["test"]
    print(
        f"{record.name}: threshold {record.threshold:.3f} for precision "
        f"{record.target_precision}; held-out test answers: precision {test['precision']:.3f}, "
        f"recall {test['recall']:.3f}, takes over {test['share_taken_over']:.1%} of "
        f"{test['answers']}; {'promoted' if record.promoted else 'not promoted'} "
        f"({record.reason})"
    )
    if applied is not None:
        print(
            f"applied: {applied.accepted} of {applied.masks} waiting masks accepted by the "
            f"verifier (human answers saved), {applied.images_done} images finished"
        )


def verify_report(cfg: DictConfig) -> None:
    from engine.campaigns.audit import audit_report
    from engine.campaigns.verify import format_verify_report, verify_report

    audit = None
    if cfg.audit is not None:
        bins = [0.0, 1.0]
        audit = audit_report(Campaign(str(cfg.audit)), predicted_iou_bins=bins, stability_bins=bins)
    report = verify_report(Campaign(str(cfg.dir)), audit=audit)
    if bool(cfg.json):
        print(json.dumps(report))
    else:
        print(format_verify_report(report))
