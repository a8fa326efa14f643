"""The annotation page's pure modules under Node.js, against the project's Python side:
run lengths against pycocotools, .npy parsing against NumPy, model-input sizes against
model.transforms, strokes against a direct distance computation, and the object history
(undo, redo, multimask choice, the low-res logits fed back) with a recording decoder."""

from __future__ import annotations

import io

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from model.transforms import longest_side_shape
from tests.engine.campaigns.node import run_module_script


def _masks() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    blobs = [rng.random((h, w)) < p for h, w, p in ((7, 5, 0.5), (40, 31, 0.1), (64, 80, 0.9))]
    full = np.ones((9, 4), bool)
    single = np.zeros((6, 6), bool)
    single[5, 5] = True
    starts_inside = np.zeros((5, 3), bool)
    starts_inside[0, 0] = True
    big = np.zeros((300, 400), bool)
    big[20:250, 30:390] = True  # long runs: several 5-bit groups per count
    return [*blobs, full, single, starts_inside, big]


def test_run_lengths_match_pycocotools() -> None:
    masks = _masks()
    payload = [
        {"mask": m.astype(int).ravel().tolist(), "h": m.shape[0], "w": m.shape[1]} for m in masks
    ]
    output = run_module_script(
        "rle_encode",
        payload,
    )
    for mask, got in zip(masks, output):
        expected = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        assert got["counts"] == expected["counts"].decode()
        assert got["size"] == list(mask.shape)
        runs = mask_utils.frPyObjects(
            {"size": list(mask.shape), "counts": got["runs"]}, *mask.shape
        )
        assert np.array_equal(mask_utils.decode(runs).astype(bool), mask)


def test_stored_masks_decode_to_their_pixels_in_the_bbox() -> None:
    masks = [m for m in _masks() if m.any()]
    payload = []
    for mask in masks:
        ys, xs = np.nonzero(mask)
        bbox = [int(xs.min()), int(ys.min()), int(xs.max() - xs.min()), int(ys.max() - ys.min())]
        counts = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))["counts"].decode()
        payload.append({"rle": {"size": list(mask.shape), "counts": counts}, "bbox": bbox})
    output = run_module_script(
        "rle_decode_crop",
        payload,
    )
    for mask, item, crop in zip(masks, payload, output):
        x, y, w, h = item["bbox"]
        assert (crop["x"], crop["y"], crop["width"], crop["height"]) == (x, y, w + 1, h + 1)
        pixels = np.array(crop["data"], bool).reshape(h + 1, w + 1)
        assert np.array_equal(pixels, mask[y : y + h + 1, x : x + w + 1])


def test_npy_embeddings_parse_to_the_same_float32_values() -> None:
    rng = np.random.default_rng(1)
    half = rng.normal(scale=3, size=(4, 5, 6)).astype(np.float16)
    half.flat[:6] = [0.0, -0.0, 6e-8, 65504, np.inf, -np.inf]  # subnormal, max, infinities
    single = rng.normal(size=(2, 3)).astype(np.float32)
    payload = []
    for array in (half, single):
        buffer = io.BytesIO()
        np.save(buffer, array)
        payload.append(list(buffer.getvalue()))
    output = run_module_script(
        "npy_parse",
        payload,
    )
    for array, got in zip((half, single), output):
        assert got["shape"] == list(array.shape)
        values = np.array([float(v) for v in got["data"]], np.float32)
        assert np.array_equal(values, array.astype(np.float32).ravel())


def test_input_and_work_sizes_follow_the_model_resize() -> None:
    rng = np.random.default_rng(2)
    sizes = [(534, 800), (1200, 1800), (1500, 2250), (800, 534), (17, 1000), (1023, 1024)]
    sizes += [(int(h), int(w)) for h, w in rng.integers(10, 4000, size=(200, 2))]
    payload = {"sizes": sizes, "sides": [256, 1024]}
    output = run_module_script(
        "sizes",
        payload,
    )
    for side, per_size in zip(payload["sides"], output):
        for (height, width), got in zip(sizes, per_size):
            assert tuple(got["input"]) == longest_side_shape(height, width, side)
            work_h, work_w = got["work"]
            if max(height, width) <= 1024:
                assert (work_h, work_w) == (height, width)
            else:
                assert max(work_h, work_w) <= 1025
                assert longest_side_shape(work_h, work_w, side) == longest_side_shape(
                    height, width, side
                )


@pytest.mark.parametrize(
    ("points", "radius", "scale"),
    [
        ([[10.5, 7.5]], 0.5, 1.0),  # one pixel
        ([[10.2, 7.9]], 4.0, 1.0),
        ([[3.0, 3.0], [40.0, 20.0], [41.0, 35.5]], 2.5, 1.0),
        ([[3.0, 3.0], [40.0, 20.0]], 3.0, 0.5),  # at half size
    ],
)
def test_strokes_cover_the_pixels_within_their_radius(points, radius, scale) -> None:
    height, width = 48, 60
    output = run_module_script(
        "stroke",
        {
            "h": height,
            "w": width,
            "stroke": {"mode": "brush", "radius": radius, "points": points},
            "scale": scale,
        },
    )
    got = np.array(output, bool).reshape(height, width)
    ys, xs = np.mgrid[0:height, 0:width] + 0.5
    scaled = np.array(points) * scale
    segments = list(zip(scaled[:-1], scaled[1:])) or [(scaled[0], scaled[0])]
    near = np.zeros_like(got)
    for a, b in segments:
        d = b - a
        t = ((xs - a[0]) * d[0] + (ys - a[1]) * d[1]) / max(float(d @ d), 1e-12)
        t = np.clip(t, 0, 1)
        near |= (a[0] + t * d[0] - xs) ** 2 + (a[1] + t * d[1] - ys) ** 2 <= (radius * scale) ** 2
    assert np.array_equal(got, near)
    if radius == 0.5:
        assert got.sum() == 1 and got[7, 10]


def test_object_history_feeds_back_low_res_logits_and_undoes() -> None:
    output = run_module_script(
        "object_history",
        {},
    )
    assert [output[k] for k in ("first", "cycled", "second", "stroked")] == [3, 4, 1, 2]
    assert [output[k] for k in ("undoStroke", "undoPoint", "redo")] == [1, 4, 1]
    calls = output["calls"]
    assert len(calls) == 2  # the redo reused the decode it had
    assert calls[0]["maskInput"] is None
    assert calls[1]["maskInput"] == [13, 13]  # first call's low-res of the chosen token 3
    assert (output["clicks"], output["strokes"]) == (2, 1)


def test_mask_checks_warn_on_low_predicted_iou_and_near_repeats() -> None:
    """The IoU of a mask with another mask's bounding-box crop, against NumPy on the whole
    masks; the warnings at the thresholds."""
    rng = np.random.default_rng(3)
    mask = np.zeros((30, 40), bool)
    mask[5:25, 8:30] = True
    near = mask.copy()
    near[5:7, 8:30] = False  # IoU 0.9
    others = [near, rng.random((30, 40)) < 0.3, np.roll(mask, 15, axis=1)]
    crops = []
    for other in others:
        ys, xs = np.nonzero(other)
        y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        crop = other[y0:y1, x0:x1]
        crops.append(
            {"x": int(x0), "y": int(y0), "width": int(x1 - x0), "height": int(y1 - y0),
             "data": crop.astype(int).ravel().tolist()}
        )  # fmt: skip
    payload = {
        "mask": mask.astype(int).ravel().tolist(),
        "width": 40,
        "crops": crops,
        "iou": 0.2,
        "limits": {"warnIou": 0.3, "duplicateIou": 0.9},
    }
    output = run_module_script("mask_checks", payload)
    expected = [float((mask & o).sum() / (mask | o).sum()) for o in others]
    assert output["ious"] == pytest.approx(expected)
    assert expected[0] == pytest.approx(0.9) and max(expected[1:]) < 0.9
    unsure, repeat = output["warnings"]
    assert "predicted IoU 0.20" in unsure and "mask #1" in repeat
    calm = run_module_script("mask_checks", {**payload, "iou": 0.31, "crops": crops[1:]})
    assert calm["warnings"] == []
