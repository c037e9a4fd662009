"""Training losses: cross-entropy, soft Dice, and their sum.

Cross-entropy optimises per-pixel accuracy, which a majority class dominates;
the soft Dice loss (Milletari et al. 2016) scores each class by its overlap
with the labels, so a rare class weighs as much as a common one, close to what
IoU rewards. ``ce+dice`` adds the two: cross-entropy keeps the gradients
smooth early on, Dice keeps rare classes from being given up.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812 - the usual torch spelling
from torch import nn

LOSSES = ("ce", "dice", "ce+dice")


def soft_dice_loss(
    logits: torch.Tensor, target: torch.Tensor, ignore_index: int, smooth: float = 1.0
) -> torch.Tensor:
    """``1 - mean`` soft Dice over the classes present in ``target`` (ignored pixels left out).

    Classes absent from the batch's labels are left out of the mean: their
    Dice is 0 or 1 by accident of the batch, not by the model's skill.
    Returns NaN for a batch with no labelled pixel, like cross-entropy.
    """
    c = logits.shape[1]
    keep = (target != ignore_index).unsqueeze(1)
    probs = torch.softmax(logits, dim=1) * keep
    onehot = F.one_hot(torch.where(keep[:, 0], target, 0), c).permute(0, 3, 1, 2).to(probs) * keep
    dims = (0, 2, 3)
    inter = (probs * onehot).sum(dims)
    denom = probs.sum(dims) + onehot.sum(dims)
    present = onehot.sum(dims) > 0
    if not bool(present.any()):
        return logits.sum() * float("nan")
    dice = (2 * inter + smooth) / (denom + smooth)
    return 1 - dice[present].mean()


class SegmentationLoss(nn.Module):
    """``ce``, ``dice`` or ``ce+dice`` (optionally class-weighted cross-entropy)."""

    def __init__(self, kind: str, weight: torch.Tensor | None, ignore_index: int) -> None:
        super().__init__()
        if kind not in LOSSES:
            raise ValueError(f"loss must be one of {', '.join(LOSSES)}, not {kind!r}")
        self.kind = kind
        self.ignore_index = ignore_index
        self.ce = nn.CrossEntropyLoss(weight=weight, ignore_index=ignore_index)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.kind == "ce":
            return self.ce(logits, target)
        dice = soft_dice_loss(logits, target, self.ignore_index)
        if self.kind == "dice":
            return dice
        return self.ce(logits, target) + dice
