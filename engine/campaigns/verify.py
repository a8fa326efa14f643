"""The verify mode's learned verifier (SAM 3's "AI verifier"), run for a campaign: its rounds
on the people's answers so far, applied to the masks still waiting, and the report.

`saengine verify round <dir>`: people's accept / reject answers are written as the round's
examples (`engine.verification.examples`, each image in a fixed part: train, calibrate or
test), with the embeddings of their images for the campaign's current SAM (computed here for
those the embed job did not reach); the round trains, chooses the threshold for the target
precision, measures precision and recall on the test answers, registers in
`<registry>/verifier/` and promotes (`engine.verification.rounds`). A promoted verifier is
then applied: every unanswered proposed mask of the queued images that scores at least the
threshold is accepted by it (a review without a person, with its score); an image left with
nothing for people is finished. `saengine verify report` states what people and the verifier
answered, masks verified per minute, and each round's held-out precision and recall.
"""

from __future__ import annotations

import io
import statistics
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from engine.campaigns.campaign import Campaign, CampaignError
from engine.campaigns.queue import image_row
from engine.campaigns.review import (
    VerifierAnswer,
    human_answers,
    people_answers,
    record_verifier_answers,
    verifier_counts,
    verifier_waiting,
)
from engine.campaigns.rounds import registry_root
from engine.campaigns.state import Verdict
from engine.campaigns.versions import (
    current_model,
    embedding_size,
    model_config_row,
    record_embedding,
)
from engine.config import from_config, plain
from engine.embeddings import embed_image
from engine.models import resolve_device
from engine.verification.evaluate import score_examples
from engine.verification.examples import VerifyExample, part_of, write_examples
from engine.verification.registry import VerifierRegistry, VerifierRoundRecord
from engine.verification.rounds import VerifierRoundSettings, run_verifier_round
from engine.verification.trainer import VerifierInputs, VerifierTrainConfig
from model.checkpoint import sha256_of
from stages.verify import VerifierConfig, load_verifier

EXAMPLES_FILE = "answers.parquet"


@dataclass(frozen=True)
class AppliedVerifier:
    """masks: the unanswered masks it scored; accepted: those it answered (human answers
    saved); images_done: the images it left nothing on for people."""

    verifier: str
    masks: int
    accepted: int
    images_done: int


def ensure_embeddings(campaign: Campaign, image_ids: list[int], *, progress: bool = False) -> str:
    """The current SAM's embeddings of the images, computed in this process for those that
    lack one (written, then their rows: the commit marker); returns the SAM's SHA-256."""
    from hydra.utils import instantiate
    from PIL import Image
    from tqdm import tqdm

    from model import SamPredictor

    with campaign.db.read() as db:
        sha = current_model(db)
        if sha is None:
            raise CampaignError("the campaign has no model")
        missing = [image_row(db, i) for i in image_ids if embedding_size(db, i, sha) is None]
        config = model_config_row(db, sha)
    if not missing:
        return sha
    predictor = SamPredictor(instantiate(config).to(resolve_device("auto")).eval())
    store = campaign.embeddings(sha)
    for row in tqdm(missing, desc="embed", unit="img", disable=not progress):
        data = campaign.storage.read_bytes(campaign.image_path(row["key"]))
        rgb = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
        embedding = embed_image(predictor, rgb)
        store.write(row["key"], embedding.array)
        record_embedding(campaign, sha, row["image_id"], embedding.input_size)
    return sha


def examples_of(
    campaign: Campaign, rows: list[Any], *, labels: list[int], parts: list[str]
) -> tuple[str, list[VerifyExample]]:
    """Verifier examples of mask rows (with the image's `key`), their images embedded by
    the current SAM; returns the SAM's SHA-256 and the examples."""
    sha = ensure_embeddings(campaign, sorted({row["image_id"] for row in rows}))
    with campaign.db.read() as db:
        sizes = {i: embedding_size(db, i, sha) for i in {row["image_id"] for row in rows}}
    examples = []
    for row, label, part in zip(rows, labels, parts):
        input_hw = sizes[row["image_id"]]
        assert input_hw is not None
        examples.append(
            VerifyExample(
                key=row["key"],
                image_id=row["image_id"],
                mask_id=row["mask_id"],
                counts=row["counts"],
                height=row["height"],
                width=row["width"],
                area=row["area"],
                predicted_iou=row["predicted_iou"],
                stability_score=row["stability_score"],
                input_h=input_hw[0],
                input_w=input_hw[1],
                label=label,
                part=part,
            )
        )
    return sha, examples


def export_answers(campaign: Campaign, path: Path, split: dict[str, Any]) -> tuple[str, int]:
    """People's answers as the round's examples file; returns the SAM's SHA-256 and how
    many. split: {seed, calibrate, test} (the shares of images in those parts)."""
    with campaign.db.read() as db:
        rows = human_answers(db)
    labels = [int(row["verdict"] == Verdict.KEEP) for row in rows]
    parts = [
        part_of(
            row["key"],
            seed=int(split["seed"]),
            calibrate=float(split["calibrate"]),
            test=float(split["test"]),
        )
        for row in rows
    ]
    sha, examples = examples_of(campaign, rows, labels=labels, parts=parts)
    write_examples(path, examples)
    return sha, len(examples)


def run_verify_round(
    campaign: Campaign, cfg: DictConfig
) -> tuple[VerifierRoundRecord, AppliedVerifier | None]:
    """The campaign's next verifier round (see the module docstring), then the promoted
    verifier applied when cfg.apply; a round rerun after a failure resumes on the answers
    it started with."""
    root = registry_root(campaign)
    registry = VerifierRegistry(root)
    work = registry.work_dir(registry.next_round_name())
    examples = work / EXAMPLES_FILE
    if examples.exists():
        with campaign.db.read() as db:
            sha = str(current_model(db))
    else:
        sha, _ = export_answers(campaign, examples, plain(cfg.split))
    inputs = VerifierInputs(
        embeddings_root=campaign.storage.root_url,
        sam_weights_sha256=campaign.embeddings(sha).model_sha256,
        verifier=from_config(VerifierConfig, cfg.verifier),
        embeddings_options=dict(campaign.storage.options),
    )
    record = run_verifier_round(
        registry_root=root,
        examples_file=str(examples),
        inputs=inputs,
        train=from_config(VerifierTrainConfig, cfg.train, data=(str(examples),), output=str(work)),
        settings=from_config(VerifierRoundSettings, cfg.round),
        config_yaml=OmegaConf.to_yaml(cfg),
    )
    applied = None
    if record.promoted and bool(cfg.apply):
        applied = apply_verifier(campaign, str(registry.checkpoint(record.name)))
    return record, applied


def apply_verifier(campaign: Campaign, path: str) -> AppliedVerifier:
    """Accept the unanswered proposed masks of the queued images that score at least the
    verifier's threshold (see the module docstring)."""
    verifier, metadata = load_verifier(path, device=resolve_device("auto"))
    with campaign.db.read() as db:
        sha = current_model(db)
        rows = verifier_waiting(db)
    embeddings = campaign.embeddings(str(sha))
    if metadata.sam_weights_sha256 != embeddings.model_sha256 or metadata.threshold is None:
        raise CampaignError(
            f"{path} reads the embeddings of SAM {metadata.sam_weights_sha256[:12]}, the "
            f"campaign's model is {str(sha)[:12]} (or it has no threshold): run saengine "
            "verify round"
        )
    _, examples = examples_of(campaign, rows, labels=[0] * len(rows), parts=[""] * len(rows))
    scores = score_examples(verifier, examples, embeddings)
    by_image: dict[int, list[VerifierAnswer]] = defaultdict(list)
    for example, score in zip(examples, scores):
        if score >= metadata.threshold:
            by_image[example.image_id].append(VerifierAnswer(example.mask_id, float(score)))
    accepted = done = 0
    digest = sha256_of(Path(path))
    for image_id, answers in by_image.items():
        count, finished = record_verifier_answers(
            campaign, image_id, answers, verifier_sha256=digest
        )
        accepted, done = accepted + count, done + finished
    return AppliedVerifier(path, len(rows), accepted, done)


def verify_report(campaign: Campaign, *, audit: dict[str, Any] | None = None) -> dict[str, Any]:
    """What people and the verifier answered, masks verified per minute (the answers'
    seconds), the verifier rounds' held-out figures; with an audit report's timing, the
    speed of verifying against correcting."""
    with campaign.db.read() as db:
        answers = people_answers(db)
        counts = verifier_counts(db)
    seconds = [a["seconds"] for a in answers if a["seconds"] is not None]
    total = sum(seconds)
    verified_per_minute = 60.0 * len(seconds) / total if total > 0 else None
    people = {
        "answers": len(answers),
        "accepted": sum(a["verdict"] == Verdict.KEEP for a in answers),
        "rejected": sum(a["verdict"] == Verdict.REJECT for a in answers),
        "missing_flags": sum(bool(a["missing"]) for a in answers),
        "median_seconds": statistics.median(seconds) if seconds else None,
        "verified_per_minute": verified_per_minute,
    }
    registry = VerifierRegistry(registry_root(campaign))
    rounds = [_round_view(registry.record(name)) for name in registry.rounds()]
    report: dict[str, Any] = {
        "people": people,
        "verifier": {
            "latest": registry.latest(),
            "answers": counts["verifier"],
            "human_answers_saved": counts["verifier"],
            "images_finished": counts["images_finished_by_verifier"],
        },
        "rounds": rounds,
    }
    if audit is not None:
        corrected = audit["timing"]["corrected_per_minute"]
        report["audit"] = {key: audit["timing"][key] for key in ("reviewed_per_minute",)}
        report["audit"]["corrected_per_minute"] = corrected
        speedup = verified_per_minute / corrected if verified_per_minute and corrected else None
        report["verified_vs_corrected"] = speedup
    return report


def _round_view(record: VerifierRoundRecord) -> dict[str, Any]:
    test = record.metrics["test"]
    return {
        "name": record.name,
        "promoted": record.promoted,
        "reason": record.reason,
        "answers": record.answers,
        "threshold": record.threshold,
        "target_precision": record.target_precision,
        "test_precision": test["precision"],
        "test_recall": test["recall"],
        "test_share_taken_over": test["share_taken_over"],
        "test": test,
        "baseline_predicted_iou": record.metrics["baseline_predicted_iou"],
    }


def format_verify_report(report: dict[str, Any]) -> str:
    people, verifier = report["people"], report["verifier"]
    speed = people["verified_per_minute"]
    lines = [
        f"people: {people['answers']} answers ({people['accepted']} accepted, "
        f"{people['rejected']} rejected, {people['missing_flags']} 'something is missing'), "
        f"{'n/a' if speed is None else f'{speed:.1f}'} masks verified per minute",
        f"verifier: {verifier['answers']} masks accepted without a person (human answers "
        f"saved), {verifier['images_finished']} images finished; latest {verifier['latest']}",
    ]
    for row in report["rounds"]:
        test, base = row["test"], row["baseline_predicted_iou"]
        lines.append(
            f"  {row['name']}: threshold {row['threshold']:.3f} for precision "
            f"{row['target_precision']}; on {test['answers']} held-out test answers precision "
            f"{test['precision']:.3f}, recall {test['recall']:.3f}, takes over "
            f"{test['share_taken_over']:.1%} (predicted IoU alone: precision "
            f"{base['precision']:.3f}, takes over {base['share_taken_over']:.1%}); "
            f"{'promoted' if row['promoted'] else 'not promoted'}: {row['reason']}"
        )
    if "audit" in report:
        audit = report["audit"]
        ratio = report["verified_vs_corrected"]
        lines.append(
            f"audit: {_num(audit['corrected_per_minute'])} masks corrected per minute, "
            f"{_num(audit['reviewed_per_minute'])} reviewed; verifying is "
            f"{_num(ratio)}x correcting"
        )
    return "\n".join(lines)


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"
