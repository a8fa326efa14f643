"""Stage 2, semi-automatic: the class-agnostic box detector on SAM embeddings, its targets
from masks, and the confident threshold that decides which detections prefill an image."""

from stages.semi.detector import BoxDetector, DetectorConfig, normalized_loss
from stages.semi.inference import (
    DetectorFileError,
    DetectorMetadata,
    detect,
    detect_batch,
    load_detector,
    save_detector,
)
from stages.semi.pyramid import SimpleFeaturePyramid
from stages.semi.targets import boxes_from_masks, boxes_from_segmentations, training_boxes
from stages.semi.threshold import ThresholdChoice, choose_threshold, match_detections

__all__ = [
    "BoxDetector",
    "DetectorConfig",
    "DetectorFileError",
    "DetectorMetadata",
    "SimpleFeaturePyramid",
    "ThresholdChoice",
    "boxes_from_masks",
    "boxes_from_segmentations",
    "choose_threshold",
    "detect",
    "detect_batch",
    "load_detector",
    "match_detections",
    "normalized_loss",
    "save_detector",
    "training_boxes",
]
