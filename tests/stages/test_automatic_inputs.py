"""The generator on inputs that real folders contain."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from model import build_sam
from model.testing import sharpen_decoder_
from stages.automatic import AutomaticMaskGenerator, annotations_to_masks
from tests.conftest import load_rgb

FAST = dict(points_per_side=2, pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=1.0)


@pytest.fixture(scope="module")
def sam():
    model = build_sam("vit_tiny")
    sharpen_decoder_(model)
    return model


def test_nothing_passes_gives_empty_list():
    """Untrained weights give logits near 0: nothing passes the default stability filter."""
    generator = AutomaticMaskGenerator(build_sam("vit_tiny"), points_per_side=4)
    assert generator.generate(load_rgb("dog.jpg")) == []


@pytest.mark.parametrize("mode", ["L", "RGBA", "I;16", "CMYK"])
def test_other_image_modes(sam, mode):
    rgb = Image.fromarray(load_rgb("dog.jpg")).resize((160, 107))
    image = (
        rgb.convert(mode)
        if mode != "I;16"
        else Image.fromarray(np.array(rgb.convert("L")).astype(np.uint16) * 257)
    )
    annotations = AutomaticMaskGenerator(sam, **FAST).generate(image)
    assert len(annotations) == 12  # 4 points x 3 masks, nothing filtered
    assert all(a["segmentation"]["size"] == [107, 160] for a in annotations)


def test_tiny_image_smaller_than_a_crop(sam):
    image = np.full((3, 2, 3), 128, np.uint8)
    annotations = AutomaticMaskGenerator(sam, crop_n_layers=2, **FAST).generate(image)
    masks = annotations_to_masks(annotations)
    assert masks.shape[1:] == (3, 2)
    for annotation, mask in zip(annotations, masks):
        assert annotation["area"] == mask.sum()
        x, y, w, h = annotation["crop_box"]
        assert w > 0 and h > 0 and x + w <= 2 and y + h <= 3


def test_large_image_bounded_memory_same_result(sam):
    image = np.array(Image.fromarray(load_rgb("truck.jpg")).resize((3000, 2000)))
    whole = AutomaticMaskGenerator(sam, **FAST).generate(image)
    # one full-resolution candidate at a time
    chunked = AutomaticMaskGenerator(sam, chunk_bytes=1, **FAST).generate(image)
    assert len(whole) == len(chunked) == 12
    assert [a["segmentation"] for a in whole] == [a["segmentation"] for a in chunked]


def test_max_area_fraction_drops_whole_image_masks(sam):
    image = load_rgb("dog.jpg")
    everything = AutomaticMaskGenerator(sam, **FAST).generate(image)
    limit = (max(a["area"] for a in everything) - 0.5) / (image.shape[0] * image.shape[1])
    kept = AutomaticMaskGenerator(sam, max_mask_area_frac=limit, **FAST).generate(image)
    big = [a for a in everything if a["area"] >= limit * image.shape[0] * image.shape[1]]
    assert big and len(kept) == len(everything) - len(big)
    assert all(a["area"] < limit * image.shape[0] * image.shape[1] for a in kept)


def test_annotation_fields_are_consistent(sam):
    annotations = AutomaticMaskGenerator(sam, **FAST).generate(load_rgb("groceries.jpg"))
    masks = annotations_to_masks(annotations)
    for annotation, mask in zip(annotations, masks):
        ys, xs = np.nonzero(mask)
        assert annotation["area"] == len(xs)
        assert annotation["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min(), ys.max() - ys.min()]
        assert isinstance(annotation["segmentation"]["counts"], str)


def test_overlapped_post_processing_gives_the_same_masks():
    """Post-processing on a second thread (the GPU default) changes nothing: several point
    batches per crop, two crop layers, the bundled trained model's varied masks."""
    from engine.models import BUNDLED_CHECKPOINT

    trained = build_sam("vit_mini", checkpoint=BUNDLED_CHECKPOINT)
    settings = dict(
        points_per_side=8,
        points_per_batch=10,
        pred_iou_thresh=0.02,
        stability_score_thresh=0.05,
        crop_n_layers=1,
    )
    image = load_rgb("groceries.jpg")
    sequential = AutomaticMaskGenerator(trained, overlap=False, **settings).generate(image)
    overlapped = AutomaticMaskGenerator(trained, overlap=True, **settings).generate(image)
    assert len(sequential) >= 10
    assert overlapped == sequential
