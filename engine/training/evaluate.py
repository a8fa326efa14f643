"""Evaluating a model on held-out SA-1B-format data (the paper's protocols).

- Single-point mIoU: one click at the mask's centre (its pixel farthest from the boundary),
  the most confident of the 3 output masks (and the oracle best of 3).
- Interactive: clicks 1 to 9, each new click at the centre of the largest error region
  (foreground if missed, background if extra), previous logits fed back; the mIoU after each
  click and the mean number of clicks to reach 85% / 90% IoU (9 counted when never reached).
- Automatic: the generator's recall of ground-truth masks at IoU 0.5 / 0.75 and masks per
  image.
All at the model's input resolution (images resized so the long side is the input size).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from engine.dataset.reader import IndexEntry, build_index
from engine.training.reader import load_sample
from model import Sam
from stages.assisted.prompts import centre_point, largest_error_click, mask_iou
from stages.automatic import AutomaticMaskGenerator, GeneratorConfig
from stages.automatic.rle import rle_to_mask

MAX_CLICKS = 9


@dataclass
class EvalResult:
    num_images: int
    num_masks: int
    point_miou: float
    point_miou_oracle: float
    click_miou: list[float]
    noc85: float
    noc90: float
    amg_recall_50: float
    amg_recall_75: float
    amg_masks_per_image: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@torch.inference_mode()
def _interactive(
    sam: Sam, embedding: torch.Tensor, target: np.ndarray, valid: tuple[int, int]
) -> tuple[float, float, list[float]]:
    """(most-confident IoU, oracle IoU) of the first click and the IoU after each click."""
    coords: list[tuple[float, float]] = []
    labels: list[int] = []
    mask_input = None
    ious: list[float] = []
    first = (0.0, 0.0)
    size = sam.img_size
    predicted = np.zeros_like(target)
    for click in range(MAX_CLICKS):
        x, y, label = (
            (*centre_point(target), 1) if click == 0 else largest_error_click(predicted, target)
        )
        coords.append((x, y))
        labels.append(label)
        low_res, iou_pred = sam.decode(
            embedding,
            point_coords=torch.tensor([coords], dtype=torch.float32, device=sam.device),
            point_labels=torch.tensor([labels], device=sam.device),
            mask_input=mask_input,
            multimask_output=click == 0,
        )
        logits = F.interpolate(low_res, (size, size), mode="bilinear", align_corners=False)[0]
        masks = (logits > 0).cpu().numpy()
        masks[:, valid[0] :, :] = False
        masks[:, :, valid[1] :] = False
        candidate_ious = [mask_iou(m, target) for m in masks]
        chosen = int(iou_pred[0].argmax())
        if click == 0:
            first = (candidate_ious[chosen], max(candidate_ious))
        predicted = masks[chosen]
        mask_input = low_res[:, chosen : chosen + 1]
        ious.append(candidate_ious[chosen])
    return first[0], first[1], ious


def _clicks_to(ious: list[float], threshold: float) -> int:
    return next((i + 1 for i, v in enumerate(ious) if v >= threshold), MAX_CLICKS)


def evaluate(
    sam: Sam,
    data: list[str] | list[IndexEntry],
    *,
    max_images: int = 32,
    max_masks: int = 16,
    seed: int = 0,
    generator_config: GeneratorConfig | None = None,
) -> EvalResult:
    """Evaluate on up to max_images images (first in key order) and max_masks masks each."""
    entries = data if data and isinstance(data[0], IndexEntry) else build_index(data)  # type: ignore[arg-type]
    entries = list(entries)[:max_images]  # type: ignore[assignment]
    sam.eval()
    first, oracle, curves = [], [], []
    recall50, recall75, generated = [], [], []
    generator = AutomaticMaskGenerator(sam, generator_config or GeneratorConfig())
    for position, entry in enumerate(entries):
        assert isinstance(entry, IndexEntry)
        sample = load_sample(
            entry,
            image_size=sam.img_size,
            max_masks=max_masks,
            rng=np.random.default_rng([seed, position]),
        )
        valid = (sample.image.shape[1], sample.image.shape[2])
        with torch.inference_mode():
            embedding = sam.image_encoder(sam.preprocess(sample.image.to(sam.device)[None]))
        targets = sample.masks.numpy() > 0.5
        for target in targets:
            point, best, curve = _interactive(sam, embedding, target, valid)
            first.append(point)
            oracle.append(best)
            curves.append(curve)
        image = sample.image.permute(1, 2, 0).round().byte().numpy()
        found = _generated_masks(generator, image)
        gt = targets[:, : valid[0], : valid[1]]
        matched = _best_ious(gt, found)
        recall50 += [v >= 0.5 for v in matched]
        recall75 += [v >= 0.75 for v in matched]
        generated.append(len(found))
    curve_array = np.array(curves) if curves else np.zeros((0, MAX_CLICKS))
    return EvalResult(
        num_images=len(entries),
        num_masks=len(first),
        point_miou=float(np.mean(first)) if first else 0.0,
        point_miou_oracle=float(np.mean(oracle)) if oracle else 0.0,
        click_miou=[float(v) for v in curve_array.mean(0)] if curves else [],
        noc85=float(np.mean([_clicks_to(c, 0.85) for c in curves])) if curves else 0.0,
        noc90=float(np.mean([_clicks_to(c, 0.90) for c in curves])) if curves else 0.0,
        amg_recall_50=float(np.mean(recall50)) if recall50 else 0.0,
        amg_recall_75=float(np.mean(recall75)) if recall75 else 0.0,
        amg_masks_per_image=float(np.mean(generated)) if generated else 0.0,
    )


def _generated_masks(generator: AutomaticMaskGenerator, image: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        columns = generator.generate_columns(image)
    if not len(columns):
        return np.zeros((0, *image.shape[:2]), dtype=bool)
    return np.stack([rle_to_mask(rle) for rle in columns.rles])


def _best_ious(targets: np.ndarray, found: np.ndarray) -> list[float]:
    """For each target mask, its best IoU with any found mask."""
    if not len(found):
        return [0.0] * len(targets)
    t = torch.from_numpy(targets.reshape(len(targets), -1)).float()
    f = torch.from_numpy(found.reshape(len(found), -1)).float()
    intersection = t @ f.T
    union = t.sum(1, keepdim=True) + f.sum(1)[None] - intersection
    return (intersection / union.clamp(min=1)).max(dim=1).values.tolist()
