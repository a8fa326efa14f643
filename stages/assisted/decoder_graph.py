"""The browser decoder as one module: prompt encoder + mask decoder + upsampling to the
original image size, with the ONNX contract's inputs and outputs (`contract`).

Everything that depends on input values is a tensor operation, so a trace records it for
all values: the model-input size follows from `orig_im_size` in integer arithmetic, the
point labels select embeddings by comparison and addition, the mask prompt is chosen by
`has_mask_input` arithmetically, and the crops and resizes take tensor sizes. The module
uses the model's own prompt-encoder and decoder weights; with the same prompts it gives
`Sam.decode` (all four mask tokens) followed by `Sam.postprocess_masks`.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from model.prompt_encoder import (
    BACKGROUND,
    BOX_BOTTOM_RIGHT,
    BOX_TOP_LEFT,
    FOREGROUND,
    PromptEncoder,
)
from model.sam import Sam
from stages.assisted.contract import (
    BACKGROUND_LABEL,
    BOX_BOTTOM_RIGHT_LABEL,
    BOX_TOP_LEFT_LABEL,
    FOREGROUND_LABEL,
    PADDING_LABEL,
)


class DecoderGraph(nn.Module):
    """`forward` implements the contract; it holds the prompt encoder and mask decoder of
    `sam` (shared, not copied) and the positional encoding of the embedding grid.

    Under `torch.no_grad()` the decoder's attention takes its inference paths, chosen by
    the number of tokens (Python branches on shapes, fixed in a trace); they compute the
    same values for any number of points, so a graph traced with a few points is exact
    for all (tests/stages/test_onnx_export.py checks 1..5 and 12)."""

    image_pe: torch.Tensor

    def __init__(self, sam: Sam) -> None:
        super().__init__()
        self.prompt_encoder = sam.prompt_encoder
        self.mask_decoder = sam.mask_decoder
        self.img_size = sam.img_size
        with torch.no_grad():
            pe = sam.prompt_encoder.pe_layer(sam.prompt_encoder.image_embedding_size)
        self.register_buffer("image_pe", pe.unsqueeze(0).clone(), persistent=False)

    def forward(
        self,
        image_embeddings: torch.Tensor,
        point_coords: torch.Tensor,
        point_labels: torch.Tensor,
        mask_input: torch.Tensor,
        has_mask_input: torch.Tensor,
        orig_im_size: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """See `stages.assisted.contract`; returns (masks, iou_predictions, low_res_masks)."""
        original = orig_im_size.to(torch.int64)
        input_size = self.input_size(original)
        sparse = self.embed_points(
            self.to_input_pixels(point_coords, original, input_size), point_labels
        )
        dense = self.embed_mask(mask_input, has_mask_input)
        low_res, iou = self.mask_decoder.predict_masks(
            image_embeddings, self.image_pe, sparse, dense
        )
        masks = self.upsample(low_res, input_size, original)
        return masks, iou, low_res

    def input_size(self, original: torch.Tensor) -> torch.Tensor:
        """(H, W) -> the unpadded model input (h, w), int64: the long side scaled to
        img_size and each side rounded half up, as `model.transforms.longest_side_shape`.
        round_half_up(side * S / L) = floor((2 * side * S + L) / (2 * L)), in float64: the
        operands are exact integers and the quotient's rounding cannot cross an integer."""
        sides = original.to(torch.float64)
        long_side = sides.max()
        quotient = (2.0 * self.img_size * sides + long_side) / (2.0 * long_side)
        return torch.floor(quotient).to(torch.int64)

    def to_input_pixels(
        self, coords: torch.Tensor, original: torch.Tensor, input_size: torch.Tensor
    ) -> torch.Tensor:
        """1 x N x 2 XY in original pixels -> XY in model-input pixels."""
        sizes_xy = original.flip(0).to(coords.dtype)
        inputs_xy = input_size.flip(0).to(coords.dtype)
        return coords * inputs_xy / sizes_xy

    def embed_points(self, coords: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """1 x N x 2 XY (model-input pixels), 1 x N labels -> 1 x N x C sparse embeddings.

        As the prompt encoder: the random-Fourier encoding of the pixel centre, replaced by
        `not_a_point_embed` for padding points, plus the learned embedding of the label
        (background, foreground, box top-left or bottom-right corner)."""
        encoder = self.prompt_encoder
        encoded = encoder.pe_layer.forward_with_coords(coords + 0.5, encoder.input_image_size)
        labels = labels.unsqueeze(-1)
        encoded = torch.where(labels == PADDING_LABEL, encoder.not_a_point_embed.weight, encoded)
        for label, row in _LABEL_ROWS:
            encoded = encoded + (labels == label).to(encoded.dtype) * _row(encoder, row)
        return encoded

    def embed_mask(self, mask_input: torch.Tensor, has_mask_input: torch.Tensor) -> torch.Tensor:
        """The dense embedding: the downscaled mask prompt where has_mask_input is 1, the
        learned no-mask embedding where it is 0 (exactly one of them, for 0/1 flags)."""
        encoder = self.prompt_encoder
        from_mask = encoder.mask_downscaling(mask_input)
        no_mask = encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)
        flag = has_mask_input.reshape(1, 1, 1, 1)
        return flag * from_mask + (1.0 - flag) * no_mask

    def upsample(
        self, low_res: torch.Tensor, input_size: torch.Tensor, original: torch.Tensor
    ) -> torch.Tensor:
        """1 x M x 4h x 4w low-res logits -> 1 x M x H x W, as `Sam.postprocess_masks`: the
        low-res rows and columns that reach the unpadded input, x4 bilinear, the crop to the
        input, bilinear to the original size."""
        low_h, low_w = self.prompt_encoder.mask_input_size
        scale = self.img_size // low_h
        reached = torch.ceil(input_size.to(torch.float64) / scale).to(torch.int64) + 1
        rows = torch.clamp(reached[0], max=low_h)
        cols = torch.clamp(reached[1], max=low_w)
        masks = F.interpolate(
            low_res[..., :rows, :cols],
            scale_factor=float(scale),
            mode="bilinear",
            align_corners=False,
            recompute_scale_factor=False,
        )
        masks = masks[..., : input_size[0], : input_size[1]]
        # Tensor sizes, so that the trace records the resize for every orig_im_size.
        size = (original[0], original[1])
        return F.interpolate(masks, size=size, mode="bilinear", align_corners=False)  # type: ignore[arg-type]


# Point label -> row of `PromptEncoder.point_embeddings`.
_LABEL_ROWS = (
    (BACKGROUND_LABEL, BACKGROUND),
    (FOREGROUND_LABEL, FOREGROUND),
    (BOX_TOP_LEFT_LABEL, BOX_TOP_LEFT),
    (BOX_BOTTOM_RIGHT_LABEL, BOX_BOTTOM_RIGHT),
)


def _row(encoder: PromptEncoder, row: int) -> torch.Tensor:
    embedding = encoder.point_embeddings[row]
    assert isinstance(embedding, nn.Embedding)
    return embedding.weight
