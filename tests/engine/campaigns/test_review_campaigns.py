"""Audit and verification campaigns made and worked the way users do (`saengine audit ...`,
`saengine verify ...` against a real `campaign serve`), on a dataset of proposed masks made
here from synthetic scenes with known quality: for each scene, its largest object copied
exactly, its second eroded by a pixel, a blob where there is no object, its smallest object
left out (for the reviewers to add), the others copied.

The audit report's shares are checked against IoUs this test computes from the exported
corrections, each reviewed mask against its true object, and the verifier's precision
against the answers of the images it never trained on."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from scipy import ndimage

from engine.campaigns.campaign import Campaign
from engine.campaigns.server_process import start_server
from engine.campaigns.verify import ensure_embeddings
from engine.cli import main
from engine.dataset import image_key, read_manifest
from engine.dataset.reader import build_index
from engine.dataset.writer import DatasetWriter, image_entry, numbered
from engine.storage import Storage
from engine.verification.evaluate import score_examples
from engine.verification.examples import CALIBRATE, TEST, TRAIN, read_examples
from engine.verification.registry import VerifierRegistry
from stages.assisted.reviewer import ReviewPolicy
from stages.automatic.rle import coco_decode, coco_encode, masks_to_rles
from stages.verify import load_verifier

pytestmark = pytest.mark.slow

EXACT, ERODED, BLOB, COPY = 0.95, 0.8, 0.3, 0.9  # each kind's predicted IoU


def _annotation(mask: np.ndarray, predicted_iou: float) -> dict:
    import torch

    ys, xs = np.nonzero(mask)
    return {
        "segmentation": coco_encode(masks_to_rles(torch.from_numpy(mask)[None])[0]),
        "bbox": [int(xs.min()), int(ys.min()), int(np.ptp(xs)), int(np.ptp(ys))],
        "area": int(mask.sum()),
        "predicted_iou": predicted_iou,
        "stability_score": predicted_iou,
        "point_coords": [[float(xs.mean()), float(ys.mean())]],
    }


def _proposals(truth: list[np.ndarray], rng: np.random.Generator) -> list[dict]:
    """The proposed masks of one scene (see the module docstring)."""
    order = sorted(range(len(truth)), key=lambda i: -int(truth[i].sum()))
    proposed = [_annotation(truth[order[0]], EXACT)]
    eroded = ndimage.binary_erosion(truth[order[1]])
    if eroded.any():
        proposed.append(_annotation(eroded, ERODED))
    proposed += [_annotation(truth[i], COPY) for i in order[2:-1]]
    blob = np.zeros_like(truth[0])
    free = ~np.any(truth, axis=0)
    y, x = np.argwhere(ndimage.binary_erosion(free, iterations=6))[rng.integers(100)]
    blob[max(0, y - 5) : y + 5, max(0, x - 5) : x + 5] = True
    return [*proposed, _annotation(blob, BLOB)]


def write_proposals(truth: Path, output: Path, count: int) -> None:
    """An SA-1B dataset of proposed masks for the first `count` images of `truth`, each
    image's source naming the truth image (as `saengine generate` names its input)."""
    rng = np.random.default_rng(0)
    writer = DatasetWriter(Storage(str(output)), images_per_shard=count)
    for image_id, entry in enumerate(build_index([str(truth)])[:count], start=1):
        record = json.loads(entry.annotations.read_bytes())
        masks = [coco_decode(a["segmentation"]) for a in record["annotations"]]
        height, width = masks[0].shape
        writer.add(
            image_id=image_id,
            key=image_key(image_id),
            source=entry.image.source,
            jpeg=entry.image.read_bytes(),
            record={
                "image": image_entry(image_id, image_key(image_id), width=width, height=height),
                "annotations": numbered(image_id, _proposals(masks, rng)),
            },
        )
    writer.close({"proposals": str(truth)})


@pytest.fixture(scope="module")
def proposals(scenes: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("proposals") / "dataset"
    write_proposals(scenes["train"], folder, 12)
    return folder


def saengine(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    """`saengine ...` in this process; its output."""
    capsys.readouterr()
    main(list(args))
    return capsys.readouterr().out


def _decode(rle: dict) -> np.ndarray:
    return mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()}).astype(bool)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def _truth_of(scenes: Path, proposals: Path) -> dict[str, list[np.ndarray]]:
    """The true masks of each proposals image, by its key in the proposals dataset."""
    by_source = {}
    for entry in build_index([str(scenes)]):
        record = json.loads(entry.annotations.read_bytes())
        masks = [coco_decode(a["segmentation"]) for a in record["annotations"]]
        by_source[entry.image.source] = masks
    manifest = read_manifest(Storage(str(proposals))).to_pylist()
    return {row["key"]: by_source[row["source"]] for row in manifest}


def test_an_audit_measures_what_the_reviewers_corrected(
    proposals: Path, scenes: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "audit"
    created = saengine(
        capsys, "audit", "create", str(proposals), f"output={folder}", "sample=6", "seed=2",
        "model=bundled", "onnx.quantize=false", "progress=false",
    )  # fmt: skip
    assert "images: 6 (6 queued)" in created
    campaign = Campaign(folder)
    ensure_embeddings(campaign, list(range(1, 7)))  # the server below runs no embed job
    server, url = start_server(campaign, "embed=false", "rounds=false")
    try:
        saengine(capsys, "audit", "simulate", str(folder), f"truth={scenes['train']}",
                 f"server={url}", "annotators=2")  # fmt: skip
    finally:
        server.terminate()
        server.wait(timeout=60)
    report = json.loads(saengine(capsys, "audit", "report", str(folder), "json=true"))
    lines = [json.loads(line) for line in (folder / "audit_corrections.jsonl").open()]
    assert report["masks"] == len(lines) > 12 and report["images"] == 6
    ious = []
    for line in lines:  # recomputed here from the exported masks
        proposed = _decode(line["proposed"])
        reviewed = _decode(line["reviewed"]) if line["reviewed"] else np.zeros_like(proposed)
        ious.append(_iou(proposed, reviewed))
    for threshold, name in ((0.9, "iou_gt_0_9"), (0.75, "iou_gt_0_75")):
        assert report[name] == pytest.approx(np.mean(np.array(ious) > threshold))
        low, high = report[f"{name}_ci"]
        assert low < report[name] < high or report[name] in (0.0, 1.0)
    truth = _truth_of(scenes["train"], proposals)
    policy = ReviewPolicy()
    for line, iou in zip(lines, ious):
        key = line["source"].rpartition("#")[2].removesuffix(".jpg")
        proposed = _decode(line["proposed"])
        target = max(truth[key], key=lambda t: _iou(proposed, t))
        best = _iou(proposed, target)
        kind = line["predicted_iou"]
        if kind in (EXACT, COPY):
            assert line["verdict"] == "keep" and iou == 1.0
        elif kind == BLOB:
            assert line["verdict"] == "reject" and best < policy.correct_from_iou
        elif line["verdict"] == "correct":  # an eroded object, corrected toward the object
            assert policy.correct_from_iou <= best < policy.keep_iou
            assert _iou(_decode(line["reviewed"]), target) > best and iou >= best - 1e-9
    assert report["rejected"] == pytest.approx(np.mean([ln["verdict"] == "reject" for ln in lines]))
    assert 0 < report["added_per_image"] <= 1  # each scene's left-out object
    corrected = report["by_predicted_iou"]["bins"][3]  # [0.8, 0.88): the eroded masks
    assert corrected["masks"] == sum(ln["predicted_iou"] == ERODED for ln in lines)
    assert report["timing"]["corrected_per_minute"] < report["timing"]["reviewed_per_minute"]
    assert (folder / "audit_report.png").stat().st_size > 10_000


def test_verification_answers_train_a_verifier_measured_on_held_out_answers(
    proposals: Path, scenes: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "verify"
    saengine(capsys, "verify", "create", str(proposals), f"output={folder}", "sample=null",
             "model=bundled", "onnx.quantize=false", "progress=false")  # fmt: skip
    campaign = Campaign(folder)
    server, url = start_server(campaign, "embed=false", "rounds=false")
    simulate = ("verify", "simulate", str(folder), f"truth={scenes['train']}", f"server={url}")
    try:
        saengine(capsys, *simulate, "annotators=1", "max_images=9")
        rounded = saengine(
            capsys, "verify", "round", str(folder), "round.min_answers=3",
            "round.target_precision=0.8", "train.steps=60", "train.batch_size=32",
            "verifier.channels=16",
        )  # fmt: skip
        registry = VerifierRegistry(folder / "registry")
        (name,) = registry.rounds()
        record = registry.record(name)
        assert record.promoted, rounded
        saengine(capsys, *simulate, "annotators=1")  # people answer what the verifier left
    finally:
        server.terminate()
        server.wait(timeout=60)
    examples_file = registry.work_dir(name) / "answers.parquet"
    parts = {part: read_examples(examples_file, part) for part in (TRAIN, CALIBRATE, TEST)}
    images = {part: {e.image_id for e in examples} for part, examples in parts.items()}
    assert not images[TRAIN] & images[TEST] and not images[CALIBRATE] & images[TEST]
    with campaign.db.read() as db:
        verdicts = dict(db.execute("SELECT mask_id, verdict FROM reviews").fetchall())
        saved = db.execute("SELECT COUNT(*) FROM reviews WHERE annotator_id IS NULL").fetchone()
    # the test part's precision, recomputed from the people's answers in the database
    verifier, metadata = load_verifier(registry.checkpoint(name))
    scores = score_examples(verifier, parts[TEST], campaign.embeddings(metadata.sam_weights_sha256))
    accepted = [e for e, s in zip(parts[TEST], scores) if s >= record.threshold]
    good = [verdicts[e.mask_id] == "keep" for e in accepted]
    test = record.metrics["test"]
    assert test["accepted"] == len(accepted) and test["answers"] == len(parts[TEST])
    assert test["precision"] == pytest.approx(np.mean(good) if good else 1.0)
    report = json.loads(saengine(capsys, "verify", "report", str(folder), "json=true"))
    assert report["verifier"]["human_answers_saved"] == saved[0] > 0
    assert report["people"]["answers"] + saved[0] == len(verdicts)
    assert report["rounds"][0]["test_precision"] == test["precision"]
    seconds = ReviewPolicy().seconds_to_look + ReviewPolicy().seconds_per_key
    assert report["people"]["verified_per_minute"] == pytest.approx(60 / seconds)
    with campaign.db.read() as db:
        left = db.execute("SELECT COUNT(*) FROM images WHERE status != 'done'").fetchone()[0]
    assert left == 0
