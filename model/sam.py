"""`Sam` composes an image encoder, a prompt encoder and a mask decoder it is given."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F

from model.image_encoder import ImageEncoderViT
from model.mask_decoder import MaskDecoder
from model.prompt_encoder import PromptEncoder
from model.transformer import SharedImage

PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)


class Sam(nn.Module):
    mask_threshold: float = 0.0
    image_format: str = "RGB"
    pixel_mean: torch.Tensor
    pixel_std: torch.Tensor

    def __init__(
        self,
        *,
        image_encoder: ImageEncoderViT,
        prompt_encoder: PromptEncoder,
        mask_decoder: MaskDecoder,
        pixel_mean: tuple[float, float, float] = PIXEL_MEAN,
        pixel_std: tuple[float, float, float] = PIXEL_STD,
    ) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    @property
    def img_size(self) -> int:
        return self.image_encoder.img_size

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """B x 3 x h x w RGB (0..255, long side already resized) -> normalized B x 3 x S x S,
        zero-padded at the bottom and right."""
        x = (x - self.pixel_mean) / self.pixel_std
        pad_h = self.img_size - x.shape[-2]
        pad_w = self.img_size - x.shape[-1]
        return F.pad(x, (0, pad_w, 0, pad_h))

    def postprocess_masks(
        self,
        masks: torch.Tensor,
        input_size: tuple[int, ...],
        original_size: tuple[int, ...],
    ) -> torch.Tensor:
        """B x M x h x w low-res logits -> B x M x H x W logits in original-image pixels:
        upsample to the padded model input, drop the padding, resize to the original.

        Only the low-res rows and columns that reach the unpadded input are upsampled (the
        same values as upsampling all and cropping), so `masks` may also be just that
        top-left part (`valid_low_res_size`)."""
        scale = self.img_size // self.prompt_encoder.mask_input_size[0]
        rows, cols = self.valid_low_res_size(input_size)
        if masks.shape[-2] < rows or masks.shape[-1] < cols:
            raise ValueError(
                f"low-res masks {tuple(masks.shape[-2:])} do not cover the input {input_size}"
            )
        masks = F.interpolate(
            masks[..., :rows, :cols],
            scale_factor=float(scale),
            mode="bilinear",
            align_corners=False,
            recompute_scale_factor=False,
        )
        masks = masks[..., : input_size[0], : input_size[1]]
        return F.interpolate(masks, tuple(original_size), mode="bilinear", align_corners=False)

    def valid_low_res_size(self, input_size: tuple[int, ...]) -> tuple[int, int]:
        """Low-res rows and columns that bilinear upsampling reads for the unpadded
        input_size (h, w) of the model input: input pixel y samples low-res rows around
        (y + 0.5) / scale - 0.5, at most ceil(h / scale)."""
        low_h, low_w = self.prompt_encoder.mask_input_size
        scale = self.img_size // low_h
        rows = min(low_h, -(-int(input_size[0]) // scale) + 1)
        cols = min(low_w, -(-int(input_size[1]) // scale) + 1)
        return rows, cols

    def share_image(self, image_embeddings: torch.Tensor) -> SharedImage:
        """The decoder's per-image work for one 1 x C x h x w embedding, for `decode` and
        `decode_kept` calls without a mask prompt (`shared=`)."""
        _, dense = self.prompt_encoder(points=None, boxes=None, masks=None)
        pe = self.prompt_encoder.get_dense_pe()
        return self.mask_decoder.share_image(image_embeddings, pe, dense)

    def decode(
        self,
        image_embeddings: torch.Tensor,
        *,
        point_coords: torch.Tensor | None = None,
        point_labels: torch.Tensor | None = None,
        boxes: torch.Tensor | None = None,
        mask_input: torch.Tensor | None = None,
        multimask_output: bool = True,
        shared: SharedImage | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode B prompt sets against 1 (shared) or B image embeddings.

        Coordinates are XY in model-input pixels: point_coords B x N x 2, point_labels
        B x N, boxes B x 4 XYXY, mask_input B x 1 x 256 x 256 logits. shared: the
        `share_image` of a single image embedding, used when there is no mask_input.
        Returns low-res logits B x M x 256 x 256 and IoU predictions B x M.
        """
        sparse, dense = self._embed_prompts(point_coords, point_labels, boxes, mask_input)
        return self.mask_decoder(
            image_embeddings=_image_side(image_embeddings, shared, mask_input),
            image_pe=self.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask_output,
        )

    def decode_kept(
        self,
        image_embeddings: torch.Tensor,
        keep: Callable[[torch.Tensor], torch.Tensor],
        *,
        point_coords: torch.Tensor | None = None,
        point_labels: torch.Tensor | None = None,
        boxes: torch.Tensor | None = None,
        mask_input: torch.Tensor | None = None,
        multimask_output: bool = True,
        input_size: tuple[int, int] | None = None,
        shared: SharedImage | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`decode` that upscales only the masks `keep` selects from their predicted IoUs.

        keep: B x M IoU predictions -> B x M bool. The IoU head reads the transformer's
        output tokens only, so prompts whose masks all fail skip the upscaling network
        (the other prompts' masks share it, and only the kept ones are returned).
        input_size: the unpadded model input (h, w); when given, only the low-res rows and
        columns that `postprocess_masks` reads are computed (the rest lies in the padding).
        shared: as in `decode`.
        Returns low-res logits K x rows x cols, IoU predictions K and the index of each
        kept mask in the flattened B x M.
        """
        sparse, dense = self._embed_prompts(point_coords, point_labels, boxes, mask_input)
        decoder = self.mask_decoder
        image_side = _image_side(image_embeddings, shared, mask_input)
        hs, image_tokens = decoder.attend(
            image_side, self.prompt_encoder.get_dense_pe(), sparse, dense
        )
        selected = range(1, decoder.num_mask_tokens) if multimask_output else range(0, 1)
        iou = decoder.iou_from(hs, selected)
        kept = keep(iou)
        prompts = kept.any(dim=1).nonzero().flatten()
        if len(prompts) < len(kept):
            hs, image_tokens = hs[prompts], image_tokens[prompts]
        size = (image_embeddings.shape[-2], image_embeddings.shape[-1])
        region = None
        if input_size is not None:
            rows, cols = self.valid_low_res_size(input_size)
            factor = self.prompt_encoder.mask_input_size[0] // size[0]
            region = (-(-rows // factor), -(-cols // factor))
        masks = decoder.masks_from(hs, image_tokens, size, selected, region=region)
        flat = kept[prompts].flatten()
        index = kept.flatten().nonzero().flatten()
        return masks.flatten(0, 1)[flat], iou.flatten()[index], index

    def _embed_prompts(
        self,
        point_coords: torch.Tensor | None,
        point_labels: torch.Tensor | None,
        boxes: torch.Tensor | None,
        mask_input: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        points = None
        if point_coords is not None:
            if point_labels is None:
                raise ValueError("point_labels must be given with point_coords")
            points = (point_coords, point_labels)
        return self.prompt_encoder(points=points, boxes=boxes, masks=mask_input)

    def forward(
        self,
        images: torch.Tensor,
        *,
        point_coords: torch.Tensor | None = None,
        point_labels: torch.Tensor | None = None,
        boxes: torch.Tensor | None = None,
        mask_input: torch.Tensor | None = None,
        multimask_output: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One prompt set per preprocessed image (B x 3 x S x S); see `decode`."""
        return self.decode(
            self.image_encoder(images),
            point_coords=point_coords,
            point_labels=point_labels,
            boxes=boxes,
            mask_input=mask_input,
            multimask_output=multimask_output,
        )


def _image_side(
    image_embeddings: torch.Tensor, shared: SharedImage | None, mask_input: torch.Tensor | None
) -> torch.Tensor | SharedImage:
    """The shared per-image work where it applies (it assumes the no-mask dense embedding)."""
    if shared is None or mask_input is not None:
        return image_embeddings
    if image_embeddings.shape[0] != 1 or shared.size != tuple(image_embeddings.shape[-2:]):
        raise ValueError("shared= belongs to a single image embedding of the same size")
    return shared
