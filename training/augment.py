"""Batch augmentation for training: what differs between sensors, places and scales.

Flips and 90-degree rotations happen per tile in ``SegmentationTiles``; this
module works on a whole batch of images scaled to 0..1 (``[N, 3, H, W]``) and
its labels (``[N, H, W]``, 255 = ignore), before normalisation:

* **colour** (``color`` strength s): per tile brightness shift ``±0.25 s``,
  contrast and saturation factors in ``[1 - 0.5 s, 1 + 0.5 s]``, per-channel
  gains (white balance) in ``[1 - 0.15 s, 1 + 0.15 s]`` and a gamma in
  ``[1 - 0.4 s, 1 + 0.4 s]``: drone cameras, satellites and seasons differ
  mostly in these.
* **blur** (probability p): a Gaussian blur of sigma 0.5..1.5 px, for imagery
  that is softer than the training tiles (resampled or satellite).
* **noise**: Gaussian noise of sigma up to ``0.03 s``, half the tiles.
* **scale** (``scale_range`` (a, b)): the batch is resized by one factor drawn
  log-uniformly from [a, b] (labels nearest-neighbour) and cropped back to the
  tile size, or padded with mirrored image and ignored labels when it shrank;
  buildings and roads come in many sizes per pixel.

Every draw comes from one ``torch.Generator``, so a seeded run repeats.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F  # noqa: N812 - the usual torch spelling

from .dataset.manifest import IGNORE_INDEX


@dataclass(frozen=True)
class AugmentConfig:
    """Strengths of the batch augmentations; all zero (and scale 1..1) is none."""

    color: float = 0.0
    blur: float = 0.0
    scale_range: tuple[float, float] = (1.0, 1.0)

    @property
    def active(self) -> bool:
        return self.color > 0 or self.blur > 0 or self.scale_range != (1.0, 1.0)


def _uniform(gen: torch.Generator, shape: tuple[int, ...], lo: float, hi: float) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(shape, generator=gen)


def jitter_colors(x: torch.Tensor, strength: float, gen: torch.Generator) -> torch.Tensor:
    """Random brightness, contrast, saturation, channel gains, gamma and noise per tile (0..1 in and out)."""
    n = x.shape[0]
    s = strength
    gray = x.mean(dim=1, keepdim=True)
    sat = _uniform(gen, (n, 1, 1, 1), 1 - 0.5 * s, 1 + 0.5 * s)
    x = gray + (x - gray) * sat
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    contrast = _uniform(gen, (n, 1, 1, 1), 1 - 0.5 * s, 1 + 0.5 * s)
    x = mean + (x - mean) * contrast
    x = x * _uniform(gen, (n, x.shape[1], 1, 1), 1 - 0.15 * s, 1 + 0.15 * s)  # a gain per band
    x = x + _uniform(gen, (n, 1, 1, 1), -0.25 * s, 0.25 * s)
    x = x.clamp(0, 1) ** _uniform(gen, (n, 1, 1, 1), 1 - 0.4 * s, 1 + 0.4 * s)
    noisy = (torch.rand((n, 1, 1, 1), generator=gen) < 0.5).float()
    sigma = _uniform(gen, (n, 1, 1, 1), 0, 0.03 * s) * noisy
    x = x + sigma * torch.randn(x.shape, generator=gen)
    return x.clamp(0, 1)


def gaussian_kernel(sigma: float) -> torch.Tensor:
    """A normalised 1-D Gaussian of radius ``ceil(2 sigma)``."""
    radius = max(1, math.ceil(2 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-(t**2) / (2 * sigma**2))
    return k / k.sum()


def blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of ``[N, C, H, W]`` with reflected borders."""
    k = gaussian_kernel(sigma).to(x)
    r = (len(k) - 1) // 2
    c = x.shape[1]
    x = F.pad(x, (r, r, 0, 0), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    x = F.pad(x, (0, 0, r, r), mode="reflect")
    return F.conv2d(x, k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


def rescale(
    x: torch.Tensor, y: torch.Tensor, factor: float, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Resize a batch by ``factor`` and bring it back to its size (random crop, or mirrored pad + ignore)."""
    h, w = x.shape[-2:]
    nh, nw = max(8, round(h * factor)), max(8, round(w * factor))
    if (nh, nw) == (h, w):
        return x, y
    x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False, antialias=factor < 1)
    y = F.interpolate(y[:, None].float(), size=(nh, nw), mode="nearest")[:, 0].long()
    if nh >= h and nw >= w:
        top = int(torch.randint(nh - h + 1, (1,), generator=gen))
        left = int(torch.randint(nw - w + 1, (1,), generator=gen))
        return x[..., top : top + h, left : left + w], y[..., top : top + h, left : left + w]
    ph, pw = h - nh, w - nw
    top, left = (
        int(torch.randint(ph + 1, (1,), generator=gen)),
        int(torch.randint(pw + 1, (1,), generator=gen)),
    )
    pad = (left, pw - left, top, ph - top)
    # Mirrored imagery keeps the statistics the network sees; the mirrored labels are not
    # ground truth, so they are ignored. Reflection needs pads smaller than the image.
    mode = "reflect" if max(pad) < min(nh, nw) else "replicate"
    x = F.pad(x, pad, mode=mode)
    y = F.pad(y, pad, value=IGNORE_INDEX)
    return x, y


def augment_batch(
    x: torch.Tensor, y: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply ``cfg`` to images ``x`` (0..1, ``[N, 3, H, W]``) and labels ``y`` (``[N, H, W]``)."""
    lo, hi = cfg.scale_range
    if (lo, hi) != (1.0, 1.0):
        factor = math.exp(float(_uniform(gen, (1,), math.log(lo), math.log(hi))))
        x, y = rescale(x, y, factor, gen)
    if cfg.color > 0:
        x = jitter_colors(x, cfg.color, gen)
    if cfg.blur > 0:
        which = torch.rand(x.shape[0], generator=gen) < cfg.blur
        if bool(which.any()):
            sigma = float(_uniform(gen, (1,), 0.5, 1.5))
            x = x.clone()
            x[which] = blur(x[which], sigma)
    return x.contiguous(), y.contiguous()
