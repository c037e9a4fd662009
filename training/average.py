"""Average the weights of several checkpoints of one run (stochastic weight averaging).

    python -m training.average runs/NAME/snapshots/epoch-04[4-8].pt --out runs/NAME/average.pt

The last epochs of one run lie around the same minimum; their mean lies nearer
its flat middle, which tends to hold up better on places the run never saw
than any one of them (Izmailov et al., 2018). Batch-norm statistics belong to
the weights that produced them, so they are measured again for the mean: one
pass over the run's training tiles (``--data``, default the dataset the
checkpoints name) in training mode, no gradients, the tiles as they are (as
imagery reaches the model at inference).
The result is a checkpoint like ``best.pt`` (the last snapshot's metadata),
for ``validate``, ``export`` and ``--init``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from satseg_plugin.inference.cli import DefaultsHelpFormatter, run_cli
from satseg_plugin.inference.errors import ModelError, SatsegError
from satseg_plugin.inference.progress import ProgressBar

from .checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from .data import SegmentationTiles, checkpoint_split, load_dataset


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m training.average",
        description="Average the weights of checkpoints of one run (e.g. its last epochs' "
        "snapshots from train --snapshots) and measure batch-norm statistics again for the mean.",
        formatter_class=DefaultsHelpFormatter,
    )
    p.add_argument("checkpoints", nargs="+", type=Path, help="two or more .pt checkpoints of one network")
    p.add_argument("--out", type=Path, required=True, help="the averaged checkpoint to write")
    p.add_argument(
        "--data", type=Path, default=None,
        help="dataset whose training tiles (by the checkpoints' split) set the batch-norm statistics "
        "(default: the dataset the checkpoints name)",
    )  # fmt: skip
    p.add_argument("--batch-size", type=int, default=16, help="tiles per forward pass for the statistics")
    p.add_argument("--limit", type=int, default=None, help="use at most this many training tiles")
    return p


def average_state(states: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The element-wise mean of each floating tensor; integer buffers from the last state.

    Raises ``ModelError`` when the states do not hold the same tensors.
    """
    first = states[0]
    for k, state in enumerate(states[1:], 2):
        if state.keys() != first.keys() or any(state[n].shape != first[n].shape for n in first):
            raise ModelError(f"checkpoint {k} holds other tensors than the first: not the same network")
    out: dict[str, torch.Tensor] = {}
    for name, value in first.items():
        if value.dtype.is_floating_point:
            out[name] = torch.stack([s[name].double() for s in states]).mean(0).to(value.dtype)
        else:
            out[name] = states[-1][name].clone()
    return out


@torch.no_grad()
def recompute_batchnorm(
    net: nn.Module, loader: torch.utils.data.DataLoader, bar: ProgressBar | None = None
) -> int:
    """Set every batch-norm layer's running mean and variance to their average over ``loader``.

    Returns the number of tiles seen. ``momentum=None`` makes torch keep a
    cumulative (equal-weight) average instead of an exponential one.
    """
    layers = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in layers]
    for m in layers:
        m.reset_running_stats()
        m.momentum = None
    net.train()
    seen = 0
    try:
        for images, _labels in loader:
            net(images)
            seen += len(images)
            if bar is not None:
                bar.update(len(images))
    finally:
        for m, momentum in zip(layers, saved, strict=True):
            m.momentum = momentum
        net.eval()
    return seen


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if len(args.checkpoints) < 2:
        raise SatsegError("name at least two checkpoints to average")
    if args.batch_size < 1:
        raise SatsegError("--batch-size must be at least 1")
    ckpts = [load_checkpoint(p) for p in args.checkpoints]
    last = ckpts[-1]
    for p, c in zip(args.checkpoints, ckpts, strict=True):
        if list(c["class_names"]) != list(last["class_names"]) or float(c["width"]) != float(last["width"]):
            raise ModelError(f"{p} is another network (classes or width differ from {args.checkpoints[-1]})")
    net = model_from_checkpoint({**last, "state_dict": average_state([c["state_dict"] for c in ckpts])})
    data = args.data or (Path(last["data"]) if last.get("data") else None)
    if data is None:
        raise SatsegError("the checkpoints name no dataset: give --data")
    ds = load_dataset(data)
    train_idx, _val = checkpoint_split(ds.groups, last)
    if args.limit:
        train_idx = train_idx[: args.limit]
    tiles = SegmentationTiles(ds.cache, train_idx, mean=ds.mean, std=ds.std)
    loader = torch.utils.data.DataLoader(tiles, batch_size=args.batch_size)
    with ProgressBar(len(train_idx), "batch-norm statistics") as bar:
        seen = recompute_batchnorm(net, loader, bar)
    out: dict[str, Any] = {k: v for k, v in last.items() if k not in ("optimizer", "scheduler", "log")}
    out["state_dict"] = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    out["averaged"] = [str(p) for p in args.checkpoints]
    save_checkpoint(args.out, out)
    print(f"averaged {len(ckpts)} checkpoints, batch-norm statistics from {seen} tiles of {data}: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
