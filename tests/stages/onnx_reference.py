"""The torch side of the ONNX decoder tests: `Sam.decode` + `Sam.postprocess_masks` on the
same prompts, and the comparison with a stated tolerance."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from model import Sam, SamPredictor
from model.transforms import longest_side_shape, scale_boxes, scale_coords
from stages.assisted.onnx_decoder import DecoderOutput

# The stated tolerance: ONNX and torch logits (full-size and low-res) differ by at most
# this much. Measured: 3e-5 for the bundled model, 3e-4 for the sharpened random model
# (logits 30x larger); both come from float rounding in the bilinear resizes and in the
# coordinate scaling. Predicted IoUs agree within IOU_ATOL.
LOGIT_ATOL = 1e-3
IOU_ATOL = 1e-4


@dataclass(frozen=True)
class Prompt:
    """A prompt in original-image pixels, as an annotator gives it."""

    points: np.ndarray | None = None
    labels: np.ndarray | None = None
    box: np.ndarray | None = None
    mask_input: np.ndarray | None = None


def fp16_embedding(sam: Sam, rgb: np.ndarray) -> np.ndarray:
    """The image's C x h x w embedding rounded to float16, as campaigns store it."""
    predictor = SamPredictor(sam)
    predictor.set_image(rgb)
    return predictor.get_image_embedding()[0].to(torch.float16).numpy()


def resized(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The image stretched to (H, W), for more image shapes from the bundled photos."""
    from PIL import Image

    return np.array(Image.fromarray(rgb).resize((size[1], size[0]), Image.Resampling.BILINEAR))


def torch_reference(
    sam: Sam,
    embedding: np.ndarray,
    prompt: Prompt,
    orig_size: tuple[int, int],
    *,
    multimask: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Masks M x H x W logits, IoU M and low-res M x 4h x 4w from our torch model."""
    coords = labels = boxes = mask = None
    if prompt.points is not None:
        scaled = scale_coords(prompt.points, orig_size, sam.img_size)
        coords = torch.tensor(scaled, dtype=torch.float32)[None]
        labels = torch.as_tensor(prompt.labels, dtype=torch.int)[None]
    if prompt.box is not None:
        boxes = torch.tensor(scale_boxes(prompt.box, orig_size, sam.img_size), dtype=torch.float32)
    if prompt.mask_input is not None:
        mask = torch.from_numpy(prompt.mask_input.astype(np.float32))[None, None]
    features = torch.from_numpy(embedding.astype(np.float32))[None]
    with torch.inference_mode():
        low_res, iou = sam.decode(
            features,
            point_coords=coords,
            point_labels=labels,
            boxes=boxes,
            mask_input=mask,
            multimask_output=multimask,
        )
        input_size = longest_side_shape(*orig_size, sam.img_size)
        masks = sam.postprocess_masks(low_res, input_size, orig_size)
    return masks[0].numpy(), iou[0].numpy(), low_res[0].numpy()


def assert_matches_torch(
    sam: Sam,
    output: DecoderOutput,
    embedding: np.ndarray,
    prompt: Prompt,
    orig_size: tuple[int, int],
) -> None:
    """Token 0 against the single-mask decode, tokens 1..3 against the multimask decode:
    logits within LOGIT_ATOL, and the thresholded masks equal wherever the torch logit is
    farther than that from 0."""
    assert output.masks.shape == (4, *orig_size)
    for multimask, tokens in ((False, [0]), (True, [1, 2, 3])):
        masks, iou, low_res = torch_reference(
            sam, embedding, prompt, orig_size, multimask=multimask
        )
        np.testing.assert_allclose(output.masks[tokens], masks, rtol=0, atol=LOGIT_ATOL)
        np.testing.assert_allclose(output.low_res[tokens], low_res, rtol=0, atol=LOGIT_ATOL)
        np.testing.assert_allclose(output.iou[tokens], iou, rtol=0, atol=IOU_ATOL)
        flipped = (output.masks[tokens] > 0) != (masks > 0)
        assert not (flipped & (np.abs(masks) > LOGIT_ATOL)).any()


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0
