"""The review store (audit and verify answers, corrections, the verifier's answers), the
audit report's figures against IoUs and intervals computed here, the schema's version 4,
the page's mask prompt against the Python one, and the verifier's pieces (its inputs, its
training task on the one loop)."""

from __future__ import annotations

import json
import math
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.campaigns.audit import audit_report, write_report
from engine.campaigns.auth import add_annotator, authenticate
from engine.campaigns.campaign import Campaign
from engine.campaigns.db import DB_FILE
from engine.campaigns.errors import BadInput, Conflict, Forbidden
from engine.campaigns.masks import Submission, insert_prefilled, mask_shape, submit_mask
from engine.campaigns.proposals import sample_entries
from engine.campaigns.queue import end_lease, lease_next
from engine.campaigns.review import (
    Answer,
    VerifierAnswer,
    answer_proposed,
    correct_proposed,
    record_verifier_answers,
)
from engine.campaigns.state import Verdict
from engine.dataset.reader import IndexEntry
from engine.sources import ImageSource
from engine.training.loop import run_in_process
from engine.verification.examples import VerifyExample, part_of, write_examples
from engine.verification.trainer import VerifierInputs, VerifierTrainConfig, VerifierTrainer
from stages.assisted.reviewer import mask_prompt
from stages.automatic.rle import coco_encode, masks_to_rles
from stages.verify import VerifierConfig, mask_frame
from tests.engine.campaigns.bare import MODEL_SHA, bare_campaign
from tests.engine.campaigns.node import run_module_script

V1 = Path(__file__).resolve().parents[2] / "data" / "campaign_v1"
SIZE = (20, 30)


def _rle(mask: np.ndarray) -> dict:
    return coco_encode(masks_to_rles(torch.from_numpy(mask)[None])[0])


def _box(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    mask = np.zeros(SIZE, dtype=bool)
    mask[y0:y1, x0:x1] = True
    return mask


def _propose(campaign: Campaign, image_id: int, mask: np.ndarray, score: float) -> int:
    with campaign.db.write() as db:
        shape = {
            **vars(mask_shape(mask)),
            "prompts": {"points": [], "box": None},
            "predicted_iou": score,
            "stability_score": score,
            "annotation_id": 7,
        }
        return insert_prefilled(db, image_id, shape, model_sha256=MODEL_SHA)


def _person(campaign: Campaign, name: str) -> int:
    return authenticate(campaign, f"Bearer {add_annotator(campaign, name)}").annotator_id


def _correction(lease, mask: np.ndarray, client_id: str, seconds: float) -> Submission:
    return Submission(
        client_id=client_id,
        lease_id=lease.lease_id,
        image_id=lease.image_id,
        rle=_rle(mask),
        model_sha256=MODEL_SHA,
        brush_strokes=2,
        seconds=seconds,
    )


def test_people_keep_reject_and_correct_proposed_masks(tmp_path: Path) -> None:
    campaign = bare_campaign(tmp_path / "c", num_images=2)
    ana, bob = _person(campaign, "ana"), _person(campaign, "bob")
    masks = [_propose(campaign, 1, _box(2, 8, 2, 9 + i), 0.9) for i in range(4)]
    lease = lease_next(campaign, ana)
    other = lease_next(campaign, bob)
    assert lease.image_id == 1 and other.image_id == 2

    def answer(mask_id: int, verdict: Verdict, client_id: str, **extra: object) -> int:
        body = Answer(client_id, lease.lease_id, mask_id, verdict, seconds=1.5, **extra)
        return answer_proposed(campaign, ana, body)

    kept = answer(masks[0], Verdict.KEEP, "a1")
    assert answer(masks[0], Verdict.KEEP, "a1") == kept  # a retry answers the same
    with pytest.raises(Conflict, match="answered already"):
        answer(masks[0], Verdict.REJECT, "a2")
    answer(masks[1], Verdict.REJECT, "a3", missing=True)
    with pytest.raises(BadInput, match="verdict"):
        answer(masks[2], Verdict.CORRECT, "a4")
    with pytest.raises(Forbidden):  # bob's lease is on another image
        answer_proposed(campaign, bob, Answer("b1", other.lease_id, masks[2], Verdict.KEEP))
    better = _box(2, 10, 2, 12)
    corrected, created = correct_proposed(
        campaign, ana, masks[2], _correction(lease, better, "c1", 6.0)
    )
    assert created
    assert correct_proposed(campaign, ana, masks[2], _correction(lease, better, "c1", 6.0)) == (
        corrected,
        False,
    )
    end_lease(campaign, lease.lease_id, ana, finish=True, client_id="f1")
    with campaign.db.read() as db:
        states = {r["mask_id"]: r["state"] for r in db.execute("SELECT * FROM masks")}
        correction = db.execute("SELECT * FROM masks WHERE mask_id = ?", (corrected,)).fetchone()
        reviews = db.execute("SELECT * FROM reviews ORDER BY review_id").fetchall()
        events = db.execute("SELECT kind FROM events WHERE kind = 'reject_prefilled'").fetchall()
    assert [states[m] for m in masks] == ["kept", "rejected", "corrected", "kept"]
    assert correction["corrects"] == masks[2] and correction["origin"] == "manual"
    assert [(r["mask_id"], r["verdict"], r["missing"]) for r in reviews] == [
        (masks[0], "keep", 0),
        (masks[1], "reject", 1),
        (masks[2], "correct", 0),
    ]
    assert reviews[2]["seconds"] == 6.0 and len(events) == 1


def test_the_verifier_answers_queued_images_and_finishes_those_left_empty(tmp_path: Path) -> None:
    campaign = bare_campaign(tmp_path / "c", num_images=3)
    sure = [_propose(campaign, 1, _box(1, 5, 1, 5 + i), 0.9) for i in range(2)]
    half = [_propose(campaign, 2, _box(1, 5, 1, 5 + i), 0.9) for i in range(2)]
    leased = _propose(campaign, 3, _box(1, 5, 1, 5), 0.9)
    ana = _person(campaign, "ana")
    held = lease_next(campaign, ana)
    assert held.image_id == 1  # image 1 leased: the verifier leaves it to the person
    assert record_verifier_answers(
        campaign, 1, [VerifierAnswer(m, 0.99) for m in sure], verifier_sha256="v"
    ) == (0, False)
    end_lease(campaign, held.lease_id, ana, finish=False, client_id="s1")  # back to the queue
    done = record_verifier_answers(
        campaign, 1, [VerifierAnswer(m, 0.99) for m in sure], verifier_sha256="v"
    )
    partly = record_verifier_answers(
        campaign,
        2,
        [VerifierAnswer(half[0], 0.95), VerifierAnswer(leased, 0.9)],
        verifier_sha256="v",
    )
    assert done == (2, True) and partly == (1, False)  # a mask of another image is ignored
    with campaign.db.read() as db:
        status = dict(db.execute("SELECT image_id, status FROM images").fetchall())
        reviews = db.execute("SELECT mask_id, annotator_id, score FROM reviews").fetchall()
    assert status == {1: "done", 2: "queued", 3: "queued"}
    assert sorted((r[0], r[1], r[2]) for r in reviews) == [
        (sure[0], None, 0.99),
        (sure[1], None, 0.99),
        (half[0], None, 0.95),
    ]


def _wilson(hits: int, total: int, z: float = 1.959963984540054) -> list[float]:
    p = hits / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return [centre - half, centre + half]


def test_the_audit_report_from_answers_matches_ious_computed_here(tmp_path: Path) -> None:
    campaign = bare_campaign(tmp_path / "c", num_images=2)
    ana = _person(campaign, "ana")
    truth = _box(2, 12, 2, 12)
    # (proposed mask, predicted IoU, what the reviewer does with it)
    plan = [
        (truth, 0.95, Verdict.KEEP),
        (_box(2, 12, 2, 11), 0.85, truth),  # corrected to the truth: IoU 0.9 (not > 0.9)
        (_box(2, 12, 2, 10), 0.85, truth),  # IoU 0.8
        (_box(14, 18, 20, 28), 0.3, Verdict.REJECT),
        (_box(0, 4, 0, 4), None, None),  # unanswered: kept when the image is finished
    ]
    ids = [_propose(campaign, 1, mask, score) for mask, score, _ in plan]
    lease = lease_next(campaign, ana)
    for number, (mask_id, (_, _, action)) in enumerate(zip(ids, plan)):
        if isinstance(action, Verdict):
            body = Answer(f"a{number}", lease.lease_id, mask_id, action, seconds=2.0)
            answer_proposed(campaign, ana, body)
        elif action is not None:
            correct_proposed(campaign, ana, mask_id, _correction(lease, action, f"c{number}", 8.0))
    added = Submission("n1", lease.lease_id, 1, _rle(_box(15, 19, 2, 6)), MODEL_SHA, seconds=5.0)
    submit_mask(campaign, ana, added)  # a missing object
    end_lease(campaign, lease.lease_id, ana, finish=True, client_id="f")
    report = audit_report(campaign, predicted_iou_bins=[0.0, 0.5, 0.9, 1.0], stability_bins=[0, 1])
    ious = [1.0, 0.9, 0.8, 0.0, 1.0]
    assert report["masks"] == 5 and report["images"] == 1
    for threshold, name in ((0.9, "iou_gt_0_9"), (0.75, "iou_gt_0_75")):
        hits = sum(iou > threshold for iou in ious)
        assert report[name] == pytest.approx(hits / 5)
        assert report[f"{name}_ci"] == pytest.approx(_wilson(hits, 5))
    assert report["rejected"] == pytest.approx(0.2) and report["corrected"] == pytest.approx(0.4)
    assert report["pairs"]["masks"] == 4 and report["pairs"]["iou_gt_0_9"] == pytest.approx(0.5)
    assert report["added"] == 1 and report["added_per_image"] == 1.0
    bins = report["by_predicted_iou"]["bins"]
    assert [b["masks"] for b in bins] == [1, 2, 1]
    assert bins[1]["iou_gt_0_75"] == pytest.approx(1.0) and bins[0]["rejected"] == 1.0
    assert report["by_predicted_iou"]["unknown"]["masks"] == 1
    at_least = report["by_predicted_iou"]["at_least"]
    assert [a["masks"] for a in at_least] == [4, 3, 1]
    timing = report["timing"]
    assert timing["corrected_per_minute"] == pytest.approx(60 * 2 / 16)
    assert timing["reviewed_per_minute"] == pytest.approx(60 * 4 / 20)
    write_report(campaign, report)
    lines = [json.loads(line) for line in (campaign.dir / "audit_corrections.jsonl").open()]
    recomputed = []
    for line in lines:
        proposed = _decode(line["proposed"])
        reviewed = _decode(line["reviewed"]) if line["reviewed"] else np.zeros_like(proposed)
        recomputed.append((proposed & reviewed).sum() / (proposed | reviewed).sum())
    assert recomputed == pytest.approx(ious)
    assert json.loads((campaign.dir / "audit_report.json").read_text()) == json.loads(
        json.dumps(report)
    )


def _decode(rle: dict) -> np.ndarray:
    from pycocotools import mask as mask_utils

    return mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()}).astype(bool)


def test_a_version_1_database_gets_the_review_store(tmp_path: Path) -> None:
    shutil.copytree(V1, tmp_path / "old")
    Campaign(tmp_path / "old")
    fresh = bare_campaign(tmp_path / "new")

    def columns(folder: Path, table: str) -> list[tuple]:
        with sqlite3.connect(folder / DB_FILE) as db:
            return [tuple(r)[1:] for r in db.execute(f"PRAGMA table_info({table})")]

    for table in ("masks", "reviews"):
        assert columns(tmp_path / "old", table) == columns(fresh.dir, table)
    assert "corrects" in [c[0] for c in columns(fresh.dir, "masks")]


def test_the_sample_is_seeded_without_replacement_in_dataset_order() -> None:
    entries = [
        IndexEntry(f"sa_{i}", ImageSource(f"{i}.jpg", f"{i}.jpg"), ImageSource("", ""))
        for i in range(50)
    ]
    first = sample_entries(entries, sample=10, seed=3)
    assert first == sample_entries(entries, sample=10, seed=3)
    assert first != sample_entries(entries, sample=10, seed=4)
    keys = [int(e.key[3:]) for e in first]
    assert len(set(keys)) == 10 and keys == sorted(keys)
    assert sample_entries(entries, sample=None, seed=0) == entries


@pytest.mark.parametrize(
    ("stored", "input_hw", "low"),
    [
        ((534, 800), (171, 256), (64, 64)),
        ((1200, 1800), (683, 1024), (256, 256)),
        ((64, 64), (256, 256), (64, 64)),
    ],
)
def test_the_page_s_mask_prompt_is_the_python_one(
    stored: tuple[int, int], input_hw: tuple[int, int], low: tuple[int, int]
) -> None:
    rng = np.random.default_rng(0)
    mask = np.zeros(stored, dtype=bool)
    y0, x0 = stored[0] // 5, stored[1] // 4
    mask[y0 : 3 * y0, x0 : 3 * x0] = rng.random((2 * y0, 2 * x0)) < 0.7
    ys, xs = np.nonzero(mask)
    crop = mask[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    payload = {
        "crop": {
            "x": int(xs.min()),
            "y": int(ys.min()),
            "width": crop.shape[1],
            "height": crop.shape[0],
            "data": crop.astype(int).ravel().tolist(),
        },
        "stored": list(stored),
        "input": list(input_hw),
        "low": list(low),
    }
    page = np.array(run_module_script("mask_prompt", payload), np.float32).reshape(low)
    python = mask_prompt(mask, low_res_hw=low, input_hw=input_hw)
    assert np.array_equal(page, python) and (python > 0).sum() > 10


def test_the_verifier_s_mask_frame_covers_the_padded_model_input() -> None:
    mask = np.zeros((100, 200), dtype=bool)
    mask[:50, :100] = True  # the top-left quarter of a landscape image
    frame = mask_frame(mask, input_hw=(128, 256), frame=64)
    assert frame.shape == (64, 64)
    assert frame[:15, :31].min() == pytest.approx(1.0)  # 64 model-input rows = 16 low-res rows
    assert frame[17:].max() == 0 and frame[:, 33:].max() == 0
    assert frame.sum() == pytest.approx(16 * 32, rel=0.02)


def test_the_verifier_trains_on_answers_with_the_training_loop(tmp_path: Path) -> None:
    """A toy task on the one loop: people accept the large masks; the train part only."""
    from engine.embeddings import EmbeddingStore
    from engine.storage import Storage

    rng = np.random.default_rng(0)
    store = EmbeddingStore(Storage(str(tmp_path / "data")), "ef" * 32)
    examples = []
    for image in range(24):
        key = f"sa_{image + 1}"
        store.write(key, rng.normal(size=(8, 4, 4)).astype(np.float16))
        for index in range(4):
            side = int(rng.integers(2, 15))
            mask = np.zeros((16, 16), dtype=bool)
            mask[:side, :side] = True
            shape = mask_shape(mask)
            examples.append(
                VerifyExample(
                    key=key, image_id=image + 1, mask_id=4 * image + index, counts=shape.counts,
                    height=16, width=16, area=shape.area, predicted_iou=None,
                    stability_score=None, input_h=16, input_w=16, label=int(side >= 8),
                    part=part_of(key, seed=0, calibrate=0.2, test=0.2),
                )
            )  # fmt: skip
    write_examples(tmp_path / "answers.parquet", examples)
    inputs = VerifierInputs(
        embeddings_root=str(tmp_path / "data"),
        sam_weights_sha256="ef" * 32,
        verifier=VerifierConfig(embedding_dim=8, channels=8),
    )
    config = VerifierTrainConfig(
        data=(str(tmp_path / "answers.parquet"),), output=str(tmp_path / "run"), steps=60,
        batch_size=16, lr=1e-2, warmup_steps=5, device="cpu",
    )  # fmt: skip
    trainer = VerifierTrainer(config, inputs)
    trained = {e.mask_id for e in examples if e.part == "train"}
    assert trainer.task.num_examples() == len(trained) < len(examples)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: threads would only wait on each other
    try:
        steps = run_in_process(trainer)
    finally:
        torch.set_num_threads(threads)
    assert np.mean([s.accuracy for s in steps[-10:]]) > 0.85
    assert np.mean([s.loss for s in steps[-10:]]) < 0.5 * steps[0].loss
    assert (tmp_path / "run" / "checkpoints" / "last.pt").exists()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [(["mode=verify"], "give stage=semi"), (["mode=judge", "stage=semi"], "mode must be one of")],
)
def test_a_reviewing_mode_needs_proposed_masks(
    tmp_path: Path, overrides: list[str], message: str
) -> None:
    from engine.campaigns.campaign import CampaignError
    from engine.campaigns.plan import create_campaign
    from engine.cli import compose_config

    cfg = compose_config(
        "campaign", [f"dir={tmp_path / 'c'}", "input=x", "model=bundled", *overrides]
    )
    with pytest.raises(CampaignError, match=message):
        create_campaign(cfg)
    assert not (tmp_path / "c").exists()
