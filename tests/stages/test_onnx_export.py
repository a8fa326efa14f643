"""The browser decoder as ONNX, run with onnxruntime, against our torch model.

Tolerance (tests/stages/onnx_reference.py): logits within 1e-3, thresholded masks equal
except where the torch logit lies within 1e-3 of 0. The bundled model (256-pixel input,
16 x 16 embedding) decodes real photos; a seeded random vit_tiny with a sharpened decoder
covers the 1024-pixel input and 64 x 64 embedding of vit_b/l/h.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from engine.models import load_model, weights_sha256
from stages.assisted.contract import INPUT_NAMES, META_WEIGHTS_SHA256, OUTPUT_NAMES
from stages.assisted.onnx_decoder import OnnxDecoder
from stages.assisted.onnx_export import ExportError, export_decoder_onnx, quantize_decoder_onnx
from tests.conftest import load_rgb
from tests.stages.conftest import Exported
from tests.stages.onnx_kernels import missing_cpu_kernels
from tests.stages.onnx_reference import (
    Prompt,
    assert_matches_torch,
    fp16_embedding,
    mask_iou,
    resized,
    torch_reference,
)


@pytest.fixture(scope="module")
def bundled(bundled_onnx: Exported) -> Exported:
    return bundled_onnx


@pytest.fixture(scope="module")
def quantized(bundled: Exported) -> OnnxDecoder:
    path = quantize_decoder_onnx(bundled.path, bundled.path.with_suffix(".quant.onnx"))
    return OnnxDecoder(path)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Exported:
    """1024-pixel input, 64 x 64 embedding: the decoder geometry of vit_b/l/h."""
    sam = load_model("vit_tiny", random_seed=0, sharpen=True)
    path = export_decoder_onnx(sam, tmp_path_factory.mktemp("onnx") / "tiny.onnx")
    return Exported(sam, path, OnnxDecoder(path))


@pytest.fixture(scope="module")
def dog(bundled: Exported) -> tuple[np.ndarray, tuple[int, int]]:
    rgb = load_rgb("dog.jpg")
    return fp16_embedding(bundled.sam, rgb), (rgb.shape[0], rgb.shape[1])


def _points(xy: list[list[float]], labels: list[int]) -> dict[str, np.ndarray]:
    return {"points": np.array(xy, dtype=np.float64), "labels": np.array(labels)}


PROMPTS = {
    "one point": Prompt(**_points([[330, 260]], [1])),
    "fg and bg points": Prompt(
        **_points([[330, 260], [420, 180], [90, 60], [700, 480]], [1, 1, 0, 0])
    ),
    "points and box": Prompt(
        **_points([[330, 260], [90, 60]], [1, 0]), box=np.array([200, 90, 560, 500])
    ),
    "box alone": Prompt(box=np.array([200.5, 90.0, 560.0, 499.5])),
}


def _run(exported: Exported, embedding: np.ndarray, prompt: Prompt, size: tuple[int, int]):
    return exported.decoder.run(
        embedding,
        points=prompt.points,
        labels=prompt.labels,
        box=prompt.box,
        mask_input=prompt.mask_input,
        orig_size=size,
    )


@pytest.mark.parametrize("case", list(PROMPTS))
def test_prompts_match_torch(bundled: Exported, dog: tuple, case: str) -> None:
    embedding, size = dog
    output = _run(bundled, embedding, PROMPTS[case], size)
    assert_matches_torch(bundled.sam, output, embedding, PROMPTS[case], size)
    assert (output.masks > 0).any() and (output.masks < 0).any()


def test_mask_input_matches_torch_and_changes_the_masks(bundled: Exported, dog: tuple) -> None:
    embedding, size = dog
    first = PROMPTS["one point"]
    _, iou, low_res = torch_reference(bundled.sam, embedding, first, size, multimask=True)
    previous = low_res[int(np.argmax(iou))]
    refine = Prompt(**_points([[330, 260], [300, 420]], [1, 0]), mask_input=previous)
    with_mask = _run(bundled, embedding, refine, size)
    assert_matches_torch(bundled.sam, with_mask, embedding, refine, size)
    without = _run(bundled, embedding, Prompt(refine.points, refine.labels), size)
    assert np.abs(with_mask.masks - without.masks).max() > 0.5


def test_has_mask_input_zero_ignores_the_mask(bundled: Exported, dog: tuple) -> None:
    """The flag, not the contents, decides: logits fed with has_mask_input 0 change nothing."""
    embedding, size = dog
    session = bundled.decoder.session
    feeds = {
        "image_embeddings": embedding.astype(np.float32)[None],
        "point_coords": np.array([[[330, 260], [0, 0]]], np.float32),
        "point_labels": np.array([[1, -1]], np.float32),
        "mask_input": np.zeros((1, 1, 64, 64), np.float32),
        "has_mask_input": np.zeros(1, np.float32),
        "orig_im_size": np.array(size, np.float32),
    }
    plain = session.run(None, feeds)
    feeds["mask_input"] = np.random.default_rng(0).normal(0, 8, (1, 1, 64, 64)).astype(np.float32)
    ignored = session.run(None, feeds)
    for a, b in zip(plain, ignored, strict=True):
        np.testing.assert_array_equal(a, b)


# (H, W): landscape and portrait photos larger than the 256-pixel input, one smaller, and one
# whose short side scales to exactly x.5 pixels (150.5, rounded half up to 151).
@pytest.mark.parametrize("size", [(800, 534), (1200, 1800), (150, 225), (301, 512)])
def test_image_sizes_match_torch(bundled: Exported, size: tuple[int, int]) -> None:
    rgb = resized(load_rgb("truck.jpg"), size)
    embedding = fp16_embedding(bundled.sam, rgb)
    height, width = size
    prompts = [
        Prompt(**_points([[0.45 * width, 0.55 * height]], [1])),
        Prompt(
            **_points([[0.5 * width, 0.5 * height], [0.1 * width, 0.9 * height]], [1, 0]),
            box=np.array([0.2 * width, 0.25 * height, 0.8 * width, 0.75 * height]),
        ),
    ]
    for prompt in prompts:
        assert_matches_torch(
            bundled.sam, _run(bundled, embedding, prompt, size), embedding, prompt, size
        )


@pytest.mark.parametrize("size", [(2000, 1500), (600, 401), (1001, 2048)])
def test_1024_input_sizes_match_torch(tiny: Exported, size: tuple[int, int]) -> None:
    generator = torch.Generator().manual_seed(size[0])
    embedding = torch.randn(256, 64, 64, generator=generator).to(torch.float16).numpy()
    height, width = size
    point = Prompt(**_points([[0.3 * width, 0.6 * height]], [1]))
    assert_matches_torch(tiny.sam, _run(tiny, embedding, point, size), embedding, point, size)
    _, iou, low_res = torch_reference(tiny.sam, embedding, point, size, multimask=True)
    refine = Prompt(
        **_points([[0.3 * width, 0.6 * height], [0.7 * width, 0.2 * height]], [1, 0]),
        box=np.array([0.1 * width, 0.3 * height, 0.6 * width, 0.9 * height]),
        mask_input=low_res[int(np.argmax(iou))],
    )
    assert_matches_torch(tiny.sam, _run(tiny, embedding, refine, size), embedding, refine, size)


@pytest.mark.parametrize("count", [1, 2, 3, 4, 5, 12])
def test_number_of_points_is_dynamic(bundled: Exported, dog: tuple, count: int) -> None:
    """One exported file for any number of points (12 lies past the point count where our
    torch attention switches paths; the traced path stays exact)."""
    embedding, size = dog
    rng = np.random.default_rng(count)
    points = rng.uniform(0, 1, (count, 2)) * [size[1], size[0]]
    labels = rng.integers(0, 2, count)
    labels[0] = 1
    prompt = Prompt(points=points, labels=labels)
    assert_matches_torch(
        bundled.sam, _run(bundled, embedding, prompt, size), embedding, prompt, size
    )


# The quantized decoder's drift: IoU of its thresholded masks with the fp32 decoder's, over
# single points, point sets and boxes on the bundled photos, all four tokens. Measured:
# mean 0.98, 5th percentile 0.93 (docs/benchmarks.md); asserted with a margin.
QUANTIZED_MEAN_IOU_FLOOR = 0.95
QUANTIZED_P10_IOU_FLOOR = 0.85


def test_quantized_drift_is_small(bundled: Exported, quantized: OnnxDecoder) -> None:
    rng = np.random.default_rng(0)
    ious = []
    for name in ("dog.jpg", "groceries.jpg", "truck.jpg"):
        rgb = load_rgb(name)
        embedding, size = fp16_embedding(bundled.sam, rgb), (rgb.shape[0], rgb.shape[1])
        for index in range(12):
            count = 1 + index % 3
            points = rng.uniform(0.05, 0.95, (count, 2)) * [size[1], size[0]]
            labels = np.r_[1, rng.integers(0, 2, count - 1)]
            box = None
            if index % 4 == 3:
                corner = rng.uniform(0.05, 0.5, 2) * [size[1], size[0]]
                box = np.r_[corner, corner + [0.4 * size[1], 0.4 * size[0]]]
            kwargs = {"points": points, "labels": labels, "box": box, "orig_size": size}
            exact = bundled.decoder.run(embedding, **kwargs)
            approx = quantized.run(embedding, **kwargs)
            ious += [mask_iou(exact.masks[t] > 0, approx.masks[t] > 0) for t in range(4)]
    assert np.mean(ious) >= QUANTIZED_MEAN_IOU_FLOOR, np.mean(ious)
    assert np.percentile(ious, 10) >= QUANTIZED_P10_IOU_FLOOR, np.percentile(ious, 10)


# Operators the graphs may use. onnxruntime-web's WebAssembly backend is onnxruntime's CPU
# engine compiled to WASM ("full ONNX operator coverage", the onnxruntime-web README). Each
# operator below, with the input types the graphs give it, has a CPUExecutionProvider kernel
# (onnxruntime's docs/OperatorKernels.md, generated from the registry that
# `missing_cpu_kernels` reads). No contrib (com.microsoft) operators.
WASM_OPS = frozenset(
    (  # noqa: SIM905 - one string reads better than 43 lines
        "Add Cast Ceil Clip Concat Constant ConstantOfShape Conv Cos Div DynamicQuantizeLinear "
        "Einsum Equal Erf Exp Expand Flatten Floor Gather Gemm Identity LayerNormalization "
        "MatMul MatMulInteger Mod Mul Pow ReduceMax ReduceMean ReduceSum Relu Reshape Resize "
        "Shape Sin Slice Softmax Sqrt Sub Tile Transpose Unsqueeze Where"
    ).split()
)


@pytest.mark.parametrize("variant", ["fp32", "quantized"])
def test_graph_uses_only_webassembly_operators(
    bundled: Exported, quantized: OnnxDecoder, variant: str
) -> None:
    path = bundled.path if variant == "fp32" else bundled.path.with_suffix(".quant.onnx")
    model = onnx.load(str(path))
    domains = {node.domain for node in model.graph.node}
    ops = {node.op_type for node in model.graph.node}
    assert domains <= {"", "ai.onnx"}, domains
    assert ops <= WASM_OPS, sorted(ops - WASM_OPS)
    assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [17]
    assert not missing_cpu_kernels(model)
    if variant == "quantized":
        assert {"MatMulInteger", "DynamicQuantizeLinear"} <= ops


def test_export_is_one_file_with_the_contract(bundled: Exported) -> None:
    files = sorted(p.name for p in bundled.path.parent.iterdir() if not p.name.startswith("."))
    assert files[0] == "bundled.onnx" and all(name.endswith(".onnx") for name in files)
    session = ort.InferenceSession(bundled.path.read_bytes(), providers=["CPUExecutionProvider"])
    inputs = {i.name: i.shape for i in session.get_inputs()}
    assert tuple(inputs) == INPUT_NAMES
    assert inputs["image_embeddings"] == [1, 256, 16, 16]
    assert inputs["point_coords"][0] == 1 and inputs["point_coords"][2] == 2
    assert isinstance(inputs["point_coords"][1], str)
    assert inputs["mask_input"] == [1, 1, 64, 64] and inputs["orig_im_size"] == [2]
    outputs = {o.name: o.shape for o in session.get_outputs()}
    assert tuple(outputs) == OUTPUT_NAMES
    assert outputs["masks"] == [1, 4, "height", "width"]
    assert outputs["iou_predictions"] == [1, 4] and outputs["low_res_masks"] == [1, 4, 64, 64]
    meta = session.get_modelmeta().custom_metadata_map
    assert meta[META_WEIGHTS_SHA256] == weights_sha256(bundled.sam)


def test_export_refuses_an_unsupported_opset(bundled: Exported, tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="opset must be between 14 and 21, got 9"):
        export_decoder_onnx(bundled.sam, tmp_path / "x.onnx", opset=9)
    assert not list(tmp_path.iterdir())


def test_large_constants_are_stored_once(tiny: Exported) -> None:
    """The 64 x 64 grid's positional encoding (4 MB) is in the file once, not per layer."""
    model = onnx.load(str(tiny.path))
    tensors = [n.attribute[0].t for n in model.graph.node if n.op_type == "Constant"]
    tensors += list(model.graph.initializer)
    large = [t.raw_data for t in tensors if len(t.raw_data) >= 1 << 20]
    assert len(large) == len(set(large))
    assert tiny.path.stat().st_size < 22e6  # weights 16.2 MB, positional encoding 4.2 MB
