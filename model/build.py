"""Model construction: a plain registry of encoder sizes and `build_sam`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from model.checkpoint import load_state_dict_into, resolve_checkpoint
from model.image_encoder import ImageEncoderViT
from model.mask_decoder import MaskDecoder
from model.prompt_encoder import PromptEncoder
from model.sam import Sam
from model.transformer import TwoWayTransformer

PROMPT_EMBED_DIM = 256
IMAGE_SIZE = 1024
PATCH_SIZE = 16
WINDOW_SIZE = 14


@dataclass(frozen=True)
class EncoderSpec:
    """The hyper-parameters that differ between SAM sizes."""

    embed_dim: int
    depth: int
    num_heads: int
    global_attn_indexes: tuple[int, ...]
    image_size: int = IMAGE_SIZE
    window_size: int = WINDOW_SIZE

    def __post_init__(self) -> None:
        if self.embed_dim % self.num_heads:
            raise ValueError(f"num_heads={self.num_heads} must divide embed_dim={self.embed_dim}")
        if any(not 0 <= i < self.depth for i in self.global_attn_indexes):
            raise ValueError(
                f"global_attn_indexes {self.global_attn_indexes} outside depth {self.depth}"
            )


MODEL_REGISTRY: dict[str, EncoderSpec] = {
    "vit_h": EncoderSpec(1280, 32, 16, (7, 15, 23, 31)),
    "vit_l": EncoderSpec(1024, 24, 16, (5, 11, 17, 23)),
    "vit_b": EncoderSpec(768, 12, 12, (2, 5, 8, 11)),
    # Small configurations for tests and the demo: same prompt encoder and decoder.
    "vit_small": EncoderSpec(192, 6, 3, (2, 5)),
    "vit_tiny": EncoderSpec(64, 2, 2, (1,)),
    # The bundled model's size: 256-pixel input (16 x 16 embedding), trained by this project.
    "vit_mini": EncoderSpec(128, 4, 4, (1, 3), image_size=256, window_size=8),
}


def known_models() -> list[str]:
    return list(MODEL_REGISTRY)


def get_spec(name: str) -> EncoderSpec:
    if name not in MODEL_REGISTRY:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(MODEL_REGISTRY)}")
    return MODEL_REGISTRY[name]


def build_sam_from_spec(spec: EncoderSpec) -> Sam:
    """A SAM with the given encoder and the standard prompt encoder and decoder."""
    grid = spec.image_size // PATCH_SIZE
    image_encoder = ImageEncoderViT(
        img_size=spec.image_size,
        patch_size=PATCH_SIZE,
        embed_dim=spec.embed_dim,
        depth=spec.depth,
        num_heads=spec.num_heads,
        out_chans=PROMPT_EMBED_DIM,
        window_size=spec.window_size,
        global_attn_indexes=spec.global_attn_indexes,
    )
    prompt_encoder = PromptEncoder(
        embed_dim=PROMPT_EMBED_DIM,
        image_embedding_size=(grid, grid),
        input_image_size=(spec.image_size, spec.image_size),
        mask_in_chans=16,
    )
    transformer = TwoWayTransformer(
        depth=2, embedding_dim=PROMPT_EMBED_DIM, num_heads=8, mlp_dim=2048
    )
    mask_decoder = MaskDecoder(transformer_dim=PROMPT_EMBED_DIM, transformer=transformer)
    return Sam(
        image_encoder=image_encoder, prompt_encoder=prompt_encoder, mask_decoder=mask_decoder
    )


def build_sam(name: str, checkpoint: str | Path | None = None) -> Sam:
    """Build SAM `name` (see `known_models()`), in eval mode on the CPU.

    `checkpoint` is a local path (official files load as they are), an http(s) URL
    (downloaded once into the cache and checked against its known SHA-256), or
    "official" for the official weights of `name`.
    """
    sam = build_sam_from_spec(get_spec(name))
    if checkpoint is not None:
        path = resolve_checkpoint(name, checkpoint)
        load_state_dict_into(sam, path, model_name=name, registry=MODEL_REGISTRY)
    return sam.eval()
