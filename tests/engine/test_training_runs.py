"""Real training runs on synthetic scenes: learning, resume, checkpoints in the official
format, Ray Train with 2 workers against 1, and a two-round loop with the registry."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.models import load_model
from engine.registry import Registry
from engine.training.evaluate import evaluate
from engine.training.rounds import EvalSettings, run_round
from engine.training.synthetic import SceneOptions, write_synthetic_dataset
from engine.training.trainer import MODEL_FILE, StepResult, TrainConfig, Trainer, train_with_ray
from model import build_sam
from stages.automatic import GeneratorConfig
from tests.engine.jobrun import FAST, run_saengine

# Scenes with one or two large objects: learnable in a few dozen CPU steps.
EASY = SceneOptions(size=64, objects=(1, 2), min_area=200, part_probability=0.0)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("synthetic")
    write_synthetic_dataset(str(root / "train"), num_images=32, split="train", options=EASY)
    write_synthetic_dataset(str(root / "val"), num_images=8, split="val", options=EASY)
    return {"train": str(root / "train"), "val": str(root / "val")}


def _config(data: dict[str, str], output: Path, **changes: object) -> TrainConfig:
    config = TrainConfig(
        data=(data["train"],),
        output=str(output),
        model="vit_mini",
        steps=40,
        batch_size=4,
        masks_per_image=2,
        num_iterations=3,
        lr=3e-4,
        warmup_steps=5,
        decay_at=(1.0,),
        checkpoint_every=1000,
    )
    return replace(config, **changes)  # type: ignore[arg-type]


def _point_miou(sam: torch.nn.Module, data: dict[str, str]) -> float:
    result = evaluate(
        sam,
        [data["val"]],
        max_images=8,
        max_masks=2,  # type: ignore[arg-type]
        generator_config=GeneratorConfig(points_per_side=4),
    )
    return result.point_miou


def test_short_run_lowers_loss_and_raises_heldout_miou(
    data: dict[str, str], tmp_path: Path
) -> None:
    trainer = Trainer(_config(data, tmp_path / "run"))
    before = _point_miou(trainer.sam, data)
    trainer.sam.train()
    results = trainer.run()
    losses = [r.loss for r in results]
    assert np.mean(losses[-10:]) < 0.8 * np.mean(losses[:10])
    after = _point_miou(build_sam("vit_mini", checkpoint=tmp_path / "run" / MODEL_FILE), data)
    assert after > before + 0.1, (before, after)


def test_resume_continues_the_same_run(data: dict[str, str], tmp_path: Path) -> None:
    straight = _config(data, tmp_path / "a", steps=4, checkpoint_every=2, masks_per_image=1)
    Trainer(straight).run()
    interrupted = replace(straight, output=str(tmp_path / "b"))

    def crash(result: StepResult) -> None:
        if result.step == 3:
            raise KeyboardInterrupt("killed")

    with pytest.raises(KeyboardInterrupt):
        Trainer(interrupted).run(crash)
    resumed = Trainer(interrupted)
    assert resumed.step == 2
    resumed.run()
    a = torch.load(tmp_path / "a" / MODEL_FILE)
    b = torch.load(tmp_path / "b" / MODEL_FILE)
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ValueError, match="another config"):
        Trainer(replace(interrupted, lr=1e-3))


def test_checkpoints_round_trip_with_the_official_package(
    data: dict[str, str], tmp_path: Path
) -> None:
    from segment_anything.build_sam import _build_sam

    config = _config(
        data,
        tmp_path / "tiny",
        model="vit_tiny",
        steps=1,
        batch_size=1,
        masks_per_image=1,
        num_iterations=1,
    )
    Trainer(config).run()
    state = torch.load(tmp_path / "tiny" / MODEL_FILE)
    official = _build_sam(
        encoder_embed_dim=64, encoder_depth=2, encoder_num_heads=2, encoder_global_attn_indexes=[1]
    )
    official.load_state_dict(state)  # strict: same keys and shapes
    ours = build_sam("vit_tiny", checkpoint=tmp_path / "tiny" / MODEL_FILE)
    image = torch.randn(1, 3, 1024, 1024)
    with torch.no_grad():
        ours_embedding = ours.image_encoder(image)
        official_embedding = official.image_encoder(image)
        assert (ours_embedding - official_embedding).abs().max() < 1e-4
    torch.save(official.state_dict(), tmp_path / "back.pth")
    back = build_sam("vit_tiny", checkpoint=tmp_path / "back.pth").state_dict()
    assert all(torch.equal(back[k], state[k]) for k in state)


@pytest.mark.slow
def test_ray_train_two_workers_match_one(data: dict[str, str], tmp_path: Path) -> None:
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        runs = {}
        for workers in (1, 2):
            config = _config(
                data,
                tmp_path / f"w{workers}",
                steps=2,
                batch_size=2,
                masks_per_image=2,
                num_iterations=2,
            )
            runs[workers] = train_with_ray(config, workers=workers)
    finally:
        ray.shutdown()
    one, two = ([r["loss"] for r in runs[w]] for w in (1, 2))
    assert len(one) == len(two) == 2
    assert one == pytest.approx(two, rel=1e-4)
    a = torch.load(tmp_path / "w1" / MODEL_FILE)
    b = torch.load(tmp_path / "w2" / MODEL_FILE)
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst < 1e-5, worst


def test_two_round_loop_promotes_and_the_registry_says_why(
    data: dict[str, str], tmp_path: Path
) -> None:
    registry_root = tmp_path / "registry"
    settings = EvalSettings(max_images=4, max_masks=2, points_per_side=4)
    first_config = _config(data, tmp_path / "unused", steps=30)
    first = run_round(
        registry_root=str(registry_root),
        train=first_config,
        eval_data=[data["val"]],
        eval_settings=settings,
    )
    assert first.promoted and first.reason.startswith("first model")
    second = run_round(
        registry_root=str(registry_root),
        train=replace(first_config, steps=10),
        eval_data=[data["val"]],
        eval_settings=settings,
    )
    registry = Registry(registry_root)
    assert registry.rounds() == ["round_001", "round_002"]
    assert second.parent == "round_001" and second.parent_sha256 == first.sha256
    assert second.parent_metrics == first.metrics
    metric_new, metric_old = second.metrics["point_miou"], first.metrics["point_miou"]
    assert second.promoted == (metric_new > metric_old)
    assert ("> parent round_001" if second.promoted else "parent stays latest") in second.reason
    expected_latest = "round_002" if second.promoted else "round_001"
    assert registry.latest() == expected_latest
    recorded = json.loads((registry_root / "rounds" / "round_002" / "round.json").read_text())
    assert recorded["training_shards"] == [str(Path(data["train"]) / "sa_000000.tar")]
    assert (registry_root / "metrics.png").stat().st_size > 0
    latest = load_model("vit_mini", checkpoint=f"{registry_root}/latest").state_dict()
    promoted = torch.load(registry.checkpoint(expected_latest))
    assert all(torch.equal(latest[k], promoted[k]) for k in promoted)
    # A generation job takes the registry's latest model.
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "scene.jpg").write_bytes(_first_val_jpeg(data))
    result = run_saengine(
        "generate",
        f"input={photos}",
        f"output={tmp_path / 'dataset'}",
        *FAST,
        "model=bundled",
        f"model.checkpoint={registry_root}/latest",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads((tmp_path / "dataset" / "summary.json").read_text())
    assert summary["model"]["checkpoint_sha256"] == registry.record(expected_latest).sha256


def _first_val_jpeg(data: dict[str, str]) -> bytes:
    import tarfile

    with tarfile.open(Path(data["val"]) / "sa_000000.tar") as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith(".jpg"))
        handle = tar.extractfile(member)
        assert handle is not None
        return handle.read()
