"""The scripted annotator's two ways to run the decoder: the exported ONNX decoder on an
image's embedding (how a campaign's annotators run it, as the page does) and the torch
predictor (how the loop benchmark measures a model outside a campaign). They show the same
masks, so a scripted annotator clicks the same way with either."""

from __future__ import annotations

import numpy as np

from engine.training.synthetic import SceneOptions, make_scene
from model import SamPredictor
from stages.assisted.annotator import (
    AnnotatorPolicy,
    annotate_object,
    onnx_decode,
    predictor_decode,
)
from stages.assisted.prompts import mask_iou
from tests.stages.conftest import Exported

SCENES = SceneOptions(family="clutter", objects=(1, 3), min_area=400)


def test_onnx_and_torch_decoders_show_the_same_masks_and_clicks(bundled_onnx: Exported) -> None:
    predictor = SamPredictor(bundled_onnx.sam)
    policy = AnnotatorPolicy(iou_target=0.75)
    outcomes = 0
    for number in range(4):
        scene = make_scene(np.random.default_rng([5, number]), SCENES)
        predictor.set_image(scene.image)
        embedding = predictor.get_image_embedding()[0].numpy()
        size = (scene.image.shape[0], scene.image.shape[1])
        by_torch = predictor_decode(predictor)
        by_onnx = onnx_decode(bundled_onnx.decoder, embedding, size)
        # The page's sequence: a point with three masks, then two points fed the chosen logits.
        points, labels = np.array([[100.0, 120.0]]), np.array([1])
        first = [decode(points, labels, None, None, True) for decode in (by_torch, by_onnx)]
        assert [len(shown.masks) for shown in first] == [3, 3]
        for a, b in zip(first[0].masks, first[1].masks):
            assert mask_iou(a, b) > 0.99
        np.testing.assert_allclose(first[0].iou, first[1].iou, atol=1e-3)
        points, labels = np.array([[100.0, 120.0], [30.0, 40.0]]), np.array([1, 0])
        logits = first[0].low_res[0]
        second = [decode(points, labels, None, logits, False) for decode in (by_torch, by_onnx)]
        assert [len(shown.masks) for shown in second] == [1, 1]
        assert mask_iou(second[0].masks[0], second[1].masks[0]) > 0.99
        np.testing.assert_allclose(second[0].low_res, second[1].low_res, atol=1e-2)
        for index, target in enumerate(scene.masks):
            seed = [number, index]
            a = annotate_object(by_torch, target, policy, np.random.default_rng(seed))
            b = annotate_object(by_onnx, target, policy, np.random.default_rng(seed))
            assert (a.clicks, a.strokes, a.accepted) == (b.clicks, b.strokes, b.accepted)
            assert abs(a.iou - b.iou) < 0.01
            outcomes += 1
    assert outcomes >= 4
