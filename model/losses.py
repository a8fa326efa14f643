"""SAM's training losses (the paper's appendix A): focal + dice at 20:1 on mask logits, MSE
between the IoU head and the true IoU, and, for multimask output, only the lowest-loss mask
backpropagated."""

from __future__ import annotations

import torch
import torch.nn.functional as F

FOCAL_WEIGHT = 20.0
DICE_WEIGHT = 1.0


def focal_loss(
    logits: torch.Tensor, targets: torch.Tensor, *, alpha: float = 0.25, gamma: float = 2.0
) -> torch.Tensor:
    """Mean sigmoid focal loss over pixels. logits, targets: ... x H x W -> ...
    alpha < 0 turns the class weighting off."""
    probs = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = probs * targets + (1 - probs) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = loss * (alpha * targets + (1 - alpha) * (1 - targets))
    return loss.flatten(-2).mean(-1)


def dice_loss(logits: torch.Tensor, targets: torch.Tensor, *, eps: float = 1.0) -> torch.Tensor:
    """1 - soft dice per mask. logits, targets: ... x H x W -> ..."""
    probs = logits.sigmoid().flatten(-2)
    targets = targets.flatten(-2)
    numerator = 2 * (probs * targets).sum(-1)
    denominator = probs.sum(-1) + targets.sum(-1)
    return 1 - (numerator + eps) / (denominator + eps)


def mask_iou(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """IoU of the thresholded (logit > 0) masks with the targets: ... x H x W -> ...
    An empty prediction of an empty target counts as 1."""
    predicted = logits > 0
    truth = targets > 0.5
    intersection = (predicted & truth).flatten(-2).sum(-1).float()
    union = (predicted | truth).flatten(-2).sum(-1).float()
    return torch.where(union > 0, intersection / union.clamp(min=1), torch.ones_like(union))


def sam_loss(
    logits: torch.Tensor,
    iou_predictions: torch.Tensor,
    targets: torch.Tensor,
    *,
    focal_alpha: float = -1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Loss of one prediction step for B masks.

    logits: B x M x H x W (M = 1 or 3 candidate masks); iou_predictions: B x M;
    targets: B x H x W in {0, 1}. Per mask, each candidate's loss is 20 * focal + dice
    (focal without class weighting unless focal_alpha >= 0); only the lowest one counts
    (multimask), plus the MSE of every candidate's predicted IoU against its true IoU.
    Returns (B losses, B chosen indices)."""
    expanded = targets[:, None].expand_as(logits).to(logits.dtype)
    focal = focal_loss(logits, expanded, alpha=focal_alpha)
    per_candidate = FOCAL_WEIGHT * focal + DICE_WEIGHT * dice_loss(logits, expanded)
    best = per_candidate.argmin(dim=1)
    mask_part = per_candidate.gather(1, best[:, None])[:, 0]
    true_iou = mask_iou(logits.detach(), expanded)
    iou_part = F.mse_loss(iou_predictions, true_iou, reduction="none").mean(dim=1)
    return mask_part + iou_part, best
