"""Losses against hand-computed values, prompt simulation properties, lowest-loss selection,
the SA-1B reader, synthetic scenes, the learning-rate schedule."""

from __future__ import annotations

import io
import json
import math
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.dataset.reader import build_index
from engine.training.loop import learning_rate_factor
from engine.training.reader import global_batch_indices, load_sample, worker_share
from engine.training.synthetic import SceneOptions, make_scene, write_synthetic_dataset
from engine.training.trainer import TrainConfig
from model.losses import dice_loss, focal_loss, mask_iou, sam_loss
from stages.assisted.prompts import error_points, iteration_schedule, noisy_boxes, uniform_points


def test_focal_loss_by_hand() -> None:
    logits = torch.tensor([[[0.0, 2.0]]])
    targets = torch.tensor([[[1.0, 0.0]]])
    # pixel 1: p = 0.5, target 1: CE = ln 2, (1 - p_t)^2 = 0.25
    # pixel 2: p = sigmoid(2), target 0: CE = ln(1 + e^2), (1 - p_t)^2 = sigmoid(2)^2
    p2 = 1 / (1 + math.exp(-2))
    expected = (0.25 * math.log(2) + p2**2 * math.log(1 + math.e**2)) / 2
    assert focal_loss(logits, targets, alpha=-1).item() == pytest.approx(expected, rel=1e-6)
    weighted = (0.25 * 0.25 * math.log(2) + 0.75 * p2**2 * math.log(1 + math.e**2)) / 2
    assert focal_loss(logits, targets, alpha=0.25).item() == pytest.approx(weighted, rel=1e-6)


def test_dice_and_iou_by_hand() -> None:
    logits = torch.tensor([[[0.0, 100.0], [-100.0, 100.0]]])  # probs 0.5, 1, 0, 1
    targets = torch.tensor([[[1.0, 1.0], [0.0, 0.0]]])
    # dice = 1 - (2 * 1.5 + 1) / (2.5 + 2 + 1)
    assert dice_loss(logits, targets).item() == pytest.approx(1 - 4 / 5.5, rel=1e-5)
    # thresholded at logit > 0: {(0,1), (1,1)} vs {(0,0), (0,1)}: IoU 1/3
    assert mask_iou(logits, targets).item() == pytest.approx(1 / 3)


def test_sam_loss_backpropagates_the_lowest_loss_mask_only() -> None:
    target = torch.zeros(1, 8, 8)
    target[0, 2:6, 2:6] = 1
    logits = torch.stack([(target[0] * 2 - 1) * s for s in (-5.0, 10.0, 1.0)])[None]
    logits.requires_grad_(True)
    iou_pred = torch.tensor([[0.2, 0.9, 0.5]], requires_grad=True)
    loss, best = sam_loss(logits, iou_pred, target)
    assert best.tolist() == [1]
    loss.sum().backward()
    assert logits.grad is not None
    assert logits.grad[0, 0].abs().sum() == 0 and logits.grad[0, 2].abs().sum() == 0
    # IoU head: MSE against the true IoUs (0, 1, 1) of all three candidates.
    expected_mse = ((0.2 - 0) ** 2 + (0.9 - 1) ** 2 + (0.5 - 1) ** 2) / 3
    focal_dice = 20 * focal_loss(logits[:, 1], target) + dice_loss(logits[:, 1], target)
    assert loss.item() == pytest.approx(focal_dice.item() + expected_mse, rel=1e-5)


def _random_masks(rng: np.random.Generator, count: int, size: int = 40) -> torch.Tensor:
    masks = torch.zeros(count, size, size, dtype=torch.bool)
    for index in range(count):
        x0, y0 = rng.integers(0, size - 10, 2)
        w, h = rng.integers(3, 10, 2)
        masks[index, y0 : y0 + h, x0 : x0 + w] = True
    return masks


def test_error_points_lie_in_the_error_region_with_the_right_label() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        targets = _random_masks(rng, 6)
        predicted = _random_masks(rng, 6)
        points, labels = error_points(predicted, targets, rng)
        for point, label, pred, target in zip(points, labels, predicted, targets):
            x, y = int(point[0]), int(point[1])
            assert pred[y, x] != target[y, x], "point outside the error region"
            assert label == int(target[y, x]), "1 for a false negative, 0 for a false positive"


def test_error_point_without_error_is_a_foreground_click() -> None:
    targets = _random_masks(np.random.default_rng(1), 3)
    points, labels = error_points(targets.clone(), targets, np.random.default_rng(2))
    assert labels.tolist() == [1, 1, 1]
    assert all(targets[i, int(p[1]), int(p[0])] for i, p in enumerate(points))


def test_first_points_are_uniform_foreground_pixels() -> None:
    mask = torch.zeros(1, 20, 20, dtype=torch.bool)
    mask[0, 5:7, 10:12] = True  # 4 pixels
    rng = np.random.default_rng(0)
    seen = {tuple(uniform_points(mask, rng)[0].int().tolist()) for _ in range(200)}
    assert seen == {(10, 5), (11, 5), (10, 6), (11, 6)}


def test_box_noise_is_ten_percent_of_the_side_at_most_20_px() -> None:
    mask = torch.zeros(1, 1000, 1000, dtype=torch.bool)
    mask[0, 100:150, 200:700] = True  # 500 wide, 50 high
    rng = np.random.default_rng(0)
    boxes = torch.stack([noisy_boxes(mask, rng)[0] for _ in range(2000)])
    deltas = boxes - torch.tensor([200.0, 100.0, 699.0, 149.0])
    stds = deltas.std(dim=0)
    assert stds[0].item() == pytest.approx(20, rel=0.1)  # min(0.1 * 499, 20)
    assert stds[1].item() == pytest.approx(4.9, rel=0.1)  # 0.1 * 49
    assert (boxes >= 0).all() and (boxes <= 999).all()


def test_eleven_iterations_have_eight_points_and_two_mask_only() -> None:
    for seed in range(10):
        schedule = iteration_schedule(11, np.random.default_rng(seed))
        assert len(schedule) == 10 and sum(schedule) == 8 and schedule[-1] is False


def test_learning_rate_warms_up_then_steps_down() -> None:
    config = TrainConfig(data=("x",), output="y", steps=100, warmup_steps=10, lr=1.0)
    factors = [learning_rate_factor(step, config) for step in range(100)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == 1.0
    assert factors[66] == 1.0 and factors[67] == pytest.approx(0.1)
    assert factors[89] == pytest.approx(0.01)


def test_synthetic_scenes_are_exact_deterministic_and_split(tmp_path: Path) -> None:
    options = SceneOptions(size=64, objects=(3, 5), min_area=10, part_probability=1.0)
    scene = make_scene(np.random.default_rng(0), options)
    again = make_scene(np.random.default_rng(0), options)
    assert np.array_equal(scene.image, again.image) and np.array_equal(scene.masks, again.masks)
    assert scene.masks.shape[1:] == (64, 64) and len(scene.masks) >= 3
    # Two-part objects: some mask is the union of two others (part / whole ambiguity).
    masks = list(scene.masks)
    unions = [
        (i, j, k)
        for i, whole in enumerate(masks)
        for j, a in enumerate(masks)
        for k, b in enumerate(masks)
        if i not in (j, k) and j < k and np.array_equal(a | b, whole) and not (a & b).any()
    ]
    assert unions, "no part/whole triple"
    write_synthetic_dataset(str(tmp_path / "train"), num_images=3, split="train", options=options)
    write_synthetic_dataset(str(tmp_path / "val"), num_images=3, split="val", options=options)
    train = [
        load_sample(e, image_size=64, max_masks=4, rng=np.random.default_rng(0))
        for e in build_index([str(tmp_path / "train")])
    ]
    val = [
        load_sample(e, image_size=64, max_masks=4, rng=np.random.default_rng(0))
        for e in build_index([str(tmp_path / "val")])
    ]
    assert not torch.equal(train[0].image, val[0].image)


def _write_sa1b_flat(folder: Path, tar_path: Path) -> None:
    """SA-1B's own layouts: sa_<id>.jpg + sa_<id>.json flat in a folder, and in a tar."""
    from PIL import Image

    from engine.training.synthetic import scene_record

    folder.mkdir()
    scene = make_scene(np.random.default_rng(5), SceneOptions(size=64, min_area=10))
    record = scene_record(scene, 7)
    buffer = io.BytesIO()
    Image.fromarray(scene.image).save(buffer, format="JPEG")
    (folder / "sa_7.jpg").write_bytes(buffer.getvalue())
    (folder / "sa_7.json").write_text(json.dumps(record))
    with tarfile.open(tar_path, "w") as tar:
        tar.add(folder / "sa_7.jpg", arcname="sa_7.jpg")
        tar.add(folder / "sa_7.json", arcname="sa_7.json")


def test_reader_handles_sa1b_layouts_and_samples_masks(tmp_path: Path) -> None:
    _write_sa1b_flat(tmp_path / "flat", tmp_path / "sa_000000.tar")
    flat = build_index([str(tmp_path / "flat")])
    tarred = build_index([str(tmp_path / "sa_000000.tar")])
    assert [e.key for e in flat] == [e.key for e in tarred] == ["sa_7"]
    a = load_sample(flat[0], image_size=128, max_masks=2, rng=np.random.default_rng(3))
    b = load_sample(tarred[0], image_size=128, max_masks=2, rng=np.random.default_rng(3))
    assert torch.equal(a.masks, b.masks) and a.masks.shape == (2, 128, 128)
    assert a.image.shape == (3, 128, 128)
    many = load_sample(flat[0], image_size=128, max_masks=100, rng=np.random.default_rng(3))
    record = json.loads((tmp_path / "flat" / "sa_7.json").read_text())
    assert len(many.masks) == len(record["annotations"])
    strict = load_sample(
        flat[0], image_size=128, max_masks=100, min_mask_area=10**6, rng=np.random.default_rng(3)
    )
    assert len(strict.masks) == 0


def test_global_batches_are_seeded_and_split_between_workers() -> None:
    first = global_batch_indices(10, seed=1, step=0, batch_size=4)
    assert first == global_batch_indices(10, seed=1, step=0, batch_size=4)
    assert first != global_batch_indices(10, seed=2, step=0, batch_size=4)
    epoch = [
        i for step in range(5) for i in global_batch_indices(10, seed=1, step=step, batch_size=2)
    ]
    assert sorted(epoch) == list(range(10))  # each sample once per epoch
    parts = [worker_share(first, rank, 2) for rank in range(2)]
    assert sorted(parts[0] + parts[1]) == sorted(first) and not set(parts[0]) & set(parts[1])


def test_eval_settings_check_the_promotion_rule() -> None:
    from engine.training.rounds import EvalSettings

    assert EvalSettings(promote="always").promote == "always"
    with pytest.raises(ValueError, match="promote"):
        EvalSettings(promote="sometimes")
