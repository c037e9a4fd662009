"""SegNet (Badrinarayanan, Kendall, Cipolla 2017) with a width multiplier.

Encoder: the 13 conv layers of VGG16-BN (3x3 conv, batch norm, ReLU) in five
stages, each ending in a 2x2 max-pool that keeps its indices. Decoder: the
mirror image, each stage starting with ``max_unpool2d`` at the indices of the
matching encoder pool, then a 1x1 conv to the classes. The classifier reads the
last decoder layer after its ReLU (``head`` "relu", the paper's) or before it,
after batch norm (``head`` "bn"): behind a ReLU, pixels whose 16 features (at
width 0.25) are all zero get the classifier's bias alone, as about half the
building pixels of the first two-class default did. ``forward`` returns
logits ``[N, C, H, W]``; ``SoftmaxSegNet`` (the exported graph) returns softmax
probabilities, ``FlipAveraged`` their mean over the input's mirror images
(test-time flips, where a model's card measured that they pay).

Input: float32 ``[N, 3, H, W]`` in RGB order, ``(uint8 / 255 - MEAN) / STD``
with ``satseg_plugin.inference.metadata.MEAN/STD``; H and W multiples of 32. A
model of ``in_channels`` B (an N-band dataset: RGB + near-infrared, say) takes
``[N, B, H, W]`` standardised with the dataset's own per-band statistics.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812 - the usual torch spelling
from torch import nn

#: VGG16 conv widths per encoder stage (width 1.0).
ENCODER_STAGES: tuple[tuple[int, ...], ...] = (
    (64, 64),
    (128, 128),
    (256, 256, 256),
    (512, 512, 512),
    (512, 512, 512),
)

#: What the classifier reads: the last decoder layer after its ReLU, or after its batch norm.
HEADS: tuple[str, ...] = ("relu", "bn")


def scaled(channels: int, width: float) -> int:
    """Channels of a layer at width multiplier ``width`` (at least 4)."""
    return max(4, round(channels * width))


def _conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


class SegNet(nn.Module):
    """SegNet for ``num_classes`` classes at width multiplier ``width`` (1.0 = the paper's),
    over ``in_channels`` input bands (3: RGB), its classifier reading the ``head`` (``HEADS``)."""

    def __init__(
        self, num_classes: int, width: float = 1.0, in_channels: int = 3, head: str = "relu"
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, not {num_classes}")
        if width <= 0:
            raise ValueError(f"width must be positive, not {width}")
        if in_channels < 1:
            raise ValueError(f"in_channels must be positive, not {in_channels}")
        if head not in HEADS:
            raise ValueError(f"head must be one of {', '.join(HEADS)}, not {head!r}")
        self.num_classes = num_classes
        self.width = float(width)
        self.in_channels = in_channels
        self.head = head
        stages = [[scaled(c, width) for c in stage] for stage in ENCODER_STAGES]
        self.encoder = nn.ModuleList()
        cin = in_channels
        for stage in stages:
            layers = []
            for cout in stage:
                layers.append(_conv_bn_relu(cin, cout))
                cin = cout
            self.encoder.append(nn.Sequential(*layers))
        # Decoder stage k mirrors encoder stage k: same convs in reverse, its last conv
        # narrowing to the width of the stage before (64 at the top, as in the paper).
        self.decoder = nn.ModuleList()
        for k in reversed(range(len(stages))):
            stage = stages[k]
            out_last = stages[k - 1][-1] if k > 0 else stages[0][0]
            layers = []
            for j in range(len(stage)):
                cout = out_last if j == len(stage) - 1 else stage[j]
                layers.append(_conv_bn_relu(stage[j], cout))
            self.decoder.append(nn.Sequential(*layers))
        if head == "bn":  # the same parameters and state_dict keys; only the ReLU goes
            self.decoder[-1][-1][2] = nn.Identity()
        self.classifier = nn.Conv2d(stages[0][0], num_classes, 1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        # A small classifier starts near uniform probabilities (loss ~ log C) instead of
        # confident noise, which narrow networks take many steps to unlearn.
        nn.init.normal_(self.classifier.weight, std=0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return logits ``[N, num_classes, H, W]`` for normalised ``x`` ``[N, in_channels, H, W]``."""
        pools = []
        for stage in self.encoder:
            x = stage(x)
            size = x.shape[-2:]
            x, idx = F.max_pool2d(x, 2, 2, return_indices=True)
            pools.append((idx, size))
        for stage, (idx, size) in zip(self.decoder, reversed(pools), strict=True):
            x = F.max_unpool2d(x, idx, 2, 2, output_size=size)
            x = stage(x)
        return self.classifier(x)


class SoftmaxSegNet(nn.Module):
    """``SegNet`` with softmax over classes: the graph that export writes."""

    def __init__(self, net: SegNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.net(image), dim=1)


#: Mirror images ``FlipAveraged`` may average over: none, left-right, and also up-down and both.
FLIPS = (1, 2, 4)
_FLIP_DIMS: tuple[tuple[int, ...], ...] = ((), (3,), (2,), (2, 3))


class FlipAveraged(nn.Module):
    """The probabilities of ``model`` averaged over its input and ``flips - 1`` mirror images of it.

    ``flips`` 2: as it is and mirrored left-right; 4: also up-down and both ways.
    Each mirror image's probabilities are mirrored back before the mean, so the
    result lines up with the input and the model becomes exactly equivariant to
    those mirrors. Mirrors, unlike rotations by 90 degrees, keep the shape of
    any window. Costs ``flips`` times the model's time, not its memory: the
    mirror images run one after another.
    """

    def __init__(self, model: nn.Module, flips: int) -> None:
        super().__init__()
        if flips not in FLIPS:
            raise ValueError(f"flips must be one of {', '.join(map(str, FLIPS))}, not {flips}")
        self.model = model
        self.dims = _FLIP_DIMS[:flips]

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        total = self.model(image)
        for dims in self.dims[1:]:
            total = total + torch.flip(self.model(torch.flip(image, dims)), dims)
        return total / len(self.dims)


def probability_model(net: SegNet, flips: int = 1) -> nn.Module:
    """The graph a model ships as: softmax probabilities, averaged over ``flips`` mirror images."""
    model = SoftmaxSegNet(net)
    return model if flips == 1 else FlipAveraged(model, flips)
