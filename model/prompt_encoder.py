"""Prompt encoder: points, boxes and mask prompts to sparse and dense embeddings.

Parameter names follow the official checkpoints (`pe_layer.positional_encoding_gaussian_matrix`,
`point_embeddings.{0..3}`, `not_a_point_embed`, `mask_downscaling.{0,1,3,4,6}`,
`no_mask_embed`).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from model.common import LayerNorm2d

# Rows of `point_embeddings`: background point, foreground point, box top-left, box bottom-right.
BACKGROUND, FOREGROUND, BOX_TOP_LEFT, BOX_BOTTOM_RIGHT = 0, 1, 2, 3
PADDING_LABEL = -1


class PositionEmbeddingRandom(nn.Module):
    """Random-Fourier-feature encoding of XY coordinates normalized to [0, 1]."""

    positional_encoding_gaussian_matrix: torch.Tensor

    def __init__(self, num_pos_feats: int = 64, scale: float | None = None) -> None:
        super().__init__()
        scale = 1.0 if scale is None or scale <= 0.0 else scale
        self.register_buffer(
            "positional_encoding_gaussian_matrix", scale * torch.randn((2, num_pos_feats))
        )

    def encode(self, unit_xy: torch.Tensor) -> torch.Tensor:
        """... x 2 coordinates in [0, 1] -> ... x (2 * num_pos_feats) features."""
        gaussian = self.positional_encoding_gaussian_matrix
        phase = (2.0 * unit_xy - 1.0) @ gaussian.to(unit_xy.dtype) * (2.0 * math.pi)
        return torch.cat([phase.sin(), phase.cos()], dim=-1)

    def forward(self, size: tuple[int, int]) -> torch.Tensor:
        """Dense encoding of an H x W grid of cell centres: C x H x W."""
        height, width = size
        device = self.positional_encoding_gaussian_matrix.device
        ys = (torch.arange(height, device=device, dtype=torch.float32) + 0.5) / height
        xs = (torch.arange(width, device=device, dtype=torch.float32) + 0.5) / width
        grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)
        return self.encode(grid).permute(2, 0, 1)

    def forward_with_coords(
        self, coords_input: torch.Tensor, image_size: tuple[int, int]
    ) -> torch.Tensor:
        """B x N x 2 XY pixel coordinates in an image of `image_size` (H, W) -> B x N x C."""
        scale = coords_input.new_tensor([image_size[1], image_size[0]])
        return self.encode((coords_input / scale).float())


class PromptEncoder(nn.Module):
    def __init__(
        self,
        *,
        embed_dim: int,
        image_embedding_size: tuple[int, int],
        input_image_size: tuple[int, int],
        mask_in_chans: int,
    ) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.input_image_size = input_image_size
        self.image_embedding_size = image_embedding_size
        self.pe_layer = PositionEmbeddingRandom(embed_dim // 2)
        self.point_embeddings = nn.ModuleList(nn.Embedding(1, embed_dim) for _ in range(4))
        self.not_a_point_embed = nn.Embedding(1, embed_dim)
        self.mask_input_size = (4 * image_embedding_size[0], 4 * image_embedding_size[1])
        quarter = mask_in_chans // 4
        self.mask_downscaling = nn.Sequential(
            nn.Conv2d(1, quarter, kernel_size=2, stride=2),
            LayerNorm2d(quarter),
            nn.GELU(),
            nn.Conv2d(quarter, mask_in_chans, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans),
            nn.GELU(),
            nn.Conv2d(mask_in_chans, embed_dim, kernel_size=1),
        )
        self.no_mask_embed = nn.Embedding(1, embed_dim)
        self._dense_pe_cache: tuple[tuple[int, int, int, bool], torch.Tensor] | None = None

    def _point_embed(self, row: int) -> torch.Tensor:
        embedding = self.point_embeddings[row]
        assert isinstance(embedding, nn.Embedding)
        return embedding.weight

    def get_dense_pe(self) -> torch.Tensor:
        """Positional encoding of the image embedding grid: 1 x C x h x w.

        It depends only on the Gaussian matrix, so it is kept until that buffer is changed
        (loading weights, moving devices) or the inference mode differs.
        """
        if torch.compiler.is_compiling():
            return self.pe_layer(self.image_embedding_size).unsqueeze(0)
        gaussian = self.pe_layer.positional_encoding_gaussian_matrix
        key = (
            id(gaussian),
            gaussian.data_ptr(),
            gaussian._version,
            torch.is_inference_mode_enabled(),
        )
        cached = self._dense_pe_cache
        if cached is None or cached[0] != key:
            cached = (key, self.pe_layer(self.image_embedding_size).unsqueeze(0))
            self._dense_pe_cache = cached
        return cached[1]

    def _embed_points(self, points: torch.Tensor, labels: torch.Tensor, pad: bool) -> torch.Tensor:
        """B x N x 2 XY (model-input pixels) and B x N labels -> B x N(+1) x C."""
        points = points + 0.5  # pixel centres
        if pad:
            points = torch.cat([points, points.new_zeros(points.shape[0], 1, 2)], dim=1)
            labels = torch.cat([labels, labels.new_full((labels.shape[0], 1), PADDING_LABEL)], 1)
        encoded = self.pe_layer.forward_with_coords(points, self.input_image_size)
        labels = labels.unsqueeze(-1)
        is_pad = labels == PADDING_LABEL
        encoded = torch.where(is_pad, self.not_a_point_embed.weight, encoded)
        encoded = encoded + (labels == BACKGROUND) * self._point_embed(BACKGROUND)
        return encoded + (labels == FOREGROUND) * self._point_embed(FOREGROUND)

    def _embed_boxes(self, boxes: torch.Tensor) -> torch.Tensor:
        """B x 4 XYXY boxes (model-input pixels) -> B x 2 x C corner embeddings."""
        corners = (boxes + 0.5).reshape(-1, 2, 2)
        encoded = self.pe_layer.forward_with_coords(corners, self.input_image_size)
        corner_embed = torch.cat(
            [
                self._point_embed(BOX_TOP_LEFT),
                self._point_embed(BOX_BOTTOM_RIGHT),
            ]
        )
        return encoded + corner_embed

    def _embed_masks(self, masks: torch.Tensor) -> torch.Tensor:
        return self.mask_downscaling(masks)

    @staticmethod
    def _batch_size(
        points: tuple[torch.Tensor, torch.Tensor] | None,
        boxes: torch.Tensor | None,
        masks: torch.Tensor | None,
    ) -> int:
        if points is not None:
            return points[0].shape[0]
        if boxes is not None:
            return boxes.shape[0]
        return masks.shape[0] if masks is not None else 1

    def forward(
        self,
        points: tuple[torch.Tensor, torch.Tensor] | None,
        boxes: torch.Tensor | None,
        masks: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns sparse B x N x C and dense B x C x h x w embeddings.

        points: (B x N x 2 XY, B x N labels: 1 fg, 0 bg, -1 padding); boxes: B x 4 XYXY;
        masks: B x 1 x 4h x 4w logits. Coordinates are in model-input (resized) pixels.
        """
        batch = self._batch_size(points, boxes, masks)
        weight = self.no_mask_embed.weight
        parts = [weight.new_zeros(batch, 0, self.embed_dim)]
        if points is not None:
            parts.append(self._embed_points(points[0], points[1], pad=boxes is None))
        if boxes is not None:
            parts.append(self._embed_boxes(boxes))
        sparse = torch.cat(parts, dim=1)
        if masks is not None:
            dense = self._embed_masks(masks)
        else:
            height, width = self.image_embedding_size
            dense = weight.reshape(1, -1, 1, 1).expand(batch, -1, height, width)
        return sparse, dense
