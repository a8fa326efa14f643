"""Held-out metrics of a detector, and its confident threshold.

- COCO box AP (pycocotools `COCOeval`, one category "object", up to `max_dets` detections
  per image: SA-1B images have ~100 objects), AP at IoU 0.5 and 0.75, and AR.
- Recall at IoU 0.5: the fraction of annotated objects that some detection matches (one
  detection per object, best score first), over every detection above the score floor.
- The confident threshold for a target precision (`stages.semi.threshold`), and the
  precision and recall at a given threshold (a saved detector's own).
Everything is measured in the stored images' pixels, against one box per annotated mask.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import asdict
from typing import Any

import numpy as np
import torch

from engine.detection.data import DetectionImage
from engine.embeddings import EmbeddingStore
from stages.semi.detector import BoxDetector
from stages.semi.inference import detect_batch
from stages.semi.threshold import (
    MATCH_IOU,
    choose_threshold,
    match_detections,
    precision_recall_at,
)

Predictions = list[tuple[np.ndarray, np.ndarray]]


def predict_images(
    detector: BoxDetector,
    images: list[DetectionImage],
    store: EmbeddingStore,
    *,
    batch: int = 8,
    progress: bool = False,
) -> Predictions:
    """Every detection above the detector's score floor, per image (boxes in stored-image
    pixels, scores)."""
    from tqdm import tqdm

    found: Predictions = []
    starts = range(0, len(images), batch)
    for start in tqdm(starts, desc="detect", unit="batch", disable=not progress):
        chunk = images[start : start + batch]
        embeddings = np.stack([store.read(image.digest) for image in chunk])
        sizes = [image.original_size for image in chunk]
        found += detect_batch(detector, embeddings, original_sizes=sizes, score_thresh=0.0)
    return found


def _xywh(boxes: np.ndarray) -> list[list[float]]:
    return [[float(x1), float(y1), float(x2 - x1), float(y2 - y1)] for x1, y1, x2, y2 in boxes]


def _coco_truth(images: list[DetectionImage]) -> dict[str, Any]:
    """The held-out objects as a COCO dataset with one category (ids from 1)."""
    annotations: list[dict[str, Any]] = []
    for number, image in enumerate(images):
        for box, area in zip(_xywh(image.boxes_xyxy), image.areas):
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": number + 1,
                    "category_id": 1,
                    "bbox": box,
                    "area": float(area),
                    "iscrowd": 0,
                }
            )
    sizes = [image.original_size for image in images]
    return {
        "images": [{"id": n + 1, "height": h, "width": w} for n, (h, w) in enumerate(sizes)],
        "annotations": annotations,
        "categories": [{"id": 1, "name": "object"}],
    }


def coco_box_metrics(
    images: list[DetectionImage], predictions: Predictions, *, max_dets: int
) -> dict[str, float]:
    """COCO AP@[.5:.95], AP50, AP75 and AR, all at max_dets detections per image."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    truth = COCO()
    truth.dataset = _coco_truth(images)
    results = [
        {"image_id": n + 1, "category_id": 1, "bbox": box, "score": float(score)}
        for n, (boxes, scores) in enumerate(predictions)
        for box, score in zip(_xywh(boxes), scores)
    ]
    if not results or not truth.dataset["annotations"]:
        return {"ap": 0.0, "ap50": 0.0, "ap75": 0.0, "ar": 0.0}
    with contextlib.redirect_stdout(io.StringIO()):
        truth.createIndex()
        evaluation = COCOeval(truth, truth.loadRes(results), iouType="bbox")
        evaluation.params.maxDets = [max_dets]
        evaluation.evaluate()
        evaluation.accumulate()
    # Read the accumulated arrays: `summarize()` takes its AP at 100 detections whatever
    # maxDets says. precision: T (IoU) x R (recall) x K x A (area) x M; recall: T x K x A x M.
    precision = evaluation.eval["precision"][:, :, 0, 0, -1]
    recall = evaluation.eval["recall"][:, 0, 0, -1]
    thresholds = list(np.round(evaluation.params.iouThrs, 2))
    return {
        "ap": _mean_valid(precision),
        "ap50": _mean_valid(precision[thresholds.index(0.5)]),
        "ap75": _mean_valid(precision[thresholds.index(0.75)]),
        "ar": _mean_valid(recall),
    }


def _mean_valid(values: np.ndarray) -> float:
    """Mean over the entries COCOeval filled (it marks the others -1)."""
    valid = values[values > -1]
    return float(valid.mean()) if valid.size else 0.0


def matched_detections(
    images: list[DetectionImage], predictions: Predictions
) -> tuple[np.ndarray, np.ndarray]:
    """All detections' scores and whether each matches an object at IoU 0.5."""
    scores, right = [np.zeros(0)], [np.zeros(0, dtype=bool)]
    for image, (boxes, image_scores) in zip(images, predictions):
        scores.append(image_scores.astype(np.float64))
        right.append(match_detections(boxes, image_scores, image.boxes_xyxy, iou_thresh=MATCH_IOU))
    return np.concatenate(scores), np.concatenate(right)


@torch.inference_mode()
def evaluate_detector(
    detector: BoxDetector,
    images: list[DetectionImage],
    store: EmbeddingStore,
    *,
    target_precision: float,
    score_thresh: float | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """The held-out metrics (module docstring): COCO numbers, recall_50, the threshold
    chosen here for target_precision ("chosen"), and precision / recall / detections per
    image at score_thresh ("at_threshold", when given)."""
    if not images:
        raise ValueError("no held-out images to evaluate on")
    predictions = predict_images(detector, images, store, progress=progress)
    num_objects = int(sum(len(image.boxes_xyxy) for image in images))
    if num_objects == 0:
        raise ValueError("the held-out images have no annotated objects")
    scores, right = matched_detections(images, predictions)
    choice = choose_threshold(scores, right, num_objects, target_precision=target_precision)
    metrics: dict[str, Any] = {
        "num_images": len(images),
        "num_objects": num_objects,
        **coco_box_metrics(images, predictions, max_dets=detector.config.detections_per_image),
        "recall_50": float(right.sum()) / num_objects,
        "detections_per_image": len(scores) / len(images),
        "chosen": asdict(choice),
    }
    if score_thresh is not None:
        precision, recall, count = precision_recall_at(scores, right, num_objects, score_thresh)
        metrics["at_threshold"] = {
            "score_thresh": score_thresh,
            "precision": precision,
            "recall": recall,
            "detections_per_image": count / len(images),
        }
    return metrics
