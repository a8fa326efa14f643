"""Mask decoder: two-way transformer, x4 upscaling, hypernetwork MLPs, IoU head.

Parameter names follow the official checkpoints (`iou_token`, `mask_tokens`,
`transformer.*`, `output_upscaling.{0,1,3}`, `output_hypernetworks_mlps.<i>.layers.<j>`,
`iou_prediction_head.layers.<j>`).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from model.common import MLP, LayerNorm2d, activate
from model.transformer import SharedImage, TwoWayTransformer


class MaskDecoder(nn.Module):
    def __init__(
        self,
        *,
        transformer_dim: int,
        transformer: TwoWayTransformer,
        num_multimask_outputs: int = 3,
        iou_head_depth: int = 3,
        iou_head_hidden_dim: int = 256,
    ) -> None:
        super().__init__()
        self.transformer_dim = transformer_dim
        self.transformer = transformer
        self.num_multimask_outputs = num_multimask_outputs
        self.num_mask_tokens = num_multimask_outputs + 1
        self.iou_token = nn.Embedding(1, transformer_dim)
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, transformer_dim)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(transformer_dim, transformer_dim // 4, kernel_size=2, stride=2),
            LayerNorm2d(transformer_dim // 4),
            nn.GELU(),
            nn.ConvTranspose2d(transformer_dim // 4, transformer_dim // 8, kernel_size=2, stride=2),
            nn.GELU(),
        )
        self.output_hypernetworks_mlps = nn.ModuleList(
            MLP(transformer_dim, transformer_dim, transformer_dim // 8, 3)
            for _ in range(self.num_mask_tokens)
        )
        self.iou_prediction_head = MLP(
            transformer_dim, iou_head_hidden_dim, self.num_mask_tokens, iou_head_depth
        )

    def forward(
        self,
        image_embeddings: torch.Tensor | SharedImage,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        multimask_output: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Low-res mask logits B x M x 4h x 4w and IoU predictions B x M.

        M is `num_multimask_outputs` when `multimask_output`, else 1 (the single-mask
        token). image_embeddings: 1 or B x C x h x w, or its `share_image` (then dense must
        be the no-mask embedding it was made with); dense: 1 or B x C x h x w.
        """
        selected = range(1, self.num_mask_tokens) if multimask_output else range(0, 1)
        return self.predict_masks(
            image_embeddings,
            image_pe,
            sparse_prompt_embeddings,
            dense_prompt_embeddings,
            selected=selected,
        )

    def predict_masks(
        self,
        image_embeddings: torch.Tensor | SharedImage,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        *,
        selected: range | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Masks and IoU predictions for the mask tokens in `selected` (all by default)."""
        selected = selected if selected is not None else range(self.num_mask_tokens)
        hs, image_tokens = self.attend(
            image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings
        )
        masks = self.masks_from(hs, image_tokens, _grid_size(image_embeddings), selected)
        return masks, self.iou_from(hs, selected)

    def share_image(
        self, image_embeddings: torch.Tensor, image_pe: torch.Tensor, dense: torch.Tensor
    ) -> SharedImage:
        """Per-image work of the first layer for 1 x C x h x w embeddings and the no-mask
        dense embedding; pass the result as `image_embeddings` to decode many prompts."""
        return self.transformer.share_image(image_embeddings + dense[:1], image_pe)

    def attend(
        self,
        image_embeddings: torch.Tensor | SharedImage,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The two-way transformer: output tokens B x T x C and image tokens B x (h*w) x C."""
        batch = sparse_prompt_embeddings.shape[0]
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        tokens = torch.cat([output_tokens.expand(batch, -1, -1), sparse_prompt_embeddings], dim=1)
        if isinstance(image_embeddings, SharedImage):
            src: torch.Tensor | SharedImage = image_embeddings
        else:
            src = image_embeddings + _collapse_broadcast(dense_prompt_embeddings)
        hs, image_tokens = self.transformer(src, image_pe, tokens)
        return hs, image_tokens.expand(batch, -1, -1)

    def iou_from(self, hs: torch.Tensor, selected: range) -> torch.Tensor:
        """Predicted IoUs B x M of the mask tokens in `selected`."""
        return self.iou_prediction_head(hs[:, 0, :])[:, selected.start : selected.stop]

    def masks_from(
        self,
        hs: torch.Tensor,
        image_tokens: torch.Tensor,
        size: tuple[int, int],
        selected: range,
        *,
        region: tuple[int, int] | None = None,
    ) -> torch.Tensor:
        """Mask logits B x M x 4h x 4w for the tokens in `selected` (h x w: `size`, the
        embedding grid). region: only the top-left rows x cols of the embedding grid, giving
        B x M x 4rows x 4cols; the upscaling maps every embedding pixel to its own 4 x 4
        block of logits, so that block is the same as in the full result."""
        height, width = size
        if region is not None and tuple(region) != (height, width):
            height, width = region
            grid = image_tokens.unflatten(1, size)[:, :height, :width]
            image_tokens = grid.flatten(1, 2)
        features = self._upscale(image_tokens, height, width)
        hyper_in = torch.stack(
            [self.output_hypernetworks_mlps[i](hs[:, 1 + i, :]) for i in selected], dim=1
        )
        return _from_subpixel_order(hyper_in @ features.transpose(1, 2), height, width)

    def _upscale(self, image_tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """`output_upscaling` on B x (h*w) x C image tokens, channels last.

        Each 2x2 stride-2 transposed convolution is one matrix product that gives every
        input pixel its 2x2 block of output pixels; the normalisation and activations act
        per pixel, so the blocks are never rearranged here. Returns B x (h*w*16) x C/8 with
        pixels in sub-pixel order (see `_from_subpixel_order`).
        """
        first, norm, act1, second, act2 = self.output_upscaling
        assert isinstance(first, nn.ConvTranspose2d) and isinstance(second, nn.ConvTranspose2d)
        assert isinstance(norm, LayerNorm2d)
        x = activate(_layer_norm_last(_transposed_conv_2x2(image_tokens, first), norm), act1)
        x = activate(_transposed_conv_2x2(x, second), act2)
        return x.reshape(image_tokens.shape[0], height * width * 16, x.shape[-1])


def _transposed_conv_2x2(x: torch.Tensor, conv: nn.ConvTranspose2d) -> torch.Tensor:
    """ConvTranspose2d(kernel 2, stride 2) on channels-last ... x C_in -> ... x 2 x 2 x C_out
    (the output pixel (2i + a, 2j + b) of input pixel (i, j) is at [..., a, b, :])."""
    c_in, c_out = conv.weight.shape[:2]
    weight = conv.weight.permute(2, 3, 1, 0).reshape(4 * c_out, c_in)
    bias = None if conv.bias is None else conv.bias.repeat(4)
    return F.linear(x, weight, bias).unflatten(-1, (2, 2, c_out))


def _layer_norm_last(x: torch.Tensor, norm: LayerNorm2d) -> torch.Tensor:
    """`LayerNorm2d` applied to a channels-last tensor."""
    return F.layer_norm(x, (x.shape[-1],), norm.weight, norm.bias, norm.eps)


def _from_subpixel_order(masks: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """B x M x (h*w*16) in the order (i, j, a1, b1, a2, b2) of `_upscale` -> B x M x 4h x 4w,
    row 4i + 2a1 + a2, column 4j + 2b1 + b2."""
    blocks = masks.unflatten(-1, (height, width, 2, 2, 2, 2))
    rows_first = blocks.permute(0, 1, 2, 4, 6, 3, 5, 7)
    return rows_first.reshape(*masks.shape[:2], 4 * height, 4 * width)


def _grid_size(image_embeddings: torch.Tensor | SharedImage) -> tuple[int, int]:
    if isinstance(image_embeddings, SharedImage):
        return image_embeddings.size
    return (image_embeddings.shape[-2], image_embeddings.shape[-1])


def _collapse_broadcast(dense: torch.Tensor) -> torch.Tensor:
    """A batch that is an expanded view of one tensor is handed on as batch 1."""
    if dense.shape[0] > 1 and dense.stride(0) == 0:
        return dense[:1]
    return dense
