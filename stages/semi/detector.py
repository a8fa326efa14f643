"""The class-agnostic box detector: torchvision's FCOS driven on a simple feature pyramid
of the SAM image embedding (the encoder frozen, its embedding computed elsewhere).

torchvision's `FCOS` class is built directly (no builder: those fetch ImageNet weights) and
only its parts are used: the head (classification with sigmoid focal loss, box regression
with GIoU loss, centre-ness with BCE), its target assignment (centre sampling, a size range
per level, the smallest box wins), the anchor generator (one point per location) and its
post-processing (score floor, top-k per level, batched NMS). Its image transform is never
called: the input is the embedding of the padded S x S model input, and every box here is
XYXY in model-input pixels (the image resized so its long side is S, as SAM's predictor does).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torchvision.models.detection import FCOS
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.fcos import FCOSHead
from torchvision.models.detection.image_list import ImageList

from stages.semi.pyramid import EMBEDDING_STRIDE, SimpleFeaturePyramid, check_scales, level_strides

OBJECT_LABEL = 0  # the single class: "object"
LOSS_NAMES = ("classification", "bbox_regression", "bbox_ctrness")


@dataclass(frozen=True)
class DetectorConfig:
    """The detector's architecture and inference settings.

    embed_dim: channels of the SAM embedding; image_size: the SAM input side S (1024, or 256
    for vit_mini), so the embedding is (S/16) x (S/16); channels: width of the pyramid and
    head (a multiple of 32, the head's GroupNorm); scales: pyramid levels as factors of the
    stride-16 embedding (4 -> stride 4, ..., 0.5 -> stride 32); head_convs: conv layers in
    each head branch; center_sampling_radius: in strides (FCOS); score_floor: the lowest
    score a detection is kept with; nms_thresh: box IoU of the NMS; detections_per_image:
    kept after NMS; topk_candidates: per level before NMS."""

    embed_dim: int = 256
    image_size: int = 1024
    channels: int = 256
    scales: tuple[float, ...] = (4.0, 2.0, 1.0, 0.5)
    head_convs: int = 4
    center_sampling_radius: float = 1.5
    score_floor: float = 0.05
    nms_thresh: float = 0.6
    detections_per_image: int = 300
    topk_candidates: int = 1000

    def __post_init__(self) -> None:
        check_scales(tuple(self.scales))
        if self.channels < 32 or self.channels % 32:
            raise ValueError(f"detector.channels must be a multiple of 32, got {self.channels}")
        if self.image_size % EMBEDDING_STRIDE or self.image_size < EMBEDDING_STRIDE:
            raise ValueError(f"image_size must be a multiple of 16, got {self.image_size}")
        for name in ("head_convs", "detections_per_image", "topk_candidates", "embed_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"detector.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("score_floor", "nms_thresh"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"detector.{name} must be in [0, 1], got {getattr(self, name)}")
        if self.center_sampling_radius <= 0:
            raise ValueError(
                f"detector.center_sampling_radius must be > 0, got {self.center_sampling_radius}"
            )

    @property
    def embedding_size(self) -> int:
        return self.image_size // EMBEDDING_STRIDE


class SummedFCOSHead(FCOSHead):
    """FCOS's head whose losses are sums over foreground locations (not means), with the
    number of foreground locations beside them, so that data-parallel workers can divide
    by the count of the whole global batch."""

    def compute_loss(
        self,
        targets: list[dict[str, torch.Tensor]],
        head_outputs: dict[str, torch.Tensor],
        anchors: list[torch.Tensor],
        matched_idxs: list[torch.Tensor],
    ) -> dict[str, torch.Tensor]:
        means = super().compute_loss(targets, head_outputs, anchors, matched_idxs)
        count = sum(int((matched >= 0).sum()) for matched in matched_idxs)
        sums = {name: value * max(1, count) for name, value in means.items()}
        sums["num_foreground"] = torch.tensor(float(count), device=anchors[0].device)
        return sums


class BoxDetector(nn.Module):
    """Embeddings (B x embed_dim x S/16 x S/16) -> class-agnostic boxes in model-input pixels.

    `confident_thresh` is the score threshold chosen on held-out data (None until chosen)."""

    def __init__(self, config: DetectorConfig) -> None:
        super().__init__()
        self.config = config
        pyramid = SimpleFeaturePyramid(config.embed_dim, config.channels, tuple(config.scales))
        strides = level_strides(tuple(config.scales))
        # One anchor point per location; its size (= the stride) sets the level's size range.
        anchors = AnchorGenerator(tuple((s,) for s in strides), ((1.0,),) * len(strides))
        head = SummedFCOSHead(config.channels, 1, num_classes=1, num_convs=config.head_convs)
        self.fcos = FCOS(
            pyramid,
            num_classes=1,
            anchor_generator=anchors,
            head=head,
            center_sampling_radius=config.center_sampling_radius,
            score_thresh=config.score_floor,
            nms_thresh=config.nms_thresh,
            detections_per_img=config.detections_per_image,
            topk_candidates=config.topk_candidates,
        )
        self.confident_thresh: float | None = None

    def _levels(self, embeddings: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Pyramid levels and every image's anchors (sum of level sizes x 4)."""
        side = self.config.embedding_size
        expected = (self.config.embed_dim, side, side)
        if embeddings.dim() != 4 or tuple(embeddings.shape[1:]) != expected:
            raise ValueError(
                f"the detector takes B x {expected[0]} x {side} x {side} embeddings, "
                f"got {tuple(embeddings.shape)}"
            )
        features = list(self.fcos.backbone(embeddings).values())
        size = self.config.image_size
        # The anchor generator reads only the padded input's size and the number of images.
        count = len(embeddings)
        frame = ImageList(embeddings.new_empty(count, 0, size, size), [(size, size)] * count)
        return features, self.fcos.anchor_generator(frame, features)

    def losses(
        self, embeddings: torch.Tensor, targets: list[dict[str, torch.Tensor]]
    ) -> dict[str, torch.Tensor]:
        """Loss sums (LOSS_NAMES) and `num_foreground` of a batch; targets: per image
        {"boxes": N x 4 XYXY model-input pixels, "labels": N zeros (int64)}."""
        features, anchors = self._levels(embeddings)
        head_outputs = self.fcos.head(features)
        per_level = [f.shape[-2] * f.shape[-1] for f in features]
        return self.fcos.compute_loss(targets, head_outputs, anchors, per_level)

    def predict(
        self, embeddings: torch.Tensor, input_sizes: list[tuple[int, int]]
    ) -> list[dict[str, torch.Tensor]]:
        """Per image {"boxes": N x 4 XYXY model-input pixels clipped to its unpadded input
        (h, w), "scores": N}, scores above the floor, after NMS, best first."""
        features, anchors = self._levels(embeddings)
        head_outputs = self.fcos.head(features)
        per_level = [f.shape[-2] * f.shape[-1] for f in features]
        split = {k: list(v.split(per_level, dim=1)) for k, v in head_outputs.items()}
        split_anchors = [list(a.split(per_level)) for a in anchors]
        found = self.fcos.postprocess_detections(split, split_anchors, input_sizes)
        return [{"boxes": d["boxes"], "scores": d["scores"]} for d in found]


def normalized_loss(
    sums: dict[str, torch.Tensor], num_foreground: float
) -> tuple[torch.Tensor, dict[str, float]]:
    """The FCOS loss (each term divided by the foreground count, at least 1) and its terms;
    num_foreground: the count over the whole global batch."""
    scale = 1.0 / max(1.0, num_foreground)
    terms = {name: sums[name] * scale for name in LOSS_NAMES}
    total = torch.stack(list(terms.values())).sum()
    return total, {name: float(value.detach()) for name, value in terms.items()}
