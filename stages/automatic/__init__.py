"""Stage 3: the fully automatic SA-1B mask generator."""

from stages.automatic.config import PRESETS, GeneratorConfig, build_generator_config
from stages.automatic.generator import (
    AutomaticMaskGenerator,
    annotations_to_masks,
    finish_candidates,
    to_annotations,
)
from stages.automatic.images import ImageInputError

__all__ = [
    "PRESETS",
    "AutomaticMaskGenerator",
    "GeneratorConfig",
    "ImageInputError",
    "annotations_to_masks",
    "build_generator_config",
    "finish_candidates",
    "to_annotations",
]
