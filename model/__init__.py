"""SAM: image encoder, prompt encoder, mask decoder, checkpoints and the predictor."""

from model.build import MODEL_REGISTRY, EncoderSpec, build_sam, build_sam_from_spec, known_models
from model.checkpoint import OFFICIAL_CHECKPOINTS, CheckpointError
from model.predictor import PredictorInputError, SamPredictor
from model.sam import Sam

__all__ = [
    "MODEL_REGISTRY",
    "OFFICIAL_CHECKPOINTS",
    "CheckpointError",
    "EncoderSpec",
    "PredictorInputError",
    "Sam",
    "SamPredictor",
    "build_sam",
    "build_sam_from_spec",
    "known_models",
]
