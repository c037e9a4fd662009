"""Train a SegNet on a satseg dataset folder.

    python -m training.train --data data/ --out runs/NAME [options]

Each epoch appends a row to ``OUT/training_log.csv`` (epoch, loss, val_loss,
acc, val_acc, val_mIoU, lr, seconds) and writes ``OUT/last.pt`` (with optimizer
and scheduler state, for ``--resume``) and, when the validation mIoU improves,
``OUT/best.pt``. Ctrl-C writes ``last.pt`` before it exits.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from satseg_plugin.inference.atomic import write_text_atomic
from satseg_plugin.inference.cli import run_cli
from satseg_plugin.inference.errors import SatsegError
from satseg_plugin.inference.metadata import DEFAULT_OVERLAP_PERCENT, MEAN, STD
from satseg_plugin.inference.progress import ProgressBar

from .checkpoint import load_checkpoint, save_checkpoint
from .data import IGNORE_INDEX, SegmentationTiles, TileDataset, load_dataset, read_tiles, split_indices
from .metrics import confusion_matrix, scores
from .model import SegNet
from .predictor import pick_device

LOG_HEADER = "epoch,loss,val_loss,acc,val_acc,val_mIoU,lr,seconds"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m training.train",
        description="Train SegNet on a dataset folder made by python -m training.dataset.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--data", type=Path, required=True, help="dataset folder (manifest.json, images/, labels/)"
    )
    p.add_argument("--out", type=Path, required=True, help="run folder for checkpoints and training_log.csv")
    p.add_argument("--validation", type=float, default=0.2, help="share of tiles held out (whole scenes)")
    p.add_argument("--epochs", type=int, default=10, help="total epochs (a resumed run counts those done)")
    p.add_argument("--lr", type=float, default=0.001, help="initial learning rate")
    p.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    p.add_argument("--optimizer", choices=("sgd", "adam"), default="sgd", help="optimiser")
    p.add_argument(
        "--schedule", choices=("constant", "cosine"), default="cosine",
        help="learning-rate schedule over the epochs",
    )  # fmt: skip
    p.add_argument("--batch-size", type=int, default=8, help="tiles per step")
    p.add_argument(
        "--weight-decay", type=float, default=0.0005,
        help="L2 weight decay (a penalty on the weights, not a learning-rate decay)",
    )  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="seed of the split, the weights and the shuffling")
    p.add_argument("--width", type=float, default=1.0, help="width multiplier (1.0 = the paper's SegNet)")
    p.add_argument(
        "--class-weights", choices=("none", "median"), default="none",
        help="loss weights: none, or median frequency balancing (Eigen & Fergus)",
    )  # fmt: skip
    p.add_argument(
        "--augment", action=argparse.BooleanOptionalAction, default=True,
        help="random flips and 90-degree rotations of training tiles",
    )  # fmt: skip
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")
    p.add_argument("--workers", type=int, default=0, help="data-loading worker processes")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    p.add_argument("--rebuild-cache", action="store_true", help="rebuild data/training.hdf5 even if current")
    return p


def median_frequency_weights(label_counts: np.ndarray, image_counts: np.ndarray) -> np.ndarray:
    """Median frequency balancing: ``median(freq) / freq[c]``, 0 for absent classes.

    ``freq[c]`` = pixels of class c / pixels of the tiles where c appears
    (``label_counts[c] / image_counts[c]``).
    """
    present = (label_counts > 0) & (image_counts > 0)
    freq = np.zeros(len(label_counts))
    freq[present] = label_counts[present] / image_counts[present]
    weights = np.zeros(len(label_counts))
    if present.any():
        weights[present] = np.median(freq[present]) / freq[present]
    return weights


def class_pixel_stats(ds: TileDataset, indices: list[int], num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Per class: labelled pixels, and total pixels of the tiles where it appears."""
    label_counts = np.zeros(num_classes, np.int64)
    image_counts = np.zeros(num_classes, np.int64)
    for start in range(0, len(indices), 64):
        _, labels = read_tiles(ds.cache, indices[start : start + 64])
        for lab in labels:
            c = np.bincount(lab.ravel(), minlength=256)[:num_classes]
            label_counts += c
            image_counts += np.where(c > 0, lab.size, 0)
    return label_counts, image_counts


def evaluate(
    net: nn.Module, loader: DataLoader, criterion: nn.Module, device: torch.device, num_classes: int
) -> tuple[float, np.ndarray]:
    """Mean loss and confusion matrix of ``net`` over ``loader``."""
    net.eval()
    cm = np.zeros((num_classes, num_classes), np.int64)
    total, n = 0.0, 0
    with torch.inference_mode():
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            logits = net(x)
            loss = criterion(logits, y)
            if torch.isfinite(loss):  # an all-ignore batch gives NaN
                total += float(loss.detach()) * len(x)
                n += len(x)
            cm += confusion_matrix(y.cpu().numpy(), logits.argmax(1).cpu().numpy(), num_classes)
    return (total / n if n else float("nan")), cm


def _fmt(v: float) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.6g}"


@contextlib.contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Hold Ctrl-C (SIGINT) until the block is done, then raise ``KeyboardInterrupt``.

    Outside the main thread Python delivers no signals, and the block runs as it is.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, _frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for name in ("epochs", "batch_size"):
        if getattr(args, name) < 1:
            raise SatsegError(f"--{name.replace('_', '-')} must be at least 1")
    if args.lr <= 0 or args.width <= 0:
        raise SatsegError("--lr and --width must be positive")
    device = pick_device(args.device)
    ds = load_dataset(args.data, rebuild=args.rebuild_cache)
    num_classes = len(ds.class_names)
    train_idx, val_idx = split_indices(ds.groups, args.validation, args.seed)
    n_scenes = len({ds.groups[i] for i in val_idx})
    print(
        f"{len(ds.ids)} tiles, {num_classes} classes ({', '.join(ds.class_names)}); "
        f"train {len(train_idx)}, validation {len(val_idx)} ({n_scenes} scene(s)); device {device}"
    )

    torch.manual_seed(args.seed)
    net = SegNet(num_classes, args.width).to(device)
    if args.optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(
            net.parameters(), lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay
        )
    else:
        opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    if args.schedule == "cosine":
        sched: torch.optim.lr_scheduler.LRScheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            opt, T_max=args.epochs
        )
    else:
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)

    weights = None
    if args.class_weights == "median":
        w = median_frequency_weights(*class_pixel_stats(ds, train_idx, num_classes))
        print("class weights: " + ", ".join(f"{n} {v:.3f}" for n, v in zip(ds.class_names, w, strict=True)))
        weights = torch.tensor(w, dtype=torch.float32, device=device)
    criterion = nn.CrossEntropyLoss(weight=weights, ignore_index=IGNORE_INDEX)

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    log_path = out / "training_log.csv"
    start_epoch, best_miou = 0, -1.0
    if args.resume:
        ckpt = load_checkpoint(out / "last.pt")
        if list(ckpt["class_names"]) != ds.class_names or float(ckpt["width"]) != args.width:
            raise SatsegError(
                f"{out / 'last.pt'} is a width {ckpt['width']} model for classes {ckpt['class_names']}; "
                f"this run has width {args.width} and classes {ds.class_names}"
            )
        net.load_state_dict(ckpt["state_dict"])
        if "optimizer" in ckpt:
            opt.load_state_dict(ckpt["optimizer"])
        if "scheduler" in ckpt:
            sched.load_state_dict(ckpt["scheduler"])
        start_epoch = int(ckpt["epoch"])
        best_miou = float(ckpt.get("best_miou", -1.0))
        print(f"resuming after epoch {start_epoch} (best val mIoU {best_miou:.4f})")
    elif log_path.exists():
        log_path.unlink()  # a fresh run starts a fresh log
    log = log_path.read_text(encoding="utf-8") if log_path.exists() else LOG_HEADER + "\n"

    gen = torch.Generator().manual_seed(args.seed + start_epoch)
    train_loader = DataLoader(
        SegmentationTiles(ds.cache, train_idx, augment=args.augment, seed=args.seed + start_epoch),
        batch_size=args.batch_size, shuffle=True, num_workers=args.workers, generator=gen, drop_last=False,
    )  # fmt: skip
    val_loader = DataLoader(
        SegmentationTiles(ds.cache, val_idx), batch_size=args.batch_size, num_workers=args.workers
    )

    def checkpoint(epoch: int, with_state: bool) -> dict[str, Any]:
        ckpt: dict[str, Any] = {
            "state_dict": {k: v.detach().cpu() for k, v in net.state_dict().items()},
            "class_names": ds.class_names,
            "class_colors": ds.class_colors,
            "width": float(args.width),
            "tile_size": ds.tile_size,
            "tiles_overlap": DEFAULT_OVERLAP_PERCENT,
            "zoom": ds.zoom,
            "resolution_cm": ds.resolution_cm,
            "mean": list(MEAN),
            "std": list(STD),
            "epoch": epoch,
            "best_miou": best_miou,
            "seed": args.seed,
            "val_fraction": args.validation,
            "data": str(Path(args.data).resolve()),
        }
        if with_state:
            ckpt["optimizer"] = opt.state_dict()
            ckpt["scheduler"] = sched.state_dict()
        return ckpt

    completed = start_epoch
    try:
        for epoch in range(start_epoch + 1, args.epochs + 1):
            t0 = time.monotonic()
            net.train()
            lr = opt.param_groups[0]["lr"]
            total, n, correct, counted = 0.0, 0, 0, 0
            with ProgressBar(len(train_loader), f"epoch {epoch}/{args.epochs}") as bar:
                for x, y in train_loader:
                    x, y = x.to(device), y.to(device)
                    logits = net(x)
                    loss = criterion(logits, y)
                    opt.zero_grad(set_to_none=True)
                    if torch.isfinite(loss):  # skip an all-ignore batch
                        loss.backward()
                        opt.step()
                        total += float(loss.detach()) * len(x)
                        n += len(x)
                    with torch.no_grad():
                        keep = y != IGNORE_INDEX
                        correct += int((logits.argmax(1)[keep] == y[keep]).sum())
                        counted += int(keep.sum())
                    bar.update()
            sched.step()
            train_loss = total / n if n else float("nan")
            train_acc = correct / counted if counted else float("nan")
            if val_idx:
                val_loss, cm = evaluate(net, val_loader, criterion, device, num_classes)
                s = scores(cm)
                val_acc, val_miou = float(s["accuracy"]), float(s["miou"])  # type: ignore[arg-type]
            else:
                val_loss, val_acc, val_miou = float("nan"), float("nan"), float("nan")
            seconds = time.monotonic() - t0
            improved = (not math.isnan(val_miou) and val_miou > best_miou) or (not val_idx)
            if improved and not math.isnan(val_miou):
                best_miou = val_miou
            row = [epoch, train_loss, val_loss, train_acc, val_acc, val_miou, lr, seconds]
            with interrupts_deferred():  # the log row and both checkpoints agree, whenever Ctrl-C comes
                log += ",".join(_fmt(v) if not isinstance(v, int) else str(v) for v in row) + "\n"
                write_text_atomic(log_path, log)
                save_checkpoint(out / "last.pt", checkpoint(epoch, with_state=True))
                if improved:
                    save_checkpoint(out / "best.pt", checkpoint(epoch, with_state=False))
                completed = epoch
            print(
                f"epoch {epoch}: loss {train_loss:.4f} acc {train_acc:.4f} | val loss {val_loss:.4f} "
                f"acc {val_acc:.4f} mIoU {val_miou:.4f} | lr {lr:.3g} | {seconds:.1f}s"
                + (" *" if improved else "")
            )
    except KeyboardInterrupt:
        # The weights of the unfinished epoch are kept; --resume repeats that epoch.
        save_checkpoint(out / "last.pt", checkpoint(completed, with_state=True))
        print(f"\ninterrupted: saved {out / 'last.pt'}; continue with --resume", file=sys.stderr)
        raise
    print(f"done: best validation mIoU {best_miou:.4f}; checkpoints in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
