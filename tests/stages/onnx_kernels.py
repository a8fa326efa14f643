"""Which nodes of an ONNX graph lack a kernel in onnxruntime's CPU engine for the input
types the graph gives them. The CPU engine's kernel registry is what onnxruntime's
docs/OperatorKernels.md is generated from, and onnxruntime-web's WebAssembly backend is
that engine compiled to WASM."""

from __future__ import annotations

from collections import defaultdict

import onnx
import onnx.defs

_TYPE_NAMES = {
    onnx.TensorProto.FLOAT: "tensor(float)",
    onnx.TensorProto.DOUBLE: "tensor(double)",
    onnx.TensorProto.INT64: "tensor(int64)",
    onnx.TensorProto.INT32: "tensor(int32)",
    onnx.TensorProto.INT8: "tensor(int8)",
    onnx.TensorProto.UINT8: "tensor(uint8)",
    onnx.TensorProto.BOOL: "tensor(bool)",
}


def _cpu_kernels() -> dict[str, list]:
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    kernels: dict[str, list] = defaultdict(list)
    for kernel in state.get_all_opkernel_def():
        if kernel.provider == "CPUExecutionProvider" and kernel.domain in ("", "ai.onnx"):
            kernels[kernel.op_name].append(kernel)
    return kernels


def _value_types(model: onnx.ModelProto) -> dict[str, str]:
    graph = model.graph
    types = {
        value.name: value.type.tensor_type.elem_type
        for value in [*graph.value_info, *graph.input, *graph.output]
    }
    types.update({init.name: init.data_type for init in graph.initializer})
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute[0].name == "value":
            types[node.output[0]] = node.attribute[0].t.data_type
    return {name: _TYPE_NAMES.get(elem, str(elem)) for name, elem in types.items()}


def missing_cpu_kernels(model: onnx.ModelProto) -> set[tuple[str, str]]:
    """(operator, input type) pairs with no CPU kernel at the model's opset."""
    model = onnx.shape_inference.infer_shapes(model)
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    kernels, types = _cpu_kernels(), _value_types(model)
    missing = set()
    for node in model.graph.node:
        if node.op_type == "Constant":
            continue
        schema = onnx.defs.get_schema(node.op_type, opset)
        found = [
            k
            for k in kernels[node.op_type]
            if k.version_range[0] <= schema.since_version
            and schema.since_version <= k.version_range[1]
        ]
        if not found:
            missing.add((node.op_type, "no kernel"))
        formals = list(schema.inputs)
        for index, name in enumerate(node.input):
            if not name or not formals:
                continue
            constraint = formals[min(index, len(formals) - 1)].type_str
            constrained = [k for k in found if constraint in k.type_constraints]
            given = types.get(name, "unknown")
            if constrained and not any(
                given in k.type_constraints[constraint] for k in constrained
            ):
                missing.add((node.op_type, given))
    return missing
