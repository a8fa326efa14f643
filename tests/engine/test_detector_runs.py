"""The stage-2 detector on real runs: synthetic scenes embedded by the bundled SAM, a short
training run that raises held-out AP, boxes in original pixels, the embedding cache keyed by
image bytes, resume, registry rounds beside the SAM rounds, and the command line."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from engine.cli import main
from engine.detection.data import PendingEmbedding, collect_images, read_images
from engine.detection.evaluate import evaluate_detector
from engine.detection.job import (
    DETECTOR_FILE,
    TRAIN_IMAGES,
    DetectorJob,
    EmbedSettings,
    collect,
    embedding_store,
    prepare_sam,
    run_detector_job,
)
from engine.detection.registry import DetectorRegistry, resolve_detector_reference
from engine.detection.rounds import run_detector_round
from engine.detection.trainer import (
    DetectorStep,
    DetectorTrainConfig,
    DetectorTrainer,
    TrainingInputs,
)
from engine.embeddings import EmbeddingStore
from engine.models import load_model, weights_sha256
from engine.registry import Registry
from engine.training.loop import STATE_FILE
from engine.training.loop import read_metrics as read_steps
from engine.training.synthetic import SceneOptions, write_synthetic_dataset
from stages.semi import BoxDetector, DetectorConfig, load_detector
from tests.engine.jobrun import run_saengine

BUNDLED = {
    "_target_": "engine.models.load_model",
    "name": "vit_mini",
    "checkpoint": "bundled",
    "random_seed": None,
    "sharpen": False,
}
# One to three large objects per scene: learnable in about a hundred CPU steps.
EASY = SceneOptions(size=128, objects=(1, 3), min_area=200, part_probability=0.0)
# A small detector: no stride-4 level, a narrow head.
SMALL = DetectorConfig(channels=32, head_convs=1, scales=(2.0, 1.0, 0.5))


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("scenes")
    write_synthetic_dataset(str(root / "train"), num_images=48, options=EASY)
    write_synthetic_dataset(str(root / "val"), num_images=16, split="val", options=EASY)
    # Twice the size (the same scenes' kind), for boxes in other original pixels.
    big = SceneOptions(size=256, objects=(1, 3), min_area=400, part_probability=0.0)
    write_synthetic_dataset(str(root / "big"), num_images=12, split="test", options=big)
    return {name: str(root / name) for name in ("train", "val", "big")} | {"root": str(root)}


def _job(data: dict[str, str], output: Path, **train: Any) -> DetectorJob:
    config = DetectorTrainConfig(
        data=(data["train"],),
        output=str(output),
        steps=120,
        batch_size=8,
        lr=2e-3,
        warmup_steps=10,
        checkpoint_every=1000,
    )
    return DetectorJob(
        train=replace(config, **train),
        detector=SMALL,
        eval_data=(data["val"],),
        model_config=BUNDLED,
        embed=EmbedSettings(cache=str(Path(data["root"]) / "cache")),
    )


@pytest.fixture(scope="module")
def trained(data: dict[str, str]) -> Path:
    output = Path(data["root"]) / "run"
    run_detector_job(_job(data, output))
    return output


def test_short_run_raises_heldout_ap(data: dict[str, str], trained: Path) -> None:
    detector, metadata = load_detector(trained / DETECTOR_FILE)
    sam = load_model("vit_mini", "bundled")
    store = embedding_store(str(Path(data["root"]) / "cache"), weights_sha256(sam))
    val = read_images(trained / "eval_images.parquet")
    torch.manual_seed(0)
    untrained = evaluate_detector(
        BoxDetector(detector.config).eval(), val, store, target_precision=0.9
    )
    after = metadata.metrics
    assert untrained["ap50"] < 0.05, untrained
    assert after["ap50"] > 0.4 and after["ap"] > 0.1, after
    steps = read_steps(trained)
    losses = [step["loss"] for step in steps]
    assert len(steps) == 120 and np.mean(losses[-10:]) < 0.7 * np.mean(losses[:10])
    # The metadata: the SAM the embeddings came from, the data, the threshold chosen.
    assert metadata.sam_weights_sha256 == weights_sha256(sam)
    assert metadata.training_shards == [str(Path(data["train"]) / "sa_000000.tar")]
    assert metadata.eval_shards == [str(Path(data["val"]) / "sa_000000.tar")]
    chosen = after["chosen"]
    assert chosen["achieved"] and chosen["precision"] >= 0.9 and chosen["recall"] > 0
    assert metadata.score_thresh == chosen["score_thresh"] == detector.confident_thresh
    assert after["num_objects"] == sum(len(image.boxes_xyxy) for image in val)


def test_detections_are_in_the_original_pixels(data: dict[str, str], trained: Path) -> None:
    """Scenes twice the training size: the same objects are twice as large in their own
    pixels, so only boxes mapped back to those pixels match them."""
    detector, _ = load_detector(trained / DETECTOR_FILE)
    sam = prepare_sam(BUNDLED, EmbedSettings())
    store = embedding_store(str(Path(data["root"]) / "cache"), sam.sha256)
    big = collect([data["big"]], sam, store, "big scenes")
    assert {image.original_size for image in big} == {(256, 256)}
    metrics = evaluate_detector(detector, big, store, target_precision=0.9)
    assert metrics["ap50"] > 0.2, metrics


def test_embeddings_are_cached_by_image_bytes(data: dict[str, str], tmp_path: Path) -> None:
    """The val scenes twice (same keys, same bytes) and the big scenes (same keys sa_1..,
    other bytes): one embedding per distinct image, none overwritten by a namesake."""
    copy = tmp_path / "val_copy"
    shutil.copytree(data["val"], copy)
    sam = load_model("vit_mini", "bundled")
    store = EmbeddingStore(_storage(tmp_path / "cache"), weights_sha256(sam))
    embedded: list[str] = []

    def embedder(items: Any, target: EmbeddingStore) -> int:
        for item in items:
            assert isinstance(item, PendingEmbedding)
            embedded.append(item.digest)
            target.write(item.digest, np.zeros((256, 16, 16), np.float16))
        return len(embedded)

    images = collect_images([data["val"], str(copy), data["big"]], store=store, embedder=embedder)
    assert len(images) == 16 + 16 + 12
    assert len(embedded) == len(set(embedded)) == 16 + 12
    by_source = {(Path(i.source.split("#")[0]).parent.name, i.key): i.digest for i in images}
    assert by_source[("val", "sa_1")] == by_source[("val_copy", "sa_1")]
    assert by_source[("val", "sa_1")] != by_source[("big", "sa_1")]
    again: list[str] = []
    collect_images([data["val"]], store=store, embedder=lambda items, _: again.extend(items) or 0)
    assert again == []


def _storage(path: Path) -> Any:
    from engine.storage import Storage

    return Storage(str(path))


def _inputs(data: dict[str, str], trained: Path) -> TrainingInputs:
    sha = weights_sha256(load_model("vit_mini", "bundled"))
    return TrainingInputs(
        images_file=str(trained / TRAIN_IMAGES),
        embeddings_root=str(Path(data["root"]) / "cache"),
        sam_weights_sha256=sha,
        detector=replace(SMALL, image_size=256),
    )


def test_resume_continues_the_same_run(data: dict[str, str], trained: Path, tmp_path: Path) -> None:
    inputs = _inputs(data, trained)
    straight = _job(data, tmp_path / "a", steps=4, checkpoint_every=2).train
    DetectorTrainer(straight, inputs).run()
    interrupted = replace(straight, output=str(tmp_path / "b"))

    def crash(result: DetectorStep) -> None:
        if result.step == 3:
            raise KeyboardInterrupt("killed")

    with pytest.raises(KeyboardInterrupt):
        DetectorTrainer(interrupted, inputs).run(crash)
    resumed = DetectorTrainer(interrupted, inputs)
    assert resumed.step == 2
    resumed.run()
    a = torch.load(tmp_path / "a" / STATE_FILE)["detector"]
    b = torch.load(tmp_path / "b" / STATE_FILE)["detector"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [s["loss"] for s in read_steps(tmp_path / "a")] == [
        s["loss"] for s in read_steps(tmp_path / "b")
    ]
    with pytest.raises(ValueError, match="other settings"):
        DetectorTrainer(replace(interrupted, lr=1e-2), inputs)


def test_a_job_into_another_runs_output_changes_nothing(
    data: dict[str, str], trained: Path
) -> None:
    before = {p.name: p.read_bytes() for p in trained.iterdir() if p.is_file()}
    with pytest.raises(ValueError, match="other settings"):
        run_detector_job(_job(data, trained, lr=1e-2))
    assert {p.name: p.read_bytes() for p in trained.iterdir() if p.is_file()} == before


def test_rounds_register_beside_the_sam_rounds(
    data: dict[str, str], trained: Path, tmp_path: Path
) -> None:
    root = tmp_path / "registry"
    job = _job(data, tmp_path / "unused", steps=3)
    first = run_detector_round(registry_root=str(root), job=job)
    assert first.promoted and first.reason.startswith("first detector")
    second = run_detector_round(registry_root=str(root), job=job)  # from round_001's weights
    registry = DetectorRegistry(root)
    assert registry.rounds() == ["round_001", "round_002"]
    assert second.parent == "round_001" and second.parent_sha256 == first.sha256
    # The parent was evaluated again on the same images with the same SAM: same numbers.
    assert second.parent_metrics is not None
    assert second.parent_metrics["ap"] == first.metrics["ap"]
    assert second.promoted == (second.metrics["ap"] > first.metrics["ap"])
    latest = "round_002" if second.promoted else "round_001"
    assert registry.latest() == latest
    assert resolve_detector_reference(f"{root}/latest") == str(registry.checkpoint(latest))
    assert resolve_detector_reference(f"{root}/detector/round_001") == str(
        registry.checkpoint("round_001")
    )
    record = json.loads((root / "detector" / "rounds" / "round_002" / "round.json").read_text())
    assert record["sam_weights_sha256"] == first.sam_weights_sha256
    assert record["training_shards"] == [str(Path(data["train"]) / "sa_000000.tar")]
    _, metadata = load_detector(registry.checkpoint("round_002"))
    assert metadata.parent == "round_001" and metadata.score_thresh == record["score_thresh"]
    # The SAM registry at the same root is untouched.
    assert Registry(root).rounds() == [] and Registry(root).latest() is None
    assert not (root / "latest").exists()


def test_command_line_train_evaluate_and_errors(
    data: dict[str, str], trained: Path, tmp_path: Path
) -> None:
    cache = Path(data["root"]) / "cache"
    common = [
        f"eval_data=[{data['val']}]",
        f"embed.cache={cache}",
        "detector.channels=32",
        "detector.head_convs=1",
        "detector.scales=[2,1,0.5]",
        "batch_size=4",
        "warmup_steps=0",
    ]
    out = tmp_path / "cli"
    result = run_saengine(
        "detector", "train", f"data=[{data['val']}]", f"output={out}", "steps=2", *common
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "box AP" in result.stdout and (out / DETECTOR_FILE).is_file()
    evaluated = run_saengine(
        "detector",
        "evaluate",
        f"checkpoint={trained / DETECTOR_FILE}",
        f"data=[{data['val']}]",
        f"embed.cache={cache}",
        f"output={tmp_path / 'metrics.json'}",
    )
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    assert "at the detector's threshold" in evaluated.stdout
    saved = json.loads((trained / "eval_metrics.json").read_text())
    again = json.loads((tmp_path / "metrics.json").read_text())
    assert (
        again["ap"] == pytest.approx(saved["ap"]) and again["num_objects"] == saved["num_objects"]
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["fly"], "unknown detector command 'fly'"),
        (["train", "data=[a]", "output=b"], "eval_data"),
        (["train", "data=[a]", "eval_data=[a]", "output=b", "detector.scales=[3]"], "scales"),
        (["train", "data=[a]", "eval_data=[a]", "output=b", "target_precision=0"], "(0, 1]"),
        (["round", "registry=r", "data=[a]", "eval_data=[a]", "metric=loss"], "metric"),
        (["evaluate", "checkpoint=/no/detector.pt", "data=[a]"], "detector not found"),
    ],
)
def test_bad_command_lines_fail_in_one_line(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as stop:
        main(["detector", *args])
    assert stop.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("saengine: error:") and message in lines[0]


def test_evaluate_refuses_embeddings_of_another_sam(
    data: dict[str, str], trained: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [f"checkpoint={trained / DETECTOR_FILE}", f"data=[{data['val']}]", "model=demo"]
    with pytest.raises(SystemExit) as stop:
        main(["detector", "evaluate", *args])
    assert stop.value.code == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("saengine: error: the detector takes the embeddings of SAM"), error


def test_help_lists_subcommands_and_settings(capsys: pytest.CaptureFixture[str]) -> None:
    main(["detector", "--help"])
    listing = capsys.readouterr().out
    assert all(f"  {name} " in listing for name in ("train", "evaluate", "round"))
    main(["detector", "train", "--help"])
    text = capsys.readouterr().out
    for expected in ("eval_data", "target_precision", "steps=", "detector.channels=256"):
        assert expected in text
