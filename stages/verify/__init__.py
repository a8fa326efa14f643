"""The learned verifier (what SAM 3's data engine calls an AI verifier): a small network that
reads SAM's image embedding and a proposed mask and says whether a person would accept the
mask; its inputs, its file and its scores."""

from stages.verify.features import mask_frame, mask_scalars
from stages.verify.inference import (
    VerifierFileError,
    VerifierMetadata,
    load_verifier,
    save_verifier,
    verifier_scores,
)
from stages.verify.network import MaskVerifier, VerifierConfig

__all__ = [
    "MaskVerifier",
    "VerifierConfig",
    "VerifierFileError",
    "VerifierMetadata",
    "load_verifier",
    "mask_frame",
    "mask_scalars",
    "save_verifier",
    "verifier_scores",
]
