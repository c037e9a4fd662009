"""Training losses: cross-entropy, soft Dice, Lovász-softmax, and sums of them.

Cross-entropy optimises per-pixel accuracy, which a majority class dominates;
the soft Dice loss (Milletari et al. 2016) scores each class by its overlap
with the labels, so a rare class weighs as much as a common one, close to what
IoU rewards. The Lovász-softmax loss (Berman et al. 2018) is the convex
extension of the Jaccard loss itself: for each class it weighs the pixels'
errors, sorted, by how much each one costs the class's IoU. ``ce+dice`` and
``ce+lovasz`` add cross-entropy, which keeps the gradients smooth early on.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812 - the usual torch spelling
from torch import nn

LOSSES = ("ce", "dice", "ce+dice", "lovasz", "ce+lovasz")


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


def lovasz_softmax_loss(logits: torch.Tensor, target: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """Lovász-softmax loss over the batch's pixels, averaged over the classes present in ``target``.

    For class ``c`` the errors ``|[label == c] - p_c|`` are sorted in
    decreasing order and weighted by the gradient of the Jaccard loss at that
    order (the Lovász extension of ``1 - IoU``), so the loss equals
    ``1 - IoU`` for hard 0/1 predictions. Ignored pixels are left out;
    NaN for a batch with no labelled pixel, like cross-entropy.
    """
    c = logits.shape[1]
    probs = torch.softmax(logits, dim=1).permute(0, 2, 3, 1).reshape(-1, c)
    labels = target.reshape(-1)
    keep = labels != ignore_index
    probs, labels = probs[keep], labels[keep]
    losses = []
    for k in torch.unique(labels).tolist():
        fg = (labels == k).to(probs.dtype)
        errors, order = torch.sort((fg - probs[:, k]).abs(), descending=True)
        fg_sorted = fg[order]
        total = fg_sorted.sum()
        intersection = total - fg_sorted.cumsum(0)
        union = total + (1 - fg_sorted).cumsum(0)
        jaccard = 1 - intersection / union
        grad = torch.cat((jaccard[:1], jaccard[1:] - jaccard[:-1]))
        losses.append(torch.dot(errors, grad))
    if not losses:
        return logits.sum() * float("nan")
    return torch.stack(losses).mean()


class SegmentationLoss(nn.Module):
    """One of ``LOSSES`` (cross-entropy optionally class-weighted)."""

    def __init__(self, kind: str, weight: torch.Tensor | None, ignore_index: int) -> None:
        super().__init__()
        if kind not in LOSSES:
            raise ValueError(f"loss must be one of {', '.join(LOSSES)}, not {kind!r}")
        self.kind = kind
        self.ignore_index = ignore_index
        self.ce = nn.CrossEntropyLoss(weight=weight, ignore_index=ignore_index)
        self.with_ce = kind.startswith("ce")
        self.region = _REGION_LOSSES.get(kind.removeprefix("ce+"))  # None for plain "ce"

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.region is None:
            return self.ce(logits, target)
        region = self.region(logits, target, self.ignore_index)
        return self.ce(logits, target) + region if self.with_ce else region


#: The overlap losses ``LOSSES`` names, alone or after ``ce+``.
_REGION_LOSSES = {"dice": soft_dice_loss, "lovasz": lovasz_softmax_loss}
