"""Run an exported browser decoder with onnxruntime, the way the web page runs it.

`OnnxDecoder.run` takes one image's embedding and the annotator's prompts in original-image
pixels and builds the contract's inputs (`build_prompt` holds the point convention: a
padding point without a box, the box as two labelled corners otherwise), so the scripted
annotators click through the same graph as people do in the browser.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from stages.assisted.contract import (
    BACKGROUND_LABEL,
    BOX_BOTTOM_RIGHT_LABEL,
    BOX_TOP_LEFT_LABEL,
    FOREGROUND_LABEL,
    INPUT_NAMES,
    META_EMBEDDING_SIZE,
    MULTIMASK_TOKENS,
    OUTPUT_NAMES,
    PADDING_LABEL,
    SINGLE_MASK_TOKEN,
)


class DecoderInputError(ValueError):
    """A prompt or embedding the decoder cannot use."""


@dataclass(frozen=True)
class DecoderOutput:
    """One decode. masks: 4 x H x W logits at the original size; iou: 4 predicted IoUs;
    low_res: 4 x 4h x 4w logits (feed one back as the next mask_input). Index 0 is the
    single-mask token, 1..3 the multimask tokens."""

    masks: np.ndarray
    iou: np.ndarray
    low_res: np.ndarray

    def best(self, *, multimask: bool) -> int:
        """The token to show: the highest predicted IoU among 1..3, or 0 (single mask)."""
        if not multimask:
            return SINGLE_MASK_TOKEN
        tokens = list(MULTIMASK_TOKENS)
        return tokens[int(np.argmax(self.iou[tokens]))]


def build_prompt(
    points: np.ndarray | None, labels: np.ndarray | None, box: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """Points N x 2 (XY) with labels N (1 foreground, 0 background) and an optional box
    (XYXY) -> the contract's 1 x M x 2 coordinates and 1 x M labels, float32: the points,
    then the box's corners labelled 2 and 3, or a padding point (0, 0) labelled -1 when
    there is no box."""
    coords = _check_points(points, labels)
    point_labels = np.zeros(0) if labels is None else np.asarray(labels, dtype=np.float64)
    if box is not None:
        corners = _check_box(box)
        coords = np.concatenate([coords, corners])
        point_labels = np.concatenate([point_labels, [BOX_TOP_LEFT_LABEL, BOX_BOTTOM_RIGHT_LABEL]])
    else:
        if len(coords) == 0:
            raise DecoderInputError("give at least one point or a box")
        coords = np.concatenate([coords, np.zeros((1, 2))])
        point_labels = np.concatenate([point_labels, [PADDING_LABEL]])
    return coords[None].astype(np.float32), point_labels[None].astype(np.float32)


def _check_points(points: np.ndarray | None, labels: np.ndarray | None) -> np.ndarray:
    if points is None:
        if labels is not None:
            raise DecoderInputError("labels given without points")
        return np.zeros((0, 2))
    coords = np.asarray(points, dtype=np.float64)
    if coords.ndim != 2 or coords.shape[1] != 2:
        raise DecoderInputError(f"points must be N x 2 (XY), got shape {coords.shape}")
    if labels is None:
        raise DecoderInputError("points need labels (1 foreground, 0 background)")
    values = np.asarray(labels)
    if values.shape != (len(coords),):
        raise DecoderInputError(f"labels must have shape ({len(coords)},), got {values.shape}")
    if not np.isin(values, (BACKGROUND_LABEL, FOREGROUND_LABEL)).all():
        raise DecoderInputError(f"labels must be 0 or 1, got {np.unique(values).tolist()}")
    if not np.isfinite(coords).all():
        raise DecoderInputError("points must be finite")
    return coords


def _check_box(box: np.ndarray) -> np.ndarray:
    flat = np.asarray(box, dtype=np.float64).reshape(-1)
    if flat.shape != (4,) or not np.isfinite(flat).all():
        raise DecoderInputError(f"box must be 4 finite numbers XYXY, got {np.asarray(box)}")
    if flat[2] < flat[0] or flat[3] < flat[1]:
        raise DecoderInputError(f"box must have x0 <= x1 and y0 <= y1, got {flat.tolist()}")
    return flat.reshape(2, 2)


class OnnxDecoder:
    """An onnxruntime session (CPU) on an exported decoder file or its bytes."""

    def __init__(self, path_or_bytes: str | Path | bytes, *, threads: int = 1) -> None:
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        model = path_or_bytes if isinstance(path_or_bytes, bytes) else str(path_or_bytes)
        self.session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        self.metadata: dict[str, str] = dict(self.session.get_modelmeta().custom_metadata_map)
        shapes = {i.name: i.shape for i in self.session.get_inputs()}
        if tuple(shapes) != INPUT_NAMES:
            raise DecoderInputError(f"not a decoder of this contract: inputs {list(shapes)}")
        self.embedding_shape = _fixed(shapes["image_embeddings"])
        self.mask_input_shape = _fixed(shapes["mask_input"])
        grid = self.metadata.get(META_EMBEDDING_SIZE)
        if grid and grid != f"{self.embedding_shape[2]}x{self.embedding_shape[3]}":
            raise DecoderInputError(f"metadata embedding_size {grid} differs from the graph")

    def run(
        self,
        embedding: np.ndarray,
        *,
        points: np.ndarray | None = None,
        labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        orig_size: tuple[int, int],
    ) -> DecoderOutput:
        """Decode one prompt. embedding: C x h x w (float16 as stored, or float32);
        points N x 2 XY and box XYXY in pixels of an image of orig_size (H, W); labels N
        (1 foreground, 0 background); mask_input 4h x 4w low-res logits of an earlier
        decode (None: no mask prompt)."""
        coords, point_labels = build_prompt(points, labels, box)
        feeds = {
            "image_embeddings": self._embedding(embedding),
            "point_coords": coords,
            "point_labels": point_labels,
            **self._mask_prompt(mask_input),
            "orig_im_size": _orig_size(orig_size),
        }
        masks, iou, low_res = self.session.run(list(OUTPUT_NAMES), feeds)
        return DecoderOutput(masks=masks[0], iou=iou[0], low_res=low_res[0])

    def _embedding(self, embedding: np.ndarray) -> np.ndarray:
        array = np.asarray(embedding)
        if array.shape != self.embedding_shape[1:]:
            raise DecoderInputError(
                f"embedding must have shape {self.embedding_shape[1:]}, got {array.shape}"
            )
        return array.astype(np.float32)[None]

    def _mask_prompt(self, mask_input: np.ndarray | None) -> dict[str, np.ndarray]:
        if mask_input is None:
            return {
                "mask_input": np.zeros(self.mask_input_shape, np.float32),
                "has_mask_input": np.zeros(1, np.float32),
            }
        mask = np.asarray(mask_input, dtype=np.float32)
        if mask.shape != self.mask_input_shape[2:]:
            raise DecoderInputError(
                f"mask_input must have shape {self.mask_input_shape[2:]}, got {mask.shape}"
            )
        return {"mask_input": mask[None, None], "has_mask_input": np.ones(1, np.float32)}


def _fixed(shape: list) -> tuple[int, ...]:
    if not all(isinstance(d, int) for d in shape):
        raise DecoderInputError(f"decoder input without a fixed shape: {shape}")
    return tuple(int(d) for d in shape)


def _orig_size(size: tuple[int, int]) -> np.ndarray:
    height, width = (int(v) for v in size)
    if height < 1 or width < 1:
        raise DecoderInputError(f"orig_size must be positive (H, W), got {tuple(size)}")
    return np.array([height, width], dtype=np.float32)
