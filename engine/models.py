"""Models for jobs: what `model=<name>` configs instantiate (`_target_`), and their identity."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from omegaconf import DictConfig

from engine.registry import resolve_registry_reference
from model import Sam, build_sam
from model.testing import sharpen_decoder_


def load_model(
    name: str,
    checkpoint: str | None = None,
    *,
    random_seed: int | None = None,
    sharpen: bool = False,
) -> Sam:
    """A SAM for a job. checkpoint: a path, or 'official' to download the official weights.
    Without a checkpoint, random_seed must be given: seeded random weights (for tests and
    demos), optionally with a sharpened decoder (see model.testing)."""
    if checkpoint is None and random_seed is None:
        raise ValueError(
            f"model {name!r} needs model.checkpoint=<path> (or 'official' to download); "
            "random weights only with model.random_seed=<int>"
        )
    if checkpoint is not None:
        return build_sam(name, checkpoint=resolve_checkpoint_reference(checkpoint)).eval()
    torch.manual_seed(int(random_seed or 0))
    sam = build_sam(name)
    if sharpen:
        sharpen_decoder_(sam)
    return sam.eval()


BUNDLED_CHECKPOINT = (
    Path(__file__).resolve().parents[1] / "model" / "weights" / "vit_mini_synthetic.pth"
)


def resolve_checkpoint_reference(checkpoint: str) -> str:
    """'bundled' -> the project's shipped small model; '<registry>/latest' or
    '<registry>/<round>' -> that round's model.pth; anything else unchanged."""
    if checkpoint == "bundled":
        return str(BUNDLED_CHECKPOINT)
    return resolve_registry_reference(checkpoint)


def resolve_device(name: str) -> torch.device:
    """The device a model runs on: 'auto' is CUDA when there is a GPU, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def weights_sha256(sam: torch.nn.Module) -> str:
    """SHA-256 over the state_dict (names, dtypes, shapes, values): the model's identity,
    whether it came from a file or from a seed."""
    digest = hashlib.sha256()
    for name, tensor in sam.state_dict().items():
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def run_export_onnx(cfg: DictConfig) -> None:
    """`saengine export-onnx`: the browser decoder of the composed model as ONNX files."""
    from hydra.utils import instantiate

    from stages.assisted.onnx_export import (
        ExportSettings,
        check_output_path,
        export_decoder_files,
    )

    settings = ExportSettings(
        output=str(cfg.output),
        quantize=cfg.quantize,
        quantized_output=None if cfg.quantized_output is None else str(cfg.quantized_output),
        opset=cfg.opset,
    )
    check_output_path(Path(settings.output))
    sam = instantiate(cfg.model)
    sha256 = weights_sha256(sam)
    print(f"exporting the decoder of {cfg.model.name} (weights SHA-256 {sha256})", flush=True)
    files = export_decoder_files(
        sam, settings, model_name=str(cfg.model.name), weights_sha256=sha256
    )
    for label, path in (("fp32", files.fp32), ("quantized", files.quantized)):
        if path is not None:
            print(f"{label}: {path} ({path.stat().st_size / 1e6:.1f} MB)")
