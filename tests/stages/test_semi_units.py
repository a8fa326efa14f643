"""Stage 2 units: the feature pyramid, the detector's shapes and file, targets from masks and
the change of frame, matching, the confident threshold and the COCO box metrics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from engine.detection.data import DetectionImage
from engine.detection.evaluate import coco_box_metrics, matched_detections
from stages.semi import (
    BoxDetector,
    DetectorConfig,
    DetectorFileError,
    DetectorMetadata,
    SimpleFeaturePyramid,
    boxes_from_masks,
    boxes_from_segmentations,
    choose_threshold,
    detect,
    load_detector,
    match_detections,
    save_detector,
    training_boxes,
)
from stages.semi.targets import to_model_frame, to_original_frame
from stages.semi.threshold import precision_recall_at

SMALL = DetectorConfig(image_size=256, channels=32, head_convs=1, scales=(2.0, 1.0, 0.5))


# ---- pyramid ---------------------------------------------------------------------------


def test_pyramid_levels_have_the_scaled_sizes_and_strides() -> None:
    pyramid = SimpleFeaturePyramid(256, 64, (4.0, 2.0, 1.0, 0.5, 0.25))
    levels = pyramid(torch.randn(2, 256, 16, 16))
    assert [tuple(v.shape) for v in levels.values()] == [
        (2, 64, 64, 64),
        (2, 64, 32, 32),
        (2, 64, 16, 16),
        (2, 64, 8, 8),
        (2, 64, 4, 4),
    ]
    assert pyramid.strides == (4, 8, 16, 32, 64)


@pytest.mark.parametrize(("scale", "row", "col"), [(4.0, 5, 7), (2.0, 3, 9), (0.5, 6, 3)])
def test_each_level_sees_an_embedding_cell_only_where_that_cell_is(
    scale: float, row: int, col: int
) -> None:
    """A change to one embedding cell reaches, at scale s, only the s x s block of that cell
    (or the pooled cell holding it) grown by the 3x3 convolution's one-pixel border."""
    torch.manual_seed(0)
    pyramid = SimpleFeaturePyramid(256, 32, (scale,)).eval()
    embedding = torch.randn(1, 256, 16, 16)
    changed = embedding.clone()
    changed[0, :, row, col] += 3.0
    with torch.no_grad():
        diff = (pyramid(changed)["0"] - pyramid(embedding)["0"]).abs().sum(1)[0]
    rows, cols = torch.nonzero(diff > 1e-5, as_tuple=True)
    if scale >= 1:
        span = int(scale)
        low_r, high_r = row * span - 1, row * span + span
        low_c, high_c = col * span - 1, col * span + span
    else:
        factor = int(1 / scale)
        low_r, high_r = row // factor - 1, row // factor + 1
        low_c, high_c = col // factor - 1, col // factor + 1
    assert len(rows) > 0
    assert rows.min() >= low_r and rows.max() <= high_r
    assert cols.min() >= low_c and cols.max() <= high_c


@pytest.mark.parametrize("scales", [(3.0,), (1.0, 2.0), (2.0, 2.0), ()])
def test_bad_scales_are_refused(scales: tuple[float, ...]) -> None:
    with pytest.raises(ValueError, match="scales"):
        DetectorConfig(scales=scales)


@pytest.mark.parametrize(
    "changes", [{"channels": 48}, {"image_size": 250}, {"nms_thresh": 1.5}, {"head_convs": 0}]
)
def test_bad_detector_settings_are_refused(changes: dict[str, object]) -> None:
    with pytest.raises(ValueError, match=str(next(iter(changes.values())))):
        DetectorConfig(**changes)  # type: ignore[arg-type]


def test_detector_refuses_embeddings_of_another_size() -> None:
    detector = BoxDetector(SMALL)
    with pytest.raises(ValueError, match="256 x 16 x 16"):
        detector.predict(torch.zeros(1, 256, 64, 64), [(256, 256)])


def test_losses_are_sums_over_foreground_locations() -> None:
    """Two copies of an image: twice the sums and twice the foreground count (so the
    normalized loss, what a worker reports, is the same)."""
    torch.manual_seed(0)
    detector = BoxDetector(SMALL)
    embedding = torch.randn(1, 256, 16, 16)
    target = {"boxes": torch.tensor([[20.0, 30.0, 120.0, 90.0]]), "labels": torch.zeros(1).long()}
    one = detector.losses(embedding, [target])
    two = detector.losses(embedding.repeat(2, 1, 1, 1), [target, target])
    assert one["num_foreground"] > 0
    assert two["num_foreground"] == 2 * one["num_foreground"]
    for name in ("classification", "bbox_regression", "bbox_ctrness"):
        assert float(two[name].detach()) == pytest.approx(2 * float(one[name].detach()), rel=1e-5)


# ---- detector file and inference ---------------------------------------------------------


def test_detector_file_round_trip_and_threshold(tmp_path: Path) -> None:
    torch.manual_seed(1)
    detector = BoxDetector(SMALL).eval()
    embedding = torch.randn(256, 16, 16).half().numpy()
    with pytest.raises(ValueError, match="no confident threshold"):
        detect(detector, embedding, original_size=(300, 200))
    boxes, scores = detect(detector, embedding, original_size=(300, 200), score_thresh=0.0)
    metadata = DetectorMetadata(sam_weights_sha256="ab" * 32, score_thresh=float(scores[3]))
    save_detector(tmp_path / "detector.pt", detector, metadata)
    loaded, back = load_detector(tmp_path / "detector.pt")
    assert back == metadata and loaded.config == SMALL
    confident_boxes, confident_scores = detect(loaded, embedding, original_size=(300, 200))
    assert len(confident_scores) == 4  # the scores are sorted: the 4 best pass
    np.testing.assert_allclose(confident_boxes, boxes[:4], rtol=1e-5)
    assert boxes.dtype == np.float32 and boxes.shape[1] == 4
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= 200).all() and (boxes[:, 3] <= 300).all()
    torch.save({"weights": 1}, tmp_path / "other.pt")
    with pytest.raises(DetectorFileError):
        load_detector(tmp_path / "other.pt")


def test_detect_returns_boxes_in_original_pixels() -> None:
    """A 500 x 1000 image is a 128 x 256 model input: boxes come back scaled by 1000/256 in x
    and 500/128 in y, and clipped to the image."""
    torch.manual_seed(2)
    detector = BoxDetector(SMALL).eval()
    embedding = torch.randn(1, 256, 16, 16)
    with torch.no_grad():
        model_frame = detector.predict(embedding, [(128, 256)])[0]["boxes"].numpy()
    boxes, _ = detect(detector, embedding[0], original_size=(500, 1000), score_thresh=0.0)
    expected = model_frame * np.array([1000 / 256, 500 / 128, 1000 / 256, 500 / 128])
    np.testing.assert_allclose(boxes, np.clip(expected, 0, [1000, 500, 1000, 500]), rtol=1e-5)


# ---- targets ---------------------------------------------------------------------------


def _random_masks(seed: int, count: int, size: tuple[int, int]) -> np.ndarray:
    rng = np.random.default_rng(seed)
    masks = np.zeros((count, *size), dtype=bool)
    for mask in masks[:-2]:
        y0, x0 = rng.integers(0, size[0]), rng.integers(0, size[1])
        y1, x1 = rng.integers(y0, size[0]) + 1, rng.integers(x0, size[1]) + 1
        mask[y0:y1, x0:x1] = rng.random((y1 - y0, x1 - x0)) < 0.7
    masks[-2, 4, 6] = True  # one pixel
    return masks  # the last one is empty


def test_boxes_from_masks_are_pixel_extents() -> None:
    masks = _random_masks(0, 12, (40, 50))
    boxes = boxes_from_masks(torch.from_numpy(masks)).numpy()
    for mask, box in zip(masks, boxes):
        if not mask.any():
            assert (box == 0).all()
            continue
        ys, xs = np.nonzero(mask)
        assert box.tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
    assert boxes[-2].tolist() == [6, 4, 7, 5]


@pytest.mark.parametrize("compressed", [True, False])
def test_boxes_from_rles_agree_with_pycocotools(compressed: bool) -> None:
    masks = _random_masks(1, 40, (37, 61))[:-1]  # 39 masks: more than two decode chunks
    segmentations = []
    for mask in masks:
        rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        counts = rle["counts"].decode()
        if not compressed:
            counts = _uncompressed_counts(mask)
        segmentations.append({"size": [37, 61], "counts": counts})
    boxes, areas = boxes_from_segmentations(segmentations)
    rles = [mask_utils.encode(np.asfortranarray(m.astype(np.uint8))) for m in masks]
    xywh = mask_utils.toBbox(rles)
    np.testing.assert_array_equal(
        boxes, np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], 1)
    )
    np.testing.assert_array_equal(areas, mask_utils.area(rles))


def _uncompressed_counts(mask: np.ndarray) -> list[int]:
    flat = mask.flatten(order="F").astype(np.int8)
    changes = np.nonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1]]])))[0]
    return np.diff(np.concatenate([[0], changes])).tolist()


def test_training_boxes_scale_to_the_model_input_and_drop_tiny_ones() -> None:
    # A 500 x 1000 (H x W) image at a 256 input: 128 x 256, factors 0.256 in x and y.
    boxes = np.array([[100, 50, 300, 250], [0, 0, 4, 4], [10, 10, 20, 600]], np.float32)
    kept = training_boxes(boxes, (500, 1000), 256, min_side=2.0).numpy()
    np.testing.assert_allclose(kept, [[25.6, 12.8, 76.8, 64.0], [2.56, 2.56, 5.12, 153.6]])
    back = to_original_frame(to_model_frame(boxes, (500, 1000), 256), (500, 1000), 256)
    np.testing.assert_allclose(back, np.minimum(boxes, [1000, 500, 1000, 500]), rtol=1e-5)


# ---- matching and the confident threshold ----------------------------------------------


def test_matching_counts_each_object_once_best_score_first() -> None:
    objects = np.array([[0, 0, 10, 10], [20, 20, 40, 40]], np.float32)
    boxes = np.array(
        [
            [0, 0, 10, 10],  # exact, lower score: the object is already taken
            [0, 0, 10, 11],  # IoU 0.91, best score: takes object 0
            [20, 20, 40, 30.2],  # IoU 0.51 with object 1
            [20, 20, 40, 29.6],  # IoU 0.48: no match
        ],
        np.float32,
    )
    scores = np.array([0.5, 0.9, 0.4, 0.8])
    right = match_detections(boxes, scores, objects, iou_thresh=0.5)
    assert right.tolist() == [False, True, True, False]


def test_threshold_is_the_lowest_score_reaching_the_precision() -> None:
    scores = np.array([0.5, 0.9, 0.7, 0.6, 0.8])  # any order
    right = np.array([False, True, False, True, True])
    # best first: 0.9 T, 0.8 T, 0.7 F, 0.6 T, 0.5 F -> precision 1, 1, 2/3, 3/4, 3/5
    choice = choose_threshold(scores, right, 4, target_precision=0.75)
    assert (choice.score_thresh, choice.precision, choice.recall) == (0.6, 0.75, 0.75)
    assert choice.achieved and choice.num_confident == 4
    strict = choose_threshold(scores, right, 4, target_precision=0.8)
    assert (strict.score_thresh, strict.recall) == (0.8, 0.5)


def test_threshold_keeps_ties_together() -> None:
    """Two detections tied at 0.7, one right, one wrong: a threshold of 0.7 keeps both."""
    scores, right = np.array([0.9, 0.7, 0.7]), np.array([True, True, False])
    assert choose_threshold(scores, right, 2, target_precision=0.9).score_thresh == 0.9
    # Lower, precision recovers: 0.9 T, 0.7 T, 0.7 F, 0.5 T -> 1, -, 2/3, 3/4.
    scores, right = np.array([0.9, 0.7, 0.7, 0.5]), np.array([True, True, False, True])
    assert choose_threshold(scores, right, 3, target_precision=0.75).score_thresh == 0.5


def test_unreachable_precision_leaves_nothing_confident() -> None:
    scores, right = np.array([0.6, 0.4]), np.array([False, False])
    choice = choose_threshold(scores, right, 3, target_precision=0.5)
    assert not choice.achieved and choice.score_thresh > 0.6
    assert precision_recall_at(scores, right, 3, choice.score_thresh) == (1.0, 0.0, 0)
    assert precision_recall_at(scores, right, 3, 0.5) == (0.0, 0.0, 1)
    with pytest.raises(ValueError, match="target_precision"):
        choose_threshold(scores, right, 3, target_precision=0.0)


# ---- COCO box metrics ---------------------------------------------------------------


def _image(boxes: np.ndarray) -> DetectionImage:
    areas = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).astype(np.int64)
    return DetectionImage("d", "k", "s", (600, 800), boxes.astype(np.float32), areas)


def _grid_boxes(count: int) -> np.ndarray:
    """count disjoint 20 x 20 boxes on an 800 x 600 image."""
    cells = [(x, y) for y in range(0, 580, 40) for x in range(0, 780, 40)][:count]
    return np.array([[x, y, x + 20, y + 20] for x, y in cells], np.float32)


def test_coco_metrics_count_more_than_100_objects_per_image() -> None:
    boxes = _grid_boxes(150)
    images = [_image(boxes)]
    perfect = [(boxes, np.linspace(0.99, 0.5, 150).astype(np.float32))]
    metrics = coco_box_metrics(images, perfect, max_dets=300)
    assert metrics == {"ap": 1.0, "ap50": 1.0, "ap75": 1.0, "ar": 1.0}
    capped = coco_box_metrics(images, perfect, max_dets=100)
    assert capped["ar"] == pytest.approx(100 / 150)


def test_coco_metrics_and_recall_for_partial_and_shifted_detections() -> None:
    boxes = _grid_boxes(10)
    shifted = boxes + np.array([4, 0, 4, 0], np.float32)  # IoU 16/24 = 0.67 with its object
    predictions = [(shifted[:5], np.linspace(0.9, 0.5, 5).astype(np.float32))]
    metrics = coco_box_metrics([_image(boxes)], predictions, max_dets=300)
    assert metrics["ap75"] == 0.0 and metrics["ar"] == pytest.approx(0.5 * 4 / 10)
    scores, right = matched_detections([_image(boxes)], predictions)
    assert right.all() and len(scores) == 5  # recall at IoU 0.5: 5 of 10 objects
    assert coco_box_metrics([_image(boxes)], [(boxes[:0], scores[:0])], max_dets=300)["ap"] == 0


def test_boxes_of_real_sa1b_masks_extend_their_bbox_by_one_pixel() -> None:
    """SA-1B's `bbox` is [x_min, y_min, x_max - x_min, y_max - y_min] of the mask's pixels and
    `area` its pixel count: the extents here end one pixel further."""
    import json

    record = json.loads((Path(__file__).parents[1] / "data" / "sa1b_sample.json").read_text())
    annotations = record["annotations"]
    boxes, areas = boxes_from_segmentations([a["segmentation"] for a in annotations])
    for annotation, box, area in zip(annotations, boxes, areas):
        x, y, w, h = annotation["bbox"]
        assert box.tolist() == [x, y, x + w + 1, y + h + 1]
        assert area == annotation["area"]
