"""`MaskColumns`: the column store that each step of the generator returns."""

from __future__ import annotations

from dataclasses import dataclass, field

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
