"""The verifier network: SAM's image embedding and a mask in, the logit of "a person would
accept this mask" out.

The mask comes in SAM's low-res frame (4 x the embedding grid, covering the padded model
input; `stages.verify.features.mask_frame`) and is downscaled by two strided convolutions to
the embedding grid, as SAM's prompt encoder downscales a mask prompt; the projected
embedding and the mask features are fused by two 3 x 3 convolutions, then pooled three ways:
inside the mask, in a ring around it (what it may have missed or spilled into) and over the
whole image; an MLP reads the three pooled vectors with the mask's own numbers (predicted
IoU, stability score, size) and gives the logit.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

RING_PX = 2  # embedding-grid pixels around the mask that make its ring


@dataclass(frozen=True)
class VerifierConfig:
    """embedding_dim: SAM's embedding channels (256); channels: the network's width (a
    multiple of 8); scalars: the mask's own numbers it reads (`features.mask_scalars`)."""

    embedding_dim: int = 256
    channels: int = 32
    scalars: int = 3

    def __post_init__(self) -> None:
        if self.channels < 8 or self.channels % 8:
            raise ValueError(f"verifier.channels must be a multiple of 8, got {self.channels}")
        if self.embedding_dim < 1 or self.scalars < 0:
            raise ValueError(
                f"verifier.embedding_dim must be >= 1 and scalars >= 0, got "
                f"{self.embedding_dim}, {self.scalars}"
            )


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(8, channels), channels)


class MaskVerifier(nn.Module):
    def __init__(self, config: VerifierConfig) -> None:
        super().__init__()
        self.config = config
        width = config.channels
        self.embedding = nn.Sequential(
            nn.Conv2d(config.embedding_dim, width, 1), _norm(width), nn.GELU()
        )
        self.mask = nn.Sequential(
            nn.Conv2d(1, width // 4, 2, stride=2),
            _norm(width // 4),
            nn.GELU(),
            nn.Conv2d(width // 4, width, 2, stride=2),
            _norm(width),
            nn.GELU(),
        )
        self.fuse = nn.Sequential(
            nn.Conv2d(2 * width, width, 3, padding=1),
            _norm(width),
            nn.GELU(),
            nn.Conv2d(width, width, 3, padding=1),
            _norm(width),
            nn.GELU(),
        )
        self.head = nn.Sequential(
            nn.Linear(3 * width + config.scalars, width), nn.GELU(), nn.Linear(width, 1)
        )

    def forward(
        self, embeddings: torch.Tensor, masks: torch.Tensor, scalars: torch.Tensor
    ) -> torch.Tensor:
        """embeddings B x E x h x w, masks B x 1 x 4h x 4w (each pixel's share of mask, in
        [0, 1]), scalars B x S -> logits B."""
        features = self.fuse(torch.cat([self.embedding(embeddings), self.mask(masks)], dim=1))
        inside = F.avg_pool2d(masks, 4)
        around = F.max_pool2d(inside, 2 * RING_PX + 1, stride=1, padding=RING_PX) - inside
        pooled = [
            _weighted_mean(features, inside),
            _weighted_mean(features, around.clamp(min=0)),
            features.mean(dim=(2, 3)),
        ]
        return self.head(torch.cat([*pooled, scalars], dim=1)).squeeze(1)


def _weighted_mean(features: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """B x C x h x w features averaged with B x 1 x h x w weights -> B x C."""
    total = weights.sum(dim=(2, 3)).clamp(min=1e-6)
    return (features * weights).sum(dim=(2, 3)) / total
