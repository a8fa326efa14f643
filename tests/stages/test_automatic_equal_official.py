"""The automatic generator against the official SamAutomaticMaskGenerator, same weights.

Settings covered (vit_tiny, seeded random weights with a sharpened decoder, real images):
- full image only, 6x6 points, lowered IoU/stability thresholds, NMS at 1.0 (random
  weights give masks whose boxes all span the image, so a real NMS threshold leaves one);
- crop_n_layers=1 (5 crops, crop-edge filter, crop NMS) with min_mask_region_area=30
  (hole/island post-processing and its NMS);
- the default NMS threshold 0.7 (one mask survives) and the default thresholds (nothing
  passes, both return no masks).
Every case must give the same number of masks and, matched in order, mask IoU >= 0.99 (most
RLEs are identical; a pixel whose logit is within float rounding of 0 can flip), the same
crop box and point, and scores within 1e-4.
With the bundled model (vit_mini, trained by this project on synthetic scenes), whose masks
are varied and local: the full image with 16x16 points at the default NMS threshold 0.7,
and 8x8 points with crop_n_layers=1, min_mask_region_area=100 and the default crop NMS, both
with the IoU/stability thresholds lowered to 0.02/0.05 (a model trained on synthetic shapes
is unsure of itself on photographs).
"""

from __future__ import annotations

import pytest

from engine.models import BUNDLED_CHECKPOINT
from model import build_sam
from stages.automatic import AutomaticMaskGenerator
from stages.automatic.rle import coco_decode
from tests.conftest import load_rgb
from tests.oracle import build_pair, official, official_twin

LOWERED = dict(points_per_side=6, pred_iou_thresh=0.5, stability_score_thresh=0.5)
CASES = {
    "full_image_no_nms": dict(LOWERED, box_nms_thresh=1.0),
    "crops_and_small_regions": dict(
        LOWERED, box_nms_thresh=1.0, crop_nms_thresh=1.0, crop_n_layers=1, min_mask_region_area=30
    ),
    "default_nms": dict(LOWERED),
    "default_thresholds": dict(points_per_side=4),
}


TRAINED = dict(points_per_side=16, pred_iou_thresh=0.02, stability_score_thresh=0.05)
TRAINED_CASES = {
    "trained_full_image": dict(TRAINED),
    "trained_crops_and_small_regions": dict(
        TRAINED, points_per_side=8, crop_n_layers=1, min_mask_region_area=100
    ),
}


@pytest.fixture(scope="module")
def pair():
    return build_pair("vit_tiny", seed=3, sharpen=True)


@pytest.mark.parametrize("case", list(CASES))
def test_generator_matches_official(pair, case):
    ours, reference = pair
    image = load_rgb("groceries.jpg" if case == "crops_and_small_regions" else "dog.jpg")
    mine, expected = generate_both(ours, reference, image, CASES[case])
    assert len(mine) == len(expected)
    if case in ("full_image_no_nms", "crops_and_small_regions"):
        assert len(mine) >= 10
    assert_same_masks(mine, expected)


@pytest.fixture(scope="module")
def trained_pair():
    ours = build_sam("vit_mini", checkpoint=BUNDLED_CHECKPOINT)
    return ours, official_twin("vit_mini", ours)


@pytest.mark.parametrize("case", list(TRAINED_CASES))
def test_generator_with_a_trained_model_matches_official(trained_pair, case):
    ours, reference = trained_pair
    image = load_rgb("dog.jpg" if case == "trained_full_image" else "groceries.jpg")
    mine, expected = generate_both(ours, reference, image, TRAINED_CASES[case])
    assert len(mine) == len(expected) >= 10
    # Local masks, not the whole image again and again.
    assert len({tuple(a["bbox"]) for a in mine}) == len(mine)
    assert max(a["area"] for a in mine) < 0.5 * image.shape[0] * image.shape[1]
    assert_same_masks(mine, expected)


def generate_both(ours, reference, image, settings: dict) -> tuple[list[dict], list[dict]]:
    mine = AutomaticMaskGenerator(ours, **settings).generate(image)
    theirs = official.SamAutomaticMaskGenerator(reference, output_mode="coco_rle", **settings)
    return mine, theirs.generate(image)


def assert_same_masks(mine: list[dict], expected: list[dict]) -> None:
    identical = 0
    for got, want in zip(mine, expected):
        mask, want_mask = coco_decode(got["segmentation"]), coco_decode(want["segmentation"])
        union = (mask | want_mask).sum()
        assert union == 0 or (mask & want_mask).sum() / union >= 0.99
        identical += got["segmentation"] == want["segmentation"]
        assert got["crop_box"] == want["crop_box"]
        assert got["point_coords"][0] == pytest.approx(want["point_coords"][0])
        assert got["predicted_iou"] == pytest.approx(want["predicted_iou"], abs=1e-4)
        assert got["stability_score"] == pytest.approx(want["stability_score"], abs=1e-4)
    assert identical >= 0.8 * len(mine)
