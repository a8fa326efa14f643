"""The automatic mask generator (stage 3): generate -> per crop -> per point batch.

Differences from a plain reading of the algorithm, all exact: the predicted-IoU filter runs
on the decoder's IoU head before any upscaling, so points whose masks all fail skip the
decoder's upscaling network, and only the low-res part that reaches the unpadded image is
computed and upsampled (`SamPredictor.decode_kept`); survivors are upsampled in chunks whose
memory is bounded (so very large images never hold all candidates at full resolution);
stability, boxes and RLE are computed for a whole chunk at once.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import torch
from PIL import Image

from model import Sam, SamPredictor
from model.transforms import scale_coords
from stages.automatic.columns import MaskColumns
from stages.automatic.config import GeneratorConfig
from stages.automatic.filters import (
    count_true,
    keep_by_area_fraction,
    keep_by_predicted_iou,
    keep_by_stability,
    nms,
    stability_score,
)
from stages.automatic.geometry import (
    box_xyxy_to_xywh,
    build_all_layer_point_grids,
    generate_crop_boxes,
    is_box_near_crop_edge,
    masks_to_boxes_xyxy,
    uncrop_boxes_xyxy,
    uncrop_masks,
    uncrop_points,
)
from stages.automatic.images import to_rgb_uint8
from stages.automatic.postprocess import clean_mask
from stages.automatic.rle import coco_decode, coco_encode, masks_to_rles, rle_area, rle_to_mask

MASKS_PER_POINT = 3

# Full-resolution work per chunk of candidates. On a CPU, temporaries above ~32 MB are
# fresh pages from the OS on every allocation (glibc maps them), and their page faults
# doubled the post-processing time (docs/benchmarks.md); a GPU's caching allocator has no
# such cost and prefers fewer, larger chunks.
CPU_CHUNK_BYTES = 32 << 20
CUDA_CHUNK_BYTES = 256 << 20


class AutomaticMaskGenerator:
    def __init__(
        self,
        model: Sam | SamPredictor,
        config: GeneratorConfig | None = None,
        *,
        chunk_bytes: int | None = None,
        overlap: bool | None = None,
        **overrides: Any,
    ) -> None:
        """model: a Sam, or a SamPredictor (e.g. one with bf16 autocast for the fast mode).
        config: GeneratorConfig (official defaults if None); overrides: its fields by name.
        chunk_bytes: memory bound for full-resolution candidates held at once (default
        `CUDA_CHUNK_BYTES` on a GPU, `CPU_CHUNK_BYTES` on a CPU; results do not depend on it).
        overlap: post-process each point batch on a second thread while the model decodes
        the next (default: on a GPU, where the model work is asynchronous; results are the
        same either way)."""
        self.predictor = model if isinstance(model, SamPredictor) else SamPredictor(model)
        if overlap is None:
            overlap = self.predictor.device.type == "cuda"
        self._finisher = ThreadPoolExecutor(1, "sam-finish") if overlap else None
        config = config or GeneratorConfig()
        self.config = config.with_overrides(**overrides) if overrides else config
        if chunk_bytes is None:
            cuda = self.predictor.device.type == "cuda"
            chunk_bytes = CUDA_CHUNK_BYTES if cuda else CPU_CHUNK_BYTES
        self.chunk_bytes = chunk_bytes
        if self.config.point_grids is not None:
            self.point_grids = [np.asarray(g, dtype=np.float64) for g in self.config.point_grids]
        else:
            assert self.config.points_per_side is not None
            self.point_grids = build_all_layer_point_grids(
                self.config.points_per_side,
                self.config.crop_n_layers,
                self.config.crop_n_points_downscale_factor,
            )

    def generate(self, image: np.ndarray | Image.Image) -> list[dict[str, Any]]:
        """SA-1B annotation dicts (without ids) for one image, best first."""
        return to_annotations(self.generate_columns(image))

    def generate_columns(self, image: np.ndarray | Image.Image) -> MaskColumns:
        return finish_candidates(self.generate_candidates(image), self.config)

    def generate_candidates(self, image: np.ndarray | Image.Image) -> MaskColumns:
        """The model's share of the work: every crop embedded and decoded, per-mask filters,
        NMS within and across crops. `finish_candidates` does the rest on any CPU."""
        rgb = to_rgb_uint8(image)
        height, width = rgb.shape[:2]
        crop_boxes, layers = generate_crop_boxes(
            (height, width), self.config.crop_n_layers, self.config.crop_overlap_ratio
        )
        parts = [
            self._process_crop(rgb, box, layer)
            for box, layer in zip(crop_boxes, layers)
            if box[2] > box[0] and box[3] > box[1]
        ]
        data = MaskColumns.concat(parts)
        if len(crop_boxes) > 1 and len(data):
            crops = data.crop_boxes.float()
            prefer_small = 1.0 / ((crops[:, 2] - crops[:, 0]) * (crops[:, 3] - crops[:, 1]))
            data = data.filter(nms(data.boxes.float(), prefer_small, self.config.crop_nms_thresh))
        return data

    def _process_crop(self, image: np.ndarray, crop_box: list[int], layer: int) -> MaskColumns:
        x0, y0, x1, y1 = crop_box
        crop = image[y0:y1, x0:x1, :]
        crop_size = (crop.shape[0], crop.shape[1])
        self.predictor.set_image(crop)
        points = self.point_grids[layer] * np.array([[crop_size[1], crop_size[0]]])
        step = self.config.points_per_batch
        image_size = (image.shape[0], image.shape[1])
        batches = (points[start : start + step] for start in range(0, len(points), step))
        parts = []
        if self._finisher is None:
            for batch in batches:
                decoded = self._decode_batch(batch, crop_size)
                parts.append(self._finish_batch(*decoded, crop_box, image_size))
        else:
            # Batch i is post-processed on the finisher thread while the model decodes batch
            # i + 1; at most one batch waits, and all are done before the next crop.
            pending: Future[MaskColumns] | None = None
            for batch in batches:
                decoded = self._decode_batch(batch, crop_size)
                if pending is not None:
                    parts.append(pending.result())
                pending = self._finisher.submit(self._finish_batch, *decoded, crop_box, image_size)
            if pending is not None:
                parts.append(pending.result())
        self.predictor.reset_image()
        data = MaskColumns.concat(parts)
        data = data.filter(nms(data.boxes.float(), data.iou_preds, self.config.box_nms_thresh))
        data.boxes = uncrop_boxes_xyxy(data.boxes, crop_box)
        data.points = uncrop_points(data.points, crop_box)
        return data

    def _decode_batch(
        self, points: np.ndarray, crop_size: tuple[int, int]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """points: B x 2 XY in crop pixels (float64) -> low-res logits, predicted IoUs and
        points of the masks that pass the predicted-IoU filter."""
        predictor = self.predictor
        coords = scale_coords(points, crop_size, predictor.model.img_size)
        coords_t = torch.as_tensor(coords, device=predictor.device)[:, None, :]
        labels = torch.ones(len(points), 1, dtype=torch.int, device=predictor.device)
        thresh = self.config.pred_iou_thresh
        low_res, iou_preds, index = predictor.decode_kept(
            coords_t, labels, lambda iou: keep_by_predicted_iou(iou, thresh)
        )
        point_rows = torch.as_tensor(points)[index.cpu() // MASKS_PER_POINT]
        return low_res, iou_preds, point_rows

    def _finish_batch(
        self,
        low_res: torch.Tensor,
        iou_preds: torch.Tensor,
        point_rows: torch.Tensor,
        crop_box: list[int],
        image_size: tuple[int, int],
    ) -> MaskColumns:
        """Candidates that pass every per-mask filter, boxes in crop pixels."""
        x0, y0, x1, y1 = crop_box
        chunk = self._chunk_size((y1 - y0, x1 - x0), image_size)
        with torch.inference_mode():
            parts = [
                self._finish_chunk(
                    low_res[start : start + chunk],
                    iou_preds[start : start + chunk],
                    point_rows[start : start + chunk],
                    crop_box,
                    image_size,
                )
                for start in range(0, len(low_res), chunk)
            ]
        return MaskColumns.concat(parts)

    def _chunk_size(self, crop_size: tuple[int, int], image_size: tuple[int, int]) -> int:
        side = self.predictor.model.img_size
        per_mask = 4 * side * side + 8 * crop_size[0] * crop_size[1] + image_size[0] * image_size[1]
        return max(1, self.chunk_bytes // per_mask)

    def _finish_chunk(
        self,
        low_res: torch.Tensor,
        iou_preds: torch.Tensor,
        points: torch.Tensor,
        crop_box: list[int],
        image_size: tuple[int, int],
    ) -> MaskColumns:
        config, threshold = self.config, self.predictor.model.mask_threshold
        logits = self.predictor.upscale(low_res[:, None])[:, 0]
        stability = stability_score(logits, threshold, config.stability_score_offset)
        keep = keep_by_stability(stability, config.stability_score_thresh)
        masks = logits[keep] > threshold
        boxes = masks_to_boxes_xyxy(masks)
        height, width = image_size
        inner = ~is_box_near_crop_edge(boxes, crop_box, [0, 0, width, height])
        masks, boxes, index = masks[inner], boxes[inner], keep.nonzero().flatten()[inner]
        if config.max_mask_area_frac is not None:
            # Uncropping pads with background, so the area in the crop is the area.
            small = keep_by_area_fraction(
                count_true(masks), height * width, config.max_mask_area_frac
            )
            masks, boxes, index = masks[small], boxes[small], index[small]
        full = uncrop_masks(masks, crop_box, height, width)
        index = index.cpu()
        return MaskColumns(
            iou_preds=iou_preds.cpu()[index],
            stability_score=stability.cpu()[index],
            points=points[index],
            boxes=boxes.cpu(),
            crop_boxes=torch.tensor([crop_box], dtype=torch.long).expand(len(index), 4),
            rles=masks_to_rles(full),
        )


def finish_candidates(data: MaskColumns, config: GeneratorConfig) -> MaskColumns:
    """CPU post-processing of `generate_candidates` output (holes and islands)."""
    if config.min_mask_region_area > 0 and len(data):
        return clean_small_regions(data, config)
    return data


def clean_small_regions(data: MaskColumns, config: GeneratorConfig) -> MaskColumns:
    """Fill holes and remove islands under min_mask_region_area, then NMS again
    preferring masks that did not change (as the official post-processing does)."""
    min_area = config.min_mask_region_area
    cleaned, changed, boxes = [], [], []
    for rle in data.rles:
        mask, was_changed = clean_mask(rle_to_mask(rle), min_area)
        cleaned.append(mask)
        changed.append(was_changed)
        boxes.append(masks_to_boxes_xyxy(torch.from_numpy(mask)[None])[0])
    scores = torch.tensor([0.0 if c else 1.0 for c in changed])
    nms_thresh = max(config.box_nms_thresh, config.crop_nms_thresh)
    keep = nms(torch.stack(boxes).float(), scores, nms_thresh)
    for index in keep.tolist():
        if changed[index]:
            data.rles[index] = masks_to_rles(torch.from_numpy(cleaned[index])[None])[0]
            data.boxes[index] = boxes[index]
    if config.drop_small_masks:
        keep = torch.tensor(
            [i for i in keep.tolist() if cleaned[i].sum() >= min_area], dtype=torch.long
        )
    return data.filter(keep)


def to_annotations(data: MaskColumns) -> list[dict[str, Any]]:
    """SA-1B annotation dicts: COCO compressed RLE, bbox/crop_box XYWH, area in pixels."""
    annotations = []
    for index, rle in enumerate(data.rles):
        annotations.append(
            {
                "segmentation": coco_encode(rle),
                "area": rle_area(rle),
                "bbox": box_xyxy_to_xywh(data.boxes[index].tolist()),
                "predicted_iou": float(data.iou_preds[index]),
                "point_coords": [data.points[index].tolist()],
                "stability_score": float(data.stability_score[index]),
                "crop_box": box_xyxy_to_xywh(data.crop_boxes[index].tolist()),
            }
        )
    return annotations


def annotations_to_masks(annotations: list[dict[str, Any]]) -> np.ndarray:
    """N x H x W bool masks of SA-1B annotations, for viewing."""
    if not annotations:
        return np.zeros((0, 0, 0), dtype=bool)
    return np.stack([coco_decode(a["segmentation"]) for a in annotations])
