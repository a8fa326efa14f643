"""Stage 1, assisted-manual annotation: the browser decoder as ONNX and its runner."""
