"""Pure unit tests of the automatic generator's parts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from stages.automatic.config import GeneratorConfig, build_generator_config
from stages.automatic.filters import box_iou_matrix, nms, stability_score
from stages.automatic.geometry import (
    build_all_layer_point_grids,
    build_point_grid,
    generate_crop_boxes,
    is_box_near_crop_edge,
    masks_to_boxes_xyxy,
    uncrop_masks,
)
from stages.automatic.images import ImageInputError, to_rgb_uint8
from stages.automatic.postprocess import clean_mask
from stages.automatic.rle import coco_decode, coco_encode, masks_to_rles, rle_area, rle_to_mask


@pytest.mark.parametrize("n", [1, 2, 4, 32])
def test_point_grid_cell_centres(n):
    grid = build_point_grid(n)
    assert grid.shape == (n * n, 2)
    assert np.allclose(grid[0], [0.5 / n, 0.5 / n])
    assert np.allclose(grid[-1], [1 - 0.5 / n, 1 - 0.5 / n])
    if n > 1:  # row by row: x varies fastest
        assert grid[1, 1] == grid[0, 1] and grid[1, 0] > grid[0, 0]


def test_layer_grids_downscale():
    assert [len(g) for g in build_all_layer_point_grids(32, 2, 2)] == [1024, 256, 64]


def test_two_layers_give_21_crops_covering_the_image():
    boxes, layers = generate_crop_boxes((1500, 2250), 2, 512 / 1500)
    assert len(boxes) == 21 and layers == [0] + [1] * 4 + [2] * 16
    assert boxes[0] == [0, 0, 2250, 1500]
    for layer in (1, 2):
        chosen = [box for box, at in zip(boxes, layers) if at == layer]
        covered = np.zeros((1500, 2250), dtype=bool)
        for x0, y0, x1, y1 in chosen:
            covered[y0:y1, x0:x1] = True
        assert covered.all()
        per_side = 2**layer  # x-major: crop `per_side` starts the second column
        assert chosen[0][2] > chosen[per_side][0] and chosen[0][3] > chosen[1][1]


def test_stability_score_hand_computed():
    logits = torch.tensor([[[2.0, 0.5], [-0.5, -2.0]]])
    # > +1: one pixel; > -1: three pixels
    assert stability_score(logits, 0.0, 1.0).item() == pytest.approx(1 / 3)


def test_boxes_of_masks_inclusive_and_empty():
    masks = torch.zeros(2, 5, 6, dtype=torch.bool)
    masks[0, 1:3, 2:5] = True
    assert masks_to_boxes_xyxy(masks).tolist() == [[2, 1, 4, 2], [0, 0, 0, 0]]


def test_box_near_inner_crop_edge_only():
    crop = [100, 0, 300, 200]
    image = [0, 0, 300, 400]
    boxes = torch.tensor([[5, 50, 50, 90], [60, 60, 120, 100], [150, 10, 199, 150]])
    # first touches the crop's left edge (inner); second is inside; third touches the
    # crop's right edge, which is also the image's right edge
    assert is_box_near_crop_edge(boxes, crop, image).tolist() == [True, False, False]


def test_uncrop_masks_places_crop():
    masks = torch.ones(1, 2, 3, dtype=torch.bool)
    full = uncrop_masks(masks, [4, 1, 7, 3], height=5, width=8)
    assert full.shape == (1, 5, 8) and full.sum() == 6 and full[0, 1:3, 4:7].all()


def test_nms_greedy_suppression_hand_computed():
    # A (best) overlaps B by IoU 0.6; B overlaps C by 0.6 but A and C do not overlap:
    # B is suppressed by A, so C survives (only kept boxes suppress). D ties with A in
    # score and comes later in the input: ranked after A, kept (no overlap).
    boxes = torch.tensor(
        [[0.0, 0, 10, 10], [2.5, 0, 12.5, 10], [5.0, 0, 15, 10], [50.0, 50, 60, 60]]
    )
    scores = torch.tensor([0.9, 0.8, 0.7, 0.9])
    assert nms(boxes, scores, 0.5).tolist() == [0, 3, 2]
    assert nms(boxes, scores, 0.7).tolist() == [0, 3, 1, 2]  # 0.6 is not above 0.7
    assert nms(boxes[:0], scores[:0], 0.5).tolist() == []


def test_box_iou_hand_computed():
    boxes = torch.tensor([[0.0, 0.0, 2.0, 2.0], [1.0, 1.0, 3.0, 3.0]])
    assert box_iou_matrix(boxes)[0, 1].item() == pytest.approx(1 / 7)


def test_rle_round_trip_against_pycocotools():
    rng = np.random.default_rng(0)
    masks = rng.random((5, 37, 23)) > 0.6
    masks[1] = False
    masks[2] = True
    masks[3, 0, 0] = True
    rles = masks_to_rles(torch.from_numpy(masks))
    for mask, rle in zip(masks, rles):
        assert np.array_equal(rle_to_mask(rle), mask)
        assert rle_area(rle) == mask.sum()
        reference = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        assert coco_encode(rle)["counts"] == reference["counts"].decode()
        assert np.array_equal(coco_decode(coco_encode(rle)), mask)


def test_sa1b_sample_bbox_and_area_semantics():
    import json
    from pathlib import Path

    sample = Path(__file__).resolve().parents[1] / "data" / "sa1b_sample.json"
    for annotation in json.loads(sample.read_text())["annotations"]:
        mask = coco_decode(annotation["segmentation"])
        assert mask.sum() == annotation["area"]
        box = masks_to_boxes_xyxy(torch.from_numpy(mask)[None])[0].tolist()
        assert [box[0], box[1], box[2] - box[0], box[3] - box[1]] == annotation["bbox"]


def test_holes_and_islands_on_hand_made_mask():
    mask = np.zeros((20, 20), dtype=bool)
    mask[2:12, 2:12] = True  # 100 px square
    mask[5:7, 5:7] = False  # 4 px hole
    mask[15, 15] = True  # 1 px island
    cleaned, changed = clean_mask(mask, min_area=10)
    expected = np.zeros((20, 20), dtype=bool)
    expected[2:12, 2:12] = True
    assert changed and np.array_equal(cleaned, expected)
    same, changed = clean_mask(expected, min_area=10)
    assert not changed and np.array_equal(same, expected)
    # every component small: the largest one is kept
    tiny = np.zeros((20, 20), dtype=bool)
    tiny[0:2, 0:2] = True
    tiny[10, 10] = True
    kept, _ = clean_mask(tiny, min_area=10)
    assert kept.sum() == 4 and kept[0:2, 0:2].all()


def test_holes_and_islands_match_official_cv2():
    amg = pytest.importorskip("segment_anything.utils.amg")
    rng = np.random.default_rng(3)
    for _ in range(10):
        mask = rng.random((40, 50)) > 0.5
        expected, _ = amg.remove_small_regions(mask, 6, mode="holes")
        expected, _ = amg.remove_small_regions(expected, 6, mode="islands")
        assert np.array_equal(clean_mask(mask, 6)[0], expected)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (dict(points_per_side=0), "points_per_side must be >= 1"),
        (dict(pred_iou_thresh=1.5), "pred_iou_thresh must be in"),
        (dict(crop_overlap_ratio=1.0), "crop_overlap_ratio"),
        (dict(max_mask_area_frac=0.0), "max_mask_area_frac"),
        (dict(points_per_batch=0), "points_per_batch"),
        (dict(point_grids=(np.zeros((4, 2)),), crop_n_layers=1), "needs 2"),
        (dict(bogus=1), "unknown generator parameter"),
    ],
)
def test_config_errors(overrides, message):
    with pytest.raises(ValueError, match=message):
        GeneratorConfig().with_overrides(**overrides)


def test_presets():
    assert build_generator_config("official") == GeneratorConfig()
    sa1b = build_generator_config("sa1b")
    assert (sa1b.crop_n_layers, sa1b.crop_n_points_downscale_factor) == (2, 2)
    assert sa1b.min_mask_region_area == 100 and sa1b.max_mask_area_frac == 0.95
    with pytest.raises(ValueError, match="unknown generator preset"):
        build_generator_config("fast")


@pytest.mark.parametrize(
    "image",
    [
        np.full((9, 7), 200, np.uint8),
        np.full((9, 7, 1), 200, np.uint8),
        np.full((9, 7, 2), 200, np.uint8),
        np.dstack([np.full((9, 7, 3), 200, np.uint8), np.zeros((9, 7), np.uint8)]),
        np.full((9, 7, 3), 51400, np.uint16),
        np.full((9, 7, 3), 200 / 255, np.float32),
    ],
    ids=["gray", "gray1", "gray_alpha", "rgba", "16bit", "float"],
)
def test_images_become_rgb_uint8(image):
    rgb = to_rgb_uint8(image)
    assert rgb.shape == (9, 7, 3) and rgb.dtype == np.uint8 and (rgb == 200).all()


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (np.zeros((4, 4, 5), np.uint8), "channels"),
        (np.full((4, 4), np.nan, np.float32), "NaN"),
        (np.zeros((0, 4, 3), np.uint8), "empty"),
        ("image.png", "numpy array or PIL"),
        (np.zeros((4, 4), np.complex64), "unsupported image dtype"),
    ],
)
def test_bad_images_get_clear_errors(image, message):
    with pytest.raises(ImageInputError, match=message):
        to_rgb_uint8(image)
