"""Export the browser decoder (`DecoderGraph`) as one self-contained ONNX file, and its
dynamically quantized variant.

The graph is traced with the TorchScript exporter (`torch.onnx.export(dynamo=False)`):
  - it writes the requested opset (17 by default), where the torch.export-based exporter
    produces opset 18 at least and could not convert its graph down;
  - the trace records the tensor-valued sizes (`orig_im_size` -> model-input size ->
    crops and resizes) as ordinary ONNX shape operations;
  - it exports in seconds (the torch.export path took 30-60 s here) and its graph ran
    15-20 % faster in onnxruntime (docs/benchmarks.md).
It is traced with gradients disabled, so the graph holds the decoder's inference paths
(attention that projects the few prompt tokens instead of the many image tokens), the same
arithmetic `Sam.decode` runs under `torch.inference_mode()`; those paths are exact for any
number of points, only their cost changes with it.
Both files use only operators of the default ONNX domain that onnxruntime's CPU kernels
(and so onnxruntime-web's WebAssembly backend, the same engine compiled to WASM) run.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import onnx
import torch

from model.sam import Sam
from stages.assisted.contract import (
    CONTRACT_VERSION,
    INPUT_NAMES,
    META_CONTRACT,
    META_EMBEDDING_SIZE,
    META_IMG_SIZE,
    META_MODEL_NAME,
    META_WEIGHTS_SHA256,
    OUTPUT_NAMES,
)
from stages.assisted.decoder_graph import DecoderGraph

DEFAULT_OPSET = 17
MIN_OPSET = 14  # scaled_dot_product_attention needs 14
MAX_OPSET = 21  # the newest the TorchScript exporter was checked with
# The example prompt traced: two points and the padding point. The traced decoder branches
# on shapes only where the cost differs, so any number of points gives the same graph.
_EXAMPLE_POINTS = 3
_EXAMPLE_SIZE = (534.0, 800.0)


class ExportError(ValueError):
    """An export that cannot be done as asked (bad opset, unwritable path)."""


def export_decoder_onnx(
    sam: Sam,
    path: str | Path,
    *,
    opset: int = DEFAULT_OPSET,
    model_name: str = "",
    weights_sha256: str = "",
) -> Path:
    """Write the prompt encoder + mask decoder + upsampling of `sam` to `path` (one .onnx
    file, written under a temporary name and renamed). The number of points and the output
    height and width are dynamic. model_name and weights_sha256 go into the file's
    metadata (`contract.META_*`) so a campaign can tell which model a file belongs to."""
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ExportError(f"opset must be between {MIN_OPSET} and {MAX_OPSET}, got {opset}")
    target = Path(path)
    graph = DecoderGraph(sam).eval()
    with _temporary_beside(target) as temporary:
        with torch.no_grad(), warnings.catch_warnings():
            # The TorchScript exporter is deprecated in favour of the torch.export one,
            # and warns about traced shape arithmetic that is exact here.
            warnings.simplefilter("ignore")
            torch.onnx.export(
                graph,
                example_inputs(sam),
                str(temporary),
                input_names=list(INPUT_NAMES),
                output_names=list(OUTPUT_NAMES),
                opset_version=opset,
                dynamo=False,
                dynamic_axes=_DYNAMIC_AXES,
            )
        model = onnx.load(str(temporary))
        _declare_output_shapes(model, sam)
        _set_metadata(model, sam, model_name=model_name, weights_sha256=weights_sha256)
        onnx.checker.check_model(model, full_check=True)
        onnx.save(model, str(temporary))
        os.replace(temporary, target)
    return target


def quantize_decoder_onnx(src: str | Path, dst: str | Path) -> Path:
    """Dynamic quantization of an exported decoder's matrix products, written to `dst`:
    weights uint8 with a scale and zero point per output channel, activations quantized at
    run time. (Per-channel uint8 drifted least from fp32 here; int8 weights did not work
    with per-channel scales, docs/benchmarks.md.) The result uses DynamicQuantizeLinear and
    MatMulInteger of the default ONNX domain, which onnxruntime's CPU and WebAssembly
    backends run; the metadata is carried over."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    source, target = Path(src), Path(dst)
    if not source.is_file():
        raise FileNotFoundError(f"no exported decoder at {source}")
    with _temporary_beside(target) as temporary, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantize_dynamic(
            source,
            temporary,
            op_types_to_quantize=["MatMul", "Gemm"],
            per_channel=True,
            reduce_range=False,
            weight_type=QuantType.QUInt8,
        )
        model = onnx.load(str(temporary))
        original = onnx.load(str(source), load_external_data=False)
        onnx.helper.set_model_props(
            model, {prop.key: prop.value for prop in original.metadata_props}
        )
        onnx.checker.check_model(model, full_check=True)
        onnx.save(model, str(temporary))
        os.replace(temporary, target)
    return target


def example_inputs(sam: Sam) -> tuple[torch.Tensor, ...]:
    """Inputs in the contract's layout for tracing (and for tests): an embedding of the
    model's grid, two points and the padding point, no mask prompt."""
    height, width = sam.prompt_encoder.image_embedding_size
    mask_h, mask_w = sam.prompt_encoder.mask_input_size
    coords = torch.tensor([[[120.0, 200.0], [400.0, 300.0], [0.0, 0.0]]])
    return (
        torch.zeros(1, sam.prompt_encoder.embed_dim, height, width),
        coords[:, :_EXAMPLE_POINTS],
        torch.tensor([[1.0, 0.0, -1.0]])[:, :_EXAMPLE_POINTS],
        torch.zeros(1, 1, mask_h, mask_w),
        torch.zeros(1),
        torch.tensor(_EXAMPLE_SIZE),
    )


_DYNAMIC_AXES = {
    "point_coords": {1: "num_points"},
    "point_labels": {1: "num_points"},
    "masks": {2: "height", 3: "width"},
}


def _declare_output_shapes(model: onnx.ModelProto, sam: Sam) -> None:
    """The contract's output shapes, with named dynamic height and width."""
    mask_h, mask_w = sam.prompt_encoder.mask_input_size
    tokens = sam.mask_decoder.num_mask_tokens
    shapes: dict[str, list[int | str]] = {
        "masks": [1, tokens, "height", "width"],
        "iou_predictions": [1, tokens],
        "low_res_masks": [1, tokens, mask_h, mask_w],
    }
    for output in model.graph.output:
        dims = output.type.tensor_type.shape.dim
        for dim, value in zip(dims, shapes[output.name], strict=True):
            if isinstance(value, int):
                dim.dim_value = value
            else:
                dim.dim_param = value


def _set_metadata(
    model: onnx.ModelProto, sam: Sam, *, model_name: str, weights_sha256: str
) -> None:
    grid = sam.prompt_encoder.image_embedding_size
    props = {
        META_CONTRACT: CONTRACT_VERSION,
        META_MODEL_NAME: model_name,
        META_WEIGHTS_SHA256: weights_sha256,
        META_IMG_SIZE: str(sam.img_size),
        META_EMBEDDING_SIZE: f"{grid[0]}x{grid[1]}",
    }
    onnx.helper.set_model_props(model, props)
    model.producer_name = "sa-data-engine"


@contextmanager
def _temporary_beside(target: Path) -> Iterator[Path]:
    """A temporary file name in the target's folder (created if missing), removed unless
    the caller renamed it onto the target."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        handle, name = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    except OSError as error:
        raise ExportError(f"cannot write {target}: {error.strerror or error}") from error
    os.close(handle)
    temporary = Path(name)
    try:
        yield temporary
    finally:
        temporary.unlink(missing_ok=True)
