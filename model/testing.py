"""Weights for tests and demos when no trained model is at hand.

Untrained SAM weights give mask logits near 0 (stability 0 at offset 1, so nothing passes
the generator's filters) and nearly the same mask for every point. Scaling the last layer of
the decoder's hypernetwork MLPs and shifting the IoU head's bias gives masks with confident
edges; applied identically to two implementations, it keeps them comparable.
"""

from __future__ import annotations

from typing import Any

import torch


def sharpen_decoder_(sam: Any, *, scale: float = 30.0, iou_shift: float = 0.5) -> None:
    """Apply to a Sam of this project or of the official package."""
    decoder: Any = sam.mask_decoder
    with torch.no_grad():
        for mlp in decoder.output_hypernetworks_mlps:
            mlp.layers[-1].weight.mul_(scale)
            mlp.layers[-1].bias.mul_(scale)
        decoder.iou_prediction_head.layers[-1].bias.add_(iou_shift)
