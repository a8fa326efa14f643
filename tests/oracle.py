"""The official `segment-anything` package as a test oracle: build both implementations
with the same seeded random weights."""

from __future__ import annotations

from functools import partial

import pytest
import torch

from model import MODEL_REGISTRY, Sam, build_sam
from model.testing import sharpen_decoder_

official = pytest.importorskip("segment_anything", reason="the official package is the oracle")
from segment_anything.modeling import (  # noqa: E402
    ImageEncoderViT,
    MaskDecoder,
    PromptEncoder,
    TwoWayTransformer,
)
from segment_anything.modeling import Sam as OfficialSam  # noqa: E402

from model.build import EncoderSpec  # noqa: E402


def build_official(spec: EncoderSpec) -> torch.nn.Module:
    """The official model for one of our encoder specs, also those with another input size
    or window (the official builder fixes 1024 and 14), from the official building blocks."""
    grid = spec.image_size // 16
    encoder = ImageEncoderViT(
        depth=spec.depth,
        embed_dim=spec.embed_dim,
        img_size=spec.image_size,
        mlp_ratio=4,
        norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
        num_heads=spec.num_heads,
        patch_size=16,
        qkv_bias=True,
        use_rel_pos=True,
        global_attn_indexes=list(spec.global_attn_indexes),
        window_size=spec.window_size,
        out_chans=256,
    )
    prompt_encoder = PromptEncoder(
        embed_dim=256,
        image_embedding_size=(grid, grid),
        input_image_size=(spec.image_size, spec.image_size),
        mask_in_chans=16,
    )
    decoder = MaskDecoder(
        num_multimask_outputs=3,
        transformer=TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8),
        transformer_dim=256,
        iou_head_depth=3,
        iou_head_hidden_dim=256,
    )
    return OfficialSam(
        image_encoder=encoder,
        prompt_encoder=prompt_encoder,
        mask_decoder=decoder,
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    ).eval()


def official_twin(name: str, sam: Sam) -> torch.nn.Module:
    """The official model `name` holding the weights of our `sam` (e.g. a trained one)."""
    reference = build_official(MODEL_REGISTRY[name])
    reference.load_state_dict(sam.state_dict())
    return reference


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
    reference = build_official(MODEL_REGISTRY[name])
    randomize_(reference, seed)
    if sharpen:
        sharpen_decoder_(reference)
    ours = build_sam(name)
    ours.load_state_dict(reference.state_dict())
    ours.prompt_encoder.pe_layer.positional_encoding_gaussian_matrix.copy_(
        reference.prompt_encoder.pe_layer.positional_encoding_gaussian_matrix
    )
    return ours.eval(), reference.eval()
