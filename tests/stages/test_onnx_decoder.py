"""`OnnxDecoder`'s prompt convention and its errors for prompts it cannot use."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from stages.assisted.onnx_decoder import (
    DecoderInputError,
    DecoderOutput,
    OnnxDecoder,
    build_prompt,
)
from tests.stages.conftest import Exported


def test_points_get_a_padding_point() -> None:
    coords, labels = build_prompt(np.array([[10, 20], [30.5, 40]]), np.array([1, 0]), None)
    np.testing.assert_array_equal(coords, [[[10, 20], [30.5, 40], [0, 0]]])
    np.testing.assert_array_equal(labels, [[1, 0, -1]])
    assert coords.dtype == np.float32 and labels.dtype == np.float32


def test_a_box_becomes_two_corners_after_the_points() -> None:
    coords, labels = build_prompt(np.array([[10, 20]]), np.array([1]), np.array([1, 2, 3, 4]))
    np.testing.assert_array_equal(coords, [[[10, 20], [1, 2], [3, 4]]])
    np.testing.assert_array_equal(labels, [[1, 2, 3]])
    coords, labels = build_prompt(None, None, np.array([[1, 2, 3, 4]]))
    np.testing.assert_array_equal(coords, [[[1, 2], [3, 4]]])
    np.testing.assert_array_equal(labels, [[2, 3]])


@pytest.mark.parametrize(
    ("points", "labels", "box", "message"),
    [
        (None, None, None, "at least one point or a box"),
        (np.zeros((0, 2)), np.zeros(0), None, "at least one point or a box"),
        (np.array([[1, 2]]), None, None, "need labels"),
        (np.array([[1, 2]]), np.array([2]), None, "labels must be 0 or 1"),
        (np.array([[1, 2]]), np.array([1, 0]), None, r"labels must have shape \(1,\)"),
        (np.array([1, 2]), np.array([1]), None, "N x 2"),
        (np.array([[np.nan, 2]]), np.array([1]), None, "finite"),
        (None, None, np.array([5, 5, 1, 9]), "x0 <= x1"),
        (None, None, np.array([1, 2, 3]), "4 finite numbers"),
        (None, np.array([1]), None, "labels given without points"),
    ],
)
def test_bad_prompts_are_refused(points, labels, box, message: str) -> None:
    with pytest.raises(DecoderInputError, match=message):
        build_prompt(points, labels, box)


def test_best_token() -> None:
    output = DecoderOutput(
        masks=np.zeros((4, 2, 2)), iou=np.array([0.99, 0.2, 0.7, 0.5]), low_res=np.zeros((4, 4, 4))
    )
    assert output.best(multimask=True) == 2
    assert output.best(multimask=False) == 0


@pytest.fixture(scope="module")
def decoder(bundled_onnx: Exported) -> OnnxDecoder:
    return OnnxDecoder(bundled_onnx.path.read_bytes(), threads=2)


def test_runs_from_bytes_with_a_float16_embedding(decoder: OnnxDecoder) -> None:
    embedding = np.random.default_rng(0).normal(size=(256, 16, 16)).astype(np.float16)
    output = decoder.run(
        embedding, points=np.array([[50, 40]]), labels=np.array([1]), orig_size=(90, 120)
    )
    assert output.masks.shape == (4, 90, 120) and output.low_res.shape == (4, 64, 64)
    assert output.iou.shape == (4,) and np.isfinite(output.masks).all()
    again = decoder.run(
        embedding.astype(np.float32),
        points=np.array([[50, 40]]),
        labels=np.array([1]),
        orig_size=(90, 120),
    )
    np.testing.assert_array_equal(output.masks, again.masks)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"embedding": np.zeros((256, 64, 64))}, r"embedding must have shape \(256, 16, 16\)"),
        ({"mask_input": np.zeros((256, 256))}, r"mask_input must have shape \(64, 64\)"),
        ({"orig_size": (0, 10)}, "orig_size must be positive"),
    ],
)
def test_bad_inputs_are_refused(decoder: OnnxDecoder, kwargs: dict, message: str) -> None:
    arguments = {
        "embedding": np.zeros((256, 16, 16), np.float16),
        "points": np.array([[5, 5]]),
        "labels": np.array([1]),
        "orig_size": (20, 20),
        **kwargs,
    }
    embedding = arguments.pop("embedding")
    with pytest.raises(DecoderInputError, match=message):
        decoder.run(embedding, **arguments)


def test_refuses_threads_below_one(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="threads must be >= 1, got 0"):
        OnnxDecoder(tmp_path / "missing.onnx", threads=0)
