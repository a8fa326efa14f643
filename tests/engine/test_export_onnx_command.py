"""`saengine export-onnx`: the decoder files it writes, what it prints, its one-line errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from engine.models import load_model, weights_sha256
from stages.assisted.contract import META_MODEL_NAME, META_WEIGHTS_SHA256
from stages.assisted.onnx_decoder import OnnxDecoder
from tests.engine.jobrun import run_saengine


def test_exports_fp32_and_quantized_files(tmp_path: Path) -> None:
    output = tmp_path / "decoders" / "bundled.onnx"
    result = run_saengine("export-onnx", "model=bundled", f"output={output}", "quantize=true")
    assert result.returncode == 0, result.stderr
    quantized = tmp_path / "decoders" / "bundled.quant.onnx"
    assert sorted(p.name for p in output.parent.iterdir()) == [output.name, quantized.name]
    sha256 = weights_sha256(load_model("vit_mini", "bundled"))
    assert sha256 in result.stdout
    for path in (output, quantized):
        size_mb = f"({path.stat().st_size / 1e6:.1f} MB)"
        assert f"{path} {size_mb}" in result.stdout
        decoder = OnnxDecoder(path)
        assert decoder.metadata[META_WEIGHTS_SHA256] == sha256
        assert decoder.metadata[META_MODEL_NAME] == "vit_mini"
        out = decoder.run(
            np.zeros((256, 16, 16), np.float16),
            points=np.array([[10.0, 20.0]]),
            labels=np.array([1]),
            orig_size=(40, 30),
        )
        assert out.masks.shape == (4, 40, 30)


def test_help_lists_the_options() -> None:
    result = run_saengine("export-onnx", "--help")
    assert result.returncode == 0
    for text in ("usage: saengine export-onnx", "quantize:", "opset:", "model=<bundled|"):
        assert text in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["model=bundled"], "missing required option(s): output"),
        (["model=bundled", "output={tmp}/d.onnx", "opset=9"], "opset must be between 14 and 21"),
        (["model=bundled", "output={tmp}/d.onnx", "quantize=maybe"], "quantize must be true or"),
        (["model=bundled", "output={tmp}"], "is a folder; give a file such as"),
        (["model=vit_b", "output={tmp}/d.onnx"], "model.checkpoint"),
    ],
)
def test_bad_command_lines_fail_in_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    result = run_saengine("export-onnx", *(a.format(tmp=tmp_path) for a in args))
    assert result.returncode == 2, result.stdout + result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if line.startswith("saengine:")]
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert "Traceback" not in result.stderr
    assert not list(tmp_path.iterdir())
