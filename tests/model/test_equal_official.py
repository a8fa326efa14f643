"""Our SAM against the official `segment-anything` package, same seeded random weights.

Covered: image embeddings (vit_tiny on real images, vit_b on one image), prompt encoder
outputs and decoder low-res logits / IoU for one point, several fg/bg points, a box, box +
points, a mask input, multimask on and off; predictor end to end on real images of several
sizes (binary masks identical wherever the official logit is not within 1e-4 of the
threshold, where fp32 summation order alone can flip a pixel); state_dict round trip.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from model import SamPredictor, build_sam
from tests.conftest import load_rgb, portrait_rgb
from tests.oracle import build_pair, official, randomize_

EMBED_TOL = 1e-4
LOGIT_TOL = 1e-4

PROMPTS = {
    "one_point": dict(point_coords=np.array([[210.0, 305.0]]), point_labels=np.array([1])),
    "fg_bg_points": dict(
        point_coords=np.array([[210.0, 305.0], [420.0, 120.0], [55.0, 60.0]]),
        point_labels=np.array([1, 0, 1]),
    ),
    "box": dict(box=np.array([100.0, 90.0, 510.0, 400.0])),
    "box_and_points": dict(
        box=np.array([100.0, 90.0, 510.0, 400.0]),
        point_coords=np.array([[200.0, 300.0], [300.0, 200.0]]),
        point_labels=np.array([0, 1]),
    ),
}


@pytest.fixture(scope="module")
def pair():
    return build_pair("vit_tiny", seed=3, sharpen=True)


@pytest.fixture(scope="module")
def predictors(pair):
    ours, reference = pair
    image = load_rgb("dog.jpg")
    mine, theirs = SamPredictor(ours), official.SamPredictor(reference)
    mine.set_image(image)
    theirs.set_image(image)
    return mine, theirs


def assert_masks_equal(mine: np.ndarray, theirs: np.ndarray, ref_logits: np.ndarray) -> None:
    differ = mine != theirs
    assert np.all(np.abs(ref_logits[differ]) < LOGIT_TOL), (
        f"{differ.sum()} pixels differ, some far from the threshold"
    )
    assert differ.mean() < 1e-5


@pytest.mark.parametrize("image_name", ["dog.jpg", "truck.jpg", "portrait"])
def test_image_embedding_vit_tiny(pair, image_name):
    """Landscape photos, and a portrait one (taller than wide: padded on the right)."""
    ours, reference = pair
    image = portrait_rgb("groceries.jpg") if image_name == "portrait" else load_rgb(image_name)
    mine, theirs = SamPredictor(ours), official.SamPredictor(reference)
    mine.set_image(image)
    theirs.set_image(image)
    assert mine.input_size == theirs.input_size
    diff = (mine.get_image_embedding() - theirs.get_image_embedding()).abs().max().item()
    assert diff <= EMBED_TOL


def test_image_embedding_vit_b():
    ours, reference = build_pair("vit_b", seed=1)
    images = torch.rand(1, 3, 1024, 1024) * 255
    with torch.no_grad():
        mine = ours.image_encoder(ours.preprocess(images))
        theirs = reference.image_encoder(reference.preprocess(images))
    assert mine.shape == (1, 256, 64, 64)
    assert (mine - theirs).abs().max().item() <= EMBED_TOL


def _prompt_tensors(predictor, kwargs):
    size = predictor.original_size
    transform = predictor.transform if hasattr(predictor, "transform") else None
    points = boxes = None
    if "point_coords" in kwargs:
        coords = transform.apply_coords(kwargs["point_coords"], size)
        points = (
            torch.tensor(coords, dtype=torch.float)[None],
            torch.tensor(kwargs["point_labels"])[None],
        )
    if "box" in kwargs:
        boxes = torch.tensor(transform.apply_boxes(kwargs["box"], size), dtype=torch.float)
    return points, boxes


@pytest.mark.parametrize("case", list(PROMPTS))
def test_prompt_encoder_outputs(pair, predictors, case):
    ours, reference = pair
    points, boxes = _prompt_tensors(predictors[1], PROMPTS[case])
    with torch.no_grad():
        sparse, dense = ours.prompt_encoder(points=points, boxes=boxes, masks=None)
        ref_sparse, ref_dense = reference.prompt_encoder(points=points, boxes=boxes, masks=None)
        assert sparse.shape == ref_sparse.shape
        assert (sparse - ref_sparse).abs().max().item() <= 1e-5
        assert torch.equal(dense, ref_dense)
        assert (
            ours.prompt_encoder.get_dense_pe() - reference.prompt_encoder.get_dense_pe()
        ).abs().max() <= 1e-6


def test_prompt_encoder_mask_input(pair):
    ours, reference = pair
    masks = torch.randn(3, 1, 256, 256) * 4
    with torch.no_grad():
        sparse, dense = ours.prompt_encoder(points=None, boxes=None, masks=masks)
        ref_sparse, ref_dense = reference.prompt_encoder(points=None, boxes=None, masks=masks)
    assert sparse.shape == ref_sparse.shape == (3, 0, 256)
    assert (dense - ref_dense).abs().max().item() <= 1e-5


@pytest.mark.parametrize("multimask", [True, False])
@pytest.mark.parametrize("case", list(PROMPTS))
def test_predict_matches_official(predictors, case, multimask):
    mine, theirs = predictors
    masks, iou, low_res = mine.predict(multimask_output=multimask, **PROMPTS[case])
    ref_masks, ref_iou, ref_low_res = theirs.predict(multimask_output=multimask, **PROMPTS[case])
    ref_logits, _, _ = theirs.predict(
        multimask_output=multimask, return_logits=True, **PROMPTS[case]
    )
    assert masks.shape == ref_masks.shape == (3 if multimask else 1, 534, 800)
    assert np.abs(low_res - ref_low_res).max() <= LOGIT_TOL * 10 * np.abs(ref_low_res).max()
    assert np.abs(iou - ref_iou).max() <= 1e-5
    assert 0.05 < masks.mean() < 1.0 or not multimask  # masks are not trivially empty
    assert_masks_equal(masks, ref_masks, ref_logits)


@pytest.mark.parametrize("multimask", [True, False])
def test_mask_input_matches_official(predictors, multimask):
    mine, theirs = predictors
    _, _, low_res = theirs.predict(**PROMPTS["one_point"])
    prompt = dict(PROMPTS["fg_bg_points"], mask_input=low_res[:1], multimask_output=multimask)
    masks, iou, low = mine.predict(**prompt)
    ref_masks, ref_iou, ref_low = theirs.predict(**prompt)
    ref_logits, _, _ = theirs.predict(return_logits=True, **prompt)
    assert np.abs(low - ref_low).max() <= LOGIT_TOL * 10 * np.abs(ref_low).max()
    assert np.abs(iou - ref_iou).max() <= 1e-5
    assert_masks_equal(masks, ref_masks, ref_logits)


@pytest.mark.parametrize("size", [(1800, 1200), (270, 200)])
def test_predictor_end_to_end_other_sizes(pair, size):
    """Larger than the model input (truck) and much smaller (downscaled groceries)."""
    from PIL import Image

    ours, reference = pair
    name = "truck.jpg" if size[0] > 1024 else "groceries.jpg"
    image = np.array(Image.fromarray(load_rgb(name)).resize(size, Image.Resampling.BILINEAR))
    mine, theirs = SamPredictor(ours), official.SamPredictor(reference)
    mine.set_image(image)
    theirs.set_image(image)
    prompt = dict(
        point_coords=np.array([[size[0] * 0.4, size[1] * 0.6]]), point_labels=np.array([1])
    )
    masks, _, _ = mine.predict(**prompt)
    ref_masks, _, _ = theirs.predict(**prompt)
    ref_logits, _, _ = theirs.predict(return_logits=True, **prompt)
    assert masks.shape == (3, size[1], size[0])
    assert_masks_equal(masks, ref_masks, ref_logits)


def test_batched_prompts_match_official(predictors):
    mine, theirs = predictors
    generator = torch.Generator().manual_seed(5)
    coords = torch.rand(16, 2, 2, generator=generator) * 1000
    labels = torch.randint(0, 2, (16, 2), generator=generator).int()
    boxes = torch.sort(torch.rand(16, 2, 2, generator=generator) * 1000, dim=1).values.reshape(
        16, 4
    )
    low, iou = mine.decode_low_res(coords, labels, boxes)
    with torch.no_grad():
        _, ref_iou, ref_low = theirs.predict_torch(coords, labels, boxes)
    assert (low - ref_low).abs().max() <= LOGIT_TOL * 10 * ref_low.abs().max()
    assert (iou - ref_iou).abs().max() <= 1e-5


def test_official_state_dict_round_trip(tmp_path):
    reference = official.sam_model_registry["vit_b"]()
    randomize_(reference, seed=7)
    path = tmp_path / "sam_vit_b_random.pth"
    torch.save(reference.state_dict(), path)
    ours = build_sam("vit_b", checkpoint=path)
    ours_sd = ours.state_dict()
    assert set(ours_sd) == set(reference.state_dict())
    for key, value in reference.state_dict().items():
        assert torch.equal(ours_sd[key], value), key
    buffer = io.BytesIO()
    torch.save(ours.state_dict(), buffer)
    buffer.seek(0)
    back = official.sam_model_registry["vit_b"]()
    back.load_state_dict(torch.load(buffer, weights_only=True))
    assert all(torch.equal(back.state_dict()[k], v) for k, v in reference.state_dict().items())
