"""`MaskColumns`: the column store that each step of the generator returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from stages.automatic.rle import Rle


@dataclass
class MaskColumns:
    """N candidate masks. points XY and boxes/crop_boxes XYXY are in image pixels once a
    crop is finished (crop pixels before); rles are uncompressed, image-sized."""

    iou_preds: torch.Tensor = field(default_factory=lambda: torch.zeros(0))
    stability_score: torch.Tensor = field(default_factory=lambda: torch.zeros(0))
    points: torch.Tensor = field(default_factory=lambda: torch.zeros(0, 2, dtype=torch.float64))
    boxes: torch.Tensor = field(default_factory=lambda: torch.zeros(0, 4, dtype=torch.long))
    crop_boxes: torch.Tensor = field(default_factory=lambda: torch.zeros(0, 4, dtype=torch.long))
    rles: list[Rle] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.rles)

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled with its tensors as NumPy arrays (how a job's model worker sends
        candidates to the CPU tasks that finish them): several times cheaper to move than
        tensors, the same values; unpickled on the CPU."""
        arrays = tuple(tensor.cpu().numpy() for tensor in self._tensors())
        return (_from_arrays, (*arrays, self.rles))

    def _tensors(self) -> tuple[torch.Tensor, ...]:
        return (self.iou_preds, self.stability_score, self.points, self.boxes, self.crop_boxes)

    def filter(self, keep: torch.Tensor) -> MaskColumns:
        """Rows selected by a bool mask or an index tensor, in that order."""
        keep = keep.cpu()
        index = keep.nonzero().flatten() if keep.dtype == torch.bool else keep
        return MaskColumns(
            iou_preds=self.iou_preds[index],
            stability_score=self.stability_score[index],
            points=self.points[index],
            boxes=self.boxes[index],
            crop_boxes=self.crop_boxes[index],
            rles=[self.rles[i] for i in index.tolist()],
        )

    @staticmethod
    def concat(parts: list[MaskColumns]) -> MaskColumns:
        if not parts:
            return MaskColumns()
        return MaskColumns(
            iou_preds=torch.cat([p.iou_preds for p in parts]),
            stability_score=torch.cat([p.stability_score for p in parts]),
            points=torch.cat([p.points for p in parts]),
            boxes=torch.cat([p.boxes for p in parts]),
            crop_boxes=torch.cat([p.crop_boxes for p in parts]),
            rles=[rle for p in parts for rle in p.rles],
        )


def _from_arrays(*columns: Any) -> MaskColumns:
    """A pickled MaskColumns (`MaskColumns.__reduce__`): the arrays are copied, as a
    receiver may hand them over read-only."""
    iou_preds, stability_score, points, boxes, crop_boxes = (
        torch.from_numpy(np.array(array)) for array in columns[:5]
    )
    return MaskColumns(
        iou_preds=iou_preds,
        stability_score=stability_score,
        points=points,
        boxes=boxes,
        crop_boxes=crop_boxes,
        rles=columns[5],
    )
