"""The official `segment-anything` package as a test oracle: build both implementations
with the same seeded random weights."""

from __future__ import annotations

import pytest
import torch

from model import MODEL_REGISTRY, Sam, build_sam
from model.testing import sharpen_decoder_

official = pytest.importorskip("segment_anything", reason="the official package is the oracle")
from segment_anything.build_sam import _build_sam  # noqa: E402


def randomize_(sam: torch.nn.Module, seed: int) -> None:
    """Give every parameter a seeded random value, also those initialized to 0 or 1
    (position embeddings, relative-position tables, norms), so that all of them matter."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sorted(sam.named_parameters()):
            noise = torch.randn(param.shape, generator=generator)
            if "norm" in name and name.endswith("weight"):
                param.copy_(1.0 + 0.1 * noise)
            elif param.ndim <= 1:
                param.copy_(0.1 * noise)
            elif "rel_pos" in name or "pos_embed" in name:
                param.copy_(0.2 * noise)
            else:
                fan_in = param[0].numel()
                param.copy_(noise / fan_in**0.5)
        gaussian = sam.prompt_encoder.pe_layer.positional_encoding_gaussian_matrix
        gaussian.copy_(torch.randn(gaussian.shape, generator=generator))


def build_pair(name: str, seed: int = 0, sharpen: bool = False) -> tuple[Sam, torch.nn.Module]:
    """(ours, official) with identical random weights, in eval mode."""
    spec = MODEL_REGISTRY[name]
    reference = _build_sam(
        encoder_embed_dim=spec.embed_dim,
        encoder_depth=spec.depth,
        encoder_num_heads=spec.num_heads,
        encoder_global_attn_indexes=list(spec.global_attn_indexes),
    )
    randomize_(reference, seed)
    if sharpen:
        sharpen_decoder_(reference)
    ours = build_sam(name)
    ours.load_state_dict(reference.state_dict())
    ours.prompt_encoder.pe_layer.positional_encoding_gaussian_matrix.copy_(
        reference.prompt_encoder.pe_layer.positional_encoding_gaussian_matrix
    )
    return ours.eval(), reference.eval()
