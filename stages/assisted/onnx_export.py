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

import hashlib
import logging
import os
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
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


@dataclass(frozen=True)
class ExportSettings:
    """What `saengine export-onnx` (and a campaign, once per model version) writes.
    output: the fp32 .onnx file; quantize: also write the quantized variant, at
    quantized_output (default: <output without .onnx>.quant.onnx beside it)."""

    output: str
    quantize: bool = False
    quantized_output: str | None = None
    opset: int = DEFAULT_OPSET

    def __post_init__(self) -> None:
        if not self.output:
            raise ValueError("output must be a file name, e.g. output=decoder.onnx")
        if not isinstance(self.quantize, bool):
            raise ValueError(f"quantize must be true or false, got {self.quantize!r}")
        if isinstance(self.opset, bool) or not isinstance(self.opset, int):
            raise ValueError(f"opset must be an integer, got {self.opset!r}")
        if not MIN_OPSET <= self.opset <= MAX_OPSET:
            raise ValueError(f"opset must be between {MIN_OPSET} and {MAX_OPSET}, got {self.opset}")
        if self.quantized_output is not None and self.quantized_output == self.output:
            raise ValueError(f"quantized_output must differ from output ({self.output})")

    def quantized_path(self) -> Path:
        if self.quantized_output:
            return Path(self.quantized_output)
        output = Path(self.output)
        stem = output.name[: -len(".onnx")] if output.name.endswith(".onnx") else output.name
        return output.with_name(f"{stem}.quant.onnx")


@dataclass(frozen=True)
class DecoderFiles:
    """The files of one export: fp32 and, when asked for, the quantized variant."""

    fp32: Path
    quantized: Path | None


def export_decoder_files(
    sam: Sam, settings: ExportSettings, *, model_name: str = "", weights_sha256: str = ""
) -> DecoderFiles:
    """Export `sam`'s decoder as `settings` say (the fp32 file, then its quantized
    variant); metadata as in `export_decoder_onnx`."""
    output = Path(settings.output)
    check_output_path(output)
    fp32 = export_decoder_onnx(
        sam, output, opset=settings.opset, model_name=model_name, weights_sha256=weights_sha256
    )
    quantized = (
        quantize_decoder_onnx(fp32, settings.quantized_path()) if settings.quantize else None
    )
    return DecoderFiles(fp32=fp32, quantized=quantized)


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
        _share_identical_constants(model)
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
    with _temporary_beside(target) as temporary, _quiet():
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


def _share_identical_constants(model: onnx.ModelProto, min_bytes: int = 1024) -> None:
    """Keep one copy of equal large constants: the trace writes the positional encoding of
    the image grid (4 MB for a 64 x 64 grid) once per decoder layer that adds it."""
    graph = model.graph
    first: dict[tuple[int, tuple[int, ...], bytes], str] = {}
    renamed: dict[str, str] = {}
    kept = []
    for node in graph.node:
        tensor = node.attribute[0].t if node.op_type == "Constant" and node.attribute else None
        if tensor is not None and len(tensor.raw_data) >= min_bytes:
            key = (tensor.data_type, tuple(tensor.dims), hashlib.sha256(tensor.raw_data).digest())
            if key in first:
                renamed[node.output[0]] = first[key]
                continue
            first[key] = node.output[0]
        kept.append(node)
    for node in kept:
        for index, name in enumerate(node.input):
            node.input[index] = renamed.get(name, name)
    del graph.node[:]
    graph.node.extend(kept)


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
def _quiet() -> Iterator[None]:
    """Without the quantizer's advice on the root logger and its warnings."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous)


@contextmanager
def _temporary_beside(target: Path) -> Iterator[Path]:
    """A fresh file name in the target's folder (created if missing), removed unless the
    caller renamed it onto the target."""
    check_output_path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ExportError(f"cannot create {target.parent}: {error.strerror or error}") from error
    temporary = target.with_name(f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        yield temporary
    finally:
        temporary.unlink(missing_ok=True)


def check_output_path(target: Path) -> None:
    """Refuse a target that is a folder or lies under a file, before any work is done."""
    if target.is_dir():
        raise ExportError(f"output {target} is a folder; give a file such as {target}/decoder.onnx")
    for parent in target.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ExportError(f"cannot write {target}: {parent} is not a folder")
            break
