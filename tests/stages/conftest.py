"""Fixtures shared by the stage tests: the bundled model's decoder exported once."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from engine.models import load_model, weights_sha256
from model import Sam
from stages.assisted.onnx_decoder import OnnxDecoder
from stages.assisted.onnx_export import export_decoder_onnx


@dataclass(frozen=True)
class Exported:
    """A model, its exported decoder file and an onnxruntime session on it."""

    sam: Sam
    path: Path
    decoder: OnnxDecoder


@pytest.fixture(scope="session")
def bundled_onnx(tmp_path_factory: pytest.TempPathFactory) -> Exported:
    """The bundled model (vit_mini: 256-pixel input, 16 x 16 embedding) exported."""
    sam = load_model("vit_mini", "bundled")
    path = tmp_path_factory.mktemp("onnx") / "bundled.onnx"
    export_decoder_onnx(sam, path, model_name="vit_mini", weights_sha256=weights_sha256(sam))
    return Exported(sam, path, OnnxDecoder(path))
