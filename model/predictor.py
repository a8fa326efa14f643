"""One image, many prompts: `SamPredictor` caches the image embedding and decodes prompts.

Numpy in and out in original-image pixels (`predict`), or batched torch tensors in
model-input pixels (`predict_torch`). The predictor owns inference mode and autocast.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import numpy as np
import torch

from model.sam import Sam
from model.transformer import SharedImage
from model.transforms import resize_image, scale_boxes, scale_coords


class PredictorInputError(ValueError):
    """A prompt or image the predictor cannot use."""


def check_image(image: object) -> np.ndarray:
    if not isinstance(image, np.ndarray):
        raise PredictorInputError(f"image must be a numpy array, got {type(image).__name__}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise PredictorInputError(f"image must be H x W x 3 (RGB), got shape {image.shape}")
    if image.dtype != np.uint8:
        raise PredictorInputError(f"image must be uint8, got {image.dtype}")
    if min(image.shape[:2]) < 1:
        raise PredictorInputError(f"image is empty: shape {image.shape}")
    return image


def _check_points(coords: np.ndarray, labels: np.ndarray | None, size: tuple[int, int]) -> None:
    if labels is None:
        raise PredictorInputError("point_labels must be given with point_coords")
    if coords.ndim != 2 or coords.shape[1] != 2:
        raise PredictorInputError(f"point_coords must be N x 2 (XY), got shape {coords.shape}")
    if labels.shape != (coords.shape[0],):
        raise PredictorInputError(
            f"point_labels must have shape ({coords.shape[0]},), got {labels.shape}"
        )
    if not np.isin(labels, (0, 1)).all():
        raise PredictorInputError(
            f"point_labels must be 0 (background) or 1 (foreground), got {np.unique(labels)}"
        )
    _check_inside(coords, size, "point_coords")


def _check_inside(coords: np.ndarray, size: tuple[int, int], what: str) -> None:
    height, width = size
    if not np.isfinite(coords).all():
        raise PredictorInputError(f"{what} must be finite")
    xs, ys = coords[..., 0], coords[..., 1]
    if xs.min() < 0 or ys.min() < 0 or xs.max() > width or ys.max() > height:
        raise PredictorInputError(f"{what} lie outside the {width}x{height} image")


def _check_box(box: np.ndarray, size: tuple[int, int]) -> None:
    if box.shape not in ((4,), (1, 4)):
        raise PredictorInputError(f"box must be 4 numbers XYXY, got shape {box.shape}")
    flat = box.reshape(4)
    _check_inside(flat.reshape(2, 2), size, "box")
    if flat[2] < flat[0] or flat[3] < flat[1]:
        raise PredictorInputError(
            f"box must be XYXY with x0 <= x1 and y0 <= y1, got {flat.tolist()}"
        )


# Prompts decoded together on a CPU. Each prompt carries ~40 MB of full-width activations
# through the decoder; groups of a few stay in cache, where 64 at once run 2.3x slower per
# prompt (docs/benchmarks.md). GPUs take the whole batch.
CPU_PROMPT_GROUP = 4


class SamPredictor:
    def __init__(
        self,
        sam: Sam,
        *,
        autocast_dtype: torch.dtype | None = None,
        prompt_group: int | None = None,
    ) -> None:
        """autocast_dtype: e.g. torch.bfloat16 for the fast mode on CUDA; None is fp32.
        prompt_group: prompts run through the decoder together (default: all of them
        on a GPU, `CPU_PROMPT_GROUP` on a CPU); results do not depend on it."""
        self.model = sam
        self.autocast_dtype = autocast_dtype
        self.prompt_group = prompt_group
        self.reset_image()

    @property
    def device(self) -> torch.device:
        return self.model.device

    def reset_image(self) -> None:
        self.features: torch.Tensor | None = None
        self._shared: SharedImage | None = None
        self.original_size: tuple[int, int] | None = None
        self.input_size: tuple[int, int] | None = None
        self.is_image_set = False

    @contextlib.contextmanager
    def _inference(self) -> Iterator[None]:
        device_type = self.device.type
        enabled = self.autocast_dtype is not None
        with (
            torch.inference_mode(),
            torch.autocast(device_type, dtype=self.autocast_dtype, enabled=enabled),
        ):
            yield

    def set_image(self, image: np.ndarray, image_format: str = "RGB") -> None:
        """Embed an H x W x 3 uint8 image (RGB, or BGR with image_format="BGR")."""
        image = check_image(image)
        if image_format not in ("RGB", "BGR"):
            raise PredictorInputError(f"image_format must be 'RGB' or 'BGR', got {image_format!r}")
        if image_format != self.model.image_format:
            image = image[..., ::-1]
        resized = resize_image(np.ascontiguousarray(image), self.model.img_size)
        tensor = torch.as_tensor(resized, device=self.device).permute(2, 0, 1).unsqueeze(0)
        self.set_torch_image(tensor, (image.shape[0], image.shape[1]))

    def set_torch_image(
        self, transformed_image: torch.Tensor, original_image_size: tuple[int, int]
    ) -> None:
        """1 x 3 x h x w image already resized (long side == model input size)."""
        if transformed_image.ndim != 4 or transformed_image.shape[:2] != (1, 3):
            raise PredictorInputError(
                f"expected a 1 x 3 x h x w image, got {tuple(transformed_image.shape)}"
            )
        if max(transformed_image.shape[2:]) != self.model.img_size:
            raise PredictorInputError(f"the image's long side must be {self.model.img_size}")
        self.reset_image()
        self.original_size = (int(original_image_size[0]), int(original_image_size[1]))
        self.input_size = (int(transformed_image.shape[2]), int(transformed_image.shape[3]))
        with self._inference():
            features = self.model.image_encoder(self.model.preprocess(transformed_image))
        self.features = features.float()
        self.is_image_set = True

    def get_image_embedding(self) -> torch.Tensor:
        """1 x 256 x 64 x 64 embedding of the current image."""
        if self.features is None:
            raise RuntimeError("call set_image before get_image_embedding")
        return self.features

    def predict(
        self,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Masks M x H x W (bool, or logits), IoU predictions M, low-res logits M x 256 x 256.

        point_coords N x 2 XY and box XYXY are in original-image pixels; point_labels N
        (1 foreground, 0 background); mask_input 1 x 256 x 256 logits of an earlier call.
        """
        if self.original_size is None:
            raise RuntimeError("call set_image before predict")
        size, long_side = self.original_size, self.model.img_size
        coords_t = labels_t = box_t = mask_t = None
        if point_coords is not None:
            coords = np.asarray(point_coords, dtype=np.float64)
            labels = None if point_labels is None else np.asarray(point_labels)
            _check_points(coords, labels, size)
            coords_t = self._tensor(scale_coords(coords, size, long_side))[None]
            labels_t = torch.as_tensor(labels, dtype=torch.int, device=self.device)[None]
        if box is not None:
            box_np = np.asarray(box, dtype=np.float64)
            _check_box(box_np, size)
            box_t = self._tensor(scale_boxes(box_np, size, long_side))
        if mask_input is not None:
            mask_np = np.asarray(mask_input, dtype=np.float32)
            expected = (1, *self.model.prompt_encoder.mask_input_size)
            if mask_np.shape != expected:
                raise PredictorInputError(
                    f"mask_input must have shape {expected}, got {mask_np.shape}"
                )
            mask_t = self._tensor(mask_np)[None]
        masks, iou, low_res = self.predict_torch(
            coords_t, labels_t, box_t, mask_t, multimask_output, return_logits=return_logits
        )
        return (
            masks[0].cpu().numpy(),
            iou[0].float().cpu().numpy(),
            low_res[0].float().cpu().numpy(),
        )

    def _tensor(self, array: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(array, dtype=torch.float, device=self.device)

    def predict_torch(
        self,
        point_coords: torch.Tensor | None,
        point_labels: torch.Tensor | None,
        boxes: torch.Tensor | None = None,
        mask_input: torch.Tensor | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Many prompts at once, coordinates already in model-input pixels.

        point_coords B x N x 2, point_labels B x N, boxes B x 4, mask_input B x 1 x 256 x 256.
        Returns masks B x M x H x W, IoU B x M, low-res logits B x M x 256 x 256.
        """
        low_res, iou = self.decode_low_res(
            point_coords, point_labels, boxes, mask_input, multimask_output
        )
        masks = self.upscale(low_res)
        if not return_logits:
            masks = masks > self.model.mask_threshold
        return masks, iou, low_res

    def decode_low_res(
        self,
        point_coords: torch.Tensor | None,
        point_labels: torch.Tensor | None,
        boxes: torch.Tensor | None = None,
        mask_input: torch.Tensor | None = None,
        multimask_output: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Low-res logits B x M x 256 x 256 (fp32) and IoU predictions B x M, no upsampling."""
        prompts = [point_coords, point_labels, boxes, mask_input]
        outputs = []
        with self._inference():
            for part in self._prompt_groups(prompts):
                low_res, iou = self.model.decode(
                    self._features(),
                    point_coords=part[0],
                    point_labels=part[1],
                    boxes=part[2],
                    mask_input=part[3],
                    multimask_output=multimask_output,
                    shared=self._shared_image() if part[3] is None else None,
                )
                outputs.append((low_res.float(), iou.float()))
        if len(outputs) == 1:
            return outputs[0]
        return torch.cat([o[0] for o in outputs]), torch.cat([o[1] for o in outputs])

    def decode_kept(
        self,
        point_coords: torch.Tensor,
        point_labels: torch.Tensor,
        keep: Callable[[torch.Tensor], torch.Tensor],
        multimask_output: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Only the masks that `keep` (B x M IoU predictions -> B x M bool) selects, as
        low-res logits K x rows x cols (fp32) cut to the part that `upscale` reads, their
        IoU predictions K and their index in the flattened B x M (see `Sam.decode_kept`)."""
        outputs, offset = [], 0
        per_prompt = self.model.mask_decoder.num_multimask_outputs if multimask_output else 1
        with self._inference():
            for part in self._prompt_groups([point_coords, point_labels]):
                assert part[0] is not None
                low_res, iou, index = self.model.decode_kept(
                    self._features(),
                    keep,
                    point_coords=part[0],
                    point_labels=part[1],
                    multimask_output=multimask_output,
                    input_size=self.input_size,
                    shared=self._shared_image(),
                )
                outputs.append((low_res.float(), iou.float(), index + offset))
                offset += len(part[0]) * per_prompt
        return tuple(torch.cat([o[i] for o in outputs]) for i in range(3))  # type: ignore[return-value]

    def _shared_image(self) -> SharedImage:
        """The decoder's per-image work, done on the first prompt of each image."""
        if self._shared is None:
            self._shared = self.model.share_image(self._features())
        return self._shared

    def _features(self) -> torch.Tensor:
        if self.features is None:
            raise RuntimeError("call set_image before predicting")
        return self.features

    def _prompt_groups(
        self, prompts: list[torch.Tensor | None]
    ) -> Iterator[list[torch.Tensor | None]]:
        """The prompts in groups of `prompt_group` (inputs with one row are shared)."""
        self._features()
        batch = max((len(p) for p in prompts if p is not None), default=1)
        group = self.prompt_group or (batch if self.device.type == "cuda" else CPU_PROMPT_GROUP)
        for start in range(0, batch, group):
            yield [p if p is None or len(p) < batch else p[start : start + group] for p in prompts]

    def upscale(self, low_res: torch.Tensor) -> torch.Tensor:
        """B x M x 256 x 256 logits -> B x M x H x W logits in original-image pixels."""
        if self.input_size is None or self.original_size is None:
            raise RuntimeError("call set_image first")
        with torch.inference_mode():
            return self.model.postprocess_masks(low_res, self.input_size, self.original_size)
