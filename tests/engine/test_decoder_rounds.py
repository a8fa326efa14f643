"""Decoder rounds: the prompt encoder and mask decoder fine-tuned on stored embeddings, on
scenes of the `clutter` family, from a model that has never seen them (seeded random weights:
its decoder learns within a CI-sized round; the bundled model's does not move measurably in
so few CPU steps, see docs/benchmarks.md): no image encoder pass, the encoder's weights
unchanged, the held-out metric up, and the registry recording the kind."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from engine.dataset.reader import build_index
from engine.embeddings import EmbeddingStore, embed_image
from engine.models import weights_sha256
from engine.registry import Registry
from engine.storage import Storage
from engine.training.decoder import DecoderTrainConfig, check_kind, decoder_loop
from engine.training.rounds import EvalSettings, run_round
from engine.training.synthetic import SceneOptions, make_scene, write_synthetic_dataset
from model import SamPredictor, build_sam

UNSEEN = SceneOptions(size=64, objects=(1, 2), min_area=200, part_probability=0.0, family="clutter")
EVAL = EvalSettings(max_images=8, max_masks=3, points_per_side=2)


@pytest.fixture(scope="module")
def unseen(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Clutter scenes (train, held-out val) and the bundled model's embeddings of the train
    images in an embedding store, as a campaign's embed job leaves them."""
    root = tmp_path_factory.mktemp("unseen")
    train, val = str(root / "train"), str(root / "val")
    write_synthetic_dataset(train, num_images=32, split="train", options=UNSEEN)
    write_synthetic_dataset(val, num_images=8, split="val", options=UNSEEN)
    torch.manual_seed(0)
    sam = build_sam("vit_mini").eval()
    torch.save(sam.state_dict(), root / "start.pth")
    sha = weights_sha256(sam)
    store = EmbeddingStore(Storage(str(root / "store")), sha)
    predictor = SamPredictor(sam)
    for entry in build_index([train]):
        rgb = np.asarray(Image.open(io.BytesIO(entry.image.read_bytes())).convert("RGB"))
        store.write(entry.key, embed_image(predictor, rgb).array)
    return {
        "train": train,
        "val": val,
        "store": str(root / "store"),
        "sha": sha,
        "start": str(root / "start.pth"),
    }


def _config(unseen: dict[str, str], output: Path, **changes: object) -> DecoderTrainConfig:
    settings: dict[str, object] = {
        "data": (unseen["train"],),
        "output": str(output),
        "init_checkpoint": unseen["start"],
        "steps": 40,
        "batch_size": 4,
        "masks_per_image": 2,
        "num_iterations": 3,
        "lr": 1e-3,
        "warmup_steps": 5,
        "decay_at": (1.0,),
        "checkpoint_every": 1000,
        "embeddings": unseen["store"],
        "embeddings_sha256": unseen["sha"],
    }
    return DecoderTrainConfig(**{**settings, **changes})  # type: ignore[arg-type]


def test_a_decoder_round_reads_stored_embeddings_and_never_runs_the_encoder(
    unseen: dict[str, str], tmp_path: Path
) -> None:
    loop = decoder_loop(_config(unseen, tmp_path / "run", steps=3))
    calls: list[int] = []
    loop.task.sam.image_encoder.register_forward_hook(lambda *_: calls.append(1))
    before = {k: v.clone() for k, v in loop.task.sam.state_dict().items()}
    loop.run()
    task = loop.task
    assert task.stored == len(task.cache) > 0 and calls == []
    saved = build_sam("vit_mini", checkpoint=tmp_path / "run" / "model.pth").state_dict()
    changed = {k for k in before if not torch.equal(before[k], saved[k])}
    assert changed and not any(k.startswith("image_encoder.") for k in changed)
    # Without a store, each image's embedding is computed once by the frozen encoder.
    bare = decoder_loop(_config(unseen, tmp_path / "bare", steps=3, embeddings=""))
    bare.task.sam.image_encoder.register_forward_hook(lambda *_: calls.append(1))
    bare.run()
    assert bare.task.stored == 0 and len(calls) == len(bare.task.cache) > 0


def test_a_decoder_round_raises_the_held_out_metric_on_an_unseen_scene_family(
    unseen: dict[str, str], tmp_path: Path
) -> None:
    """40 decoder steps on stored embeddings of clutter scenes beat the starting model on
    held-out clutter scenes; the round is promoted and recorded as a decoder round, and its
    model keeps the starting model's image encoder."""
    registry = tmp_path / "registry"
    record = run_round(
        registry_root=str(registry),
        train=_config(unseen, tmp_path / "unused"),
        eval_data=[unseen["val"]],
        eval_settings=EVAL,
        kind="decoder",
    )
    assert record.kind == "decoder" and Registry(registry).record(record.name).kind == "decoder"
    assert record.parent_metrics is not None
    before, after = record.parent_metrics["point_miou"], record.metrics["point_miou"]
    assert after > before + 0.05, (before, after)
    assert record.promoted and Registry(registry).latest() == record.name
    tuned = build_sam("vit_mini", checkpoint=Registry(registry).checkpoint(record.name))
    start = build_sam("vit_mini", checkpoint=unseen["start"])
    assert weights_sha256(tuned.image_encoder) == weights_sha256(start.image_encoder)
    assert weights_sha256(tuned) != weights_sha256(start)


def test_round_kinds_are_checked() -> None:
    assert check_kind("decoder") == "decoder"
    with pytest.raises(ValueError, match="full | decoder"):
        check_kind("encoder")
    with pytest.raises(ValueError, match="embeddings_sha256"):
        DecoderTrainConfig(data=("x",), output="y", embeddings="store")


def test_the_clutter_family_is_its_own_deterministic_scenes() -> None:
    options = SceneOptions(size=96, family="clutter")
    first = make_scene(np.random.default_rng(3), options)
    again = make_scene(np.random.default_rng(3), options)
    shapes = make_scene(np.random.default_rng(3), SceneOptions(size=96))
    assert np.array_equal(first.image, again.image) and len(first.masks) > 0
    assert not np.array_equal(first.image, shapes.image)
    assert all(mask.sum() >= options.min_area for mask in first.masks)
    with pytest.raises(ValueError, match="shapes, clutter"):
        SceneOptions(family="photos")
