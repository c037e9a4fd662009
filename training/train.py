"""Train a SegNet on a satseg dataset folder.

    python -m training.train --data data/ --out runs/NAME [options]

Each epoch appends a row to ``OUT/training_log.csv`` (epoch, loss, val_loss,
acc, val_acc, val_mIoU, lr, seconds) and writes ``OUT/last.pt`` (with optimizer
and schedule state, for ``--resume``) and, when the validation mIoU improves,
``OUT/best.pt``. Ctrl-C (or SIGTERM) writes ``last.pt`` before it exits.

``--init`` fine-tunes from another checkpoint (a new classifier when its classes
differ); ``--max-minutes`` and ``--patience`` end training by time or when
validation stops improving; ``--loss``, ``--color``, ``--blur`` and ``--scale``
choose the loss and the augmentations (``training.losses``, ``training.augment``);
``--ema`` validates, checkpoints and ships a moving average of the weights
(``training.ema``). A dataset of other than RGB (``import-masks --bands``)
trains a model of its bands, standardised with their measured statistics; the
checkpoint records ``channels`` and ``input_bands`` for export.
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
from satseg_plugin.inference.cli import DefaultsHelpFormatter, run_cli
from satseg_plugin.inference.errors import SatsegError
from satseg_plugin.inference.metadata import DEFAULT_OVERLAP_PERCENT
from satseg_plugin.inference.progress import ProgressBar
from satseg_plugin.inference.runfolder import output_folder

from .augment import AugmentConfig, augment_batch
from .checkpoint import checkpoint_head, load_checkpoint, save_checkpoint
from .data import (
    IGNORE_INDEX,
    SegmentationTiles,
    TileDataset,
    load_dataset,
    normalize_tensor,
    read_tiles,
    scene_names,
    split_indices,
    split_named,
)
from .ema import WeightEMA
from .losses import LOSSES, SegmentationLoss
from .metrics import confusion_matrix, scores
from .model import HEADS, SegNet
from .predictor import pick_device
from .schedule import SCHEDULES, LRSchedule

LOG_HEADER = "epoch,loss,val_loss,acc,val_acc,val_mIoU,lr,seconds"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m training.train",
        description="Train SegNet on a dataset folder made by python -m training.dataset.",
        formatter_class=DefaultsHelpFormatter,
    )
    p.add_argument(
        "--data", type=Path, required=True, help="dataset folder (manifest.json, images/, labels/)"
    )
    p.add_argument("--out", type=Path, required=True, help="run folder for checkpoints and training_log.csv")
    p.add_argument("--validation", type=float, default=0.2, help="share of tiles held out (whole scenes)")
    p.add_argument(
        "--validation-scenes",
        metavar="NAMES",
        help="validate on exactly these scenes of scenes.csv (comma-separated, e.g. tile1) instead of a "
        "seeded --validation share: a place the model never trains on, the same from run to run",
    )
    p.add_argument("--epochs", type=int, default=10, help="total epochs (a resumed run counts those done)")
    p.add_argument("--lr", type=float, default=0.001, help="initial learning rate")
    p.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    p.add_argument("--optimizer", choices=("sgd", "adam"), default="sgd", help="optimiser")
    p.add_argument(
        "--schedule", choices=SCHEDULES, default="cosine",
        help="learning-rate schedule over the steps (or the --max-minutes); a resumed run of another "
        "length anneals from the rate it reached, never raising it",
    )  # fmt: skip
    p.add_argument("--batch-size", type=int, default=8, help="tiles per step")
    p.add_argument(
        "--weight-decay", type=float, default=0.0005,
        help="L2 weight decay (a penalty on the weights, not a learning-rate decay)",
    )  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="seed of the split, the weights and the shuffling")
    p.add_argument(
        "--width", type=float, default=None,
        help="width multiplier (1.0 = the paper's SegNet); default 1.0, or the --init model's",
    )  # fmt: skip
    p.add_argument(
        "--head", choices=HEADS, default=None,
        help="what the 1x1 classifier reads: the last decoder layer after its ReLU (relu, the "
        "paper's) or before it, after batch norm (bn: no pixel's features are all zero, so "
        "no pixel gets the bias alone); default relu, or the --init model's",
    )  # fmt: skip
    p.add_argument(
        "--class-weights", choices=("none", "median"), default="none",
        help="loss weights: none, or median frequency balancing (Eigen & Fergus)",
    )  # fmt: skip
    p.add_argument(
        "--augment", action=argparse.BooleanOptionalAction, default=True,
        help="random flips and 90-degree rotations of training tiles",
    )  # fmt: skip
    p.add_argument(
        "--loss", choices=LOSSES, default="ce",
        help="cross-entropy, soft Dice or Lovász-softmax over the classes present, or cross-entropy "
        "plus one of them (Dice and Lovász serve rare classes' IoU; Lovász is IoU's own surrogate)",
    )  # fmt: skip
    p.add_argument(
        "--color", type=float, default=0.0, metavar="S",
        help="colour augmentation strength: brightness, contrast, saturation, channel gains, gamma, "
        "noise (0 = off, 1 = strong)",
    )  # fmt: skip
    p.add_argument(
        "--blur", type=float, default=0.0, metavar="P", help="share of tiles blurred (sigma 0.5-1.5 px)"
    )
    p.add_argument(
        "--scale", default="1,1", metavar="MIN,MAX",
        help="random rescale of each batch by a factor in [MIN, MAX] (e.g. 0.7,1.4; 1,1 = off)",
    )  # fmt: skip
    p.add_argument(
        "--init", type=Path, default=None, metavar="PT",
        help="start from these weights (a satseg .pt); a new classifier when its classes differ",
    )  # fmt: skip
    p.add_argument(
        "--init-layers", choices=("all", "encoder"), default="all",
        help="what --init passes on: all layers, or the encoder only (decoder and classifier start "
        "anew; on a small new area this generalised better, benchmarks/bench_learn_area.py)",
    )  # fmt: skip
    p.add_argument(
        "--ema", type=float, default=None, metavar="DECAY",
        help="validate, checkpoint and ship an exponential moving average of the weights with this "
        "decay per step (e.g. 0.995: about the last 200 steps); off by default",
    )  # fmt: skip
    p.add_argument(
        "--encoder-lr", type=float, default=1.0, metavar="F",
        help="the encoder's learning rate as a share of --lr (e.g. 0.1: an --init encoder moves "
        "ten times slower than the new layers; 1 = one rate for all)",
    )  # fmt: skip
    p.add_argument(
        "--max-minutes", type=float, default=None, metavar="M",
        help="stop after M minutes of training (the schedule then runs by time); best.pt is kept",
    )  # fmt: skip
    p.add_argument(
        "--patience", type=int, default=None, metavar="N",
        help="stop when validation mIoU has not improved for N epochs",
    )  # fmt: skip
    p.add_argument(
        "--snapshots", action="store_true",
        help="also keep each epoch's weights as OUT/snapshots/epoch-NNN.pt (7 MB each at width "
        "0.25), for python -m training.average to combine the last ones",
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
    """Hold Ctrl-C (SIGINT) and SIGTERM until the block is done, then raise ``KeyboardInterrupt``.

    Outside the main thread Python delivers no signals, and the block runs as it is.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    held = (signal.SIGINT, signal.SIGTERM)
    previous = {s: signal.signal(s, lambda signum, _frame: caught.append(signum)) for s in held}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if caught:
        raise KeyboardInterrupt


def parse_scale(text: str) -> tuple[float, float]:
    """``"0.7,1.4"`` -> ``(0.7, 1.4)``; ``SatsegError`` unless 0 < MIN <= MAX."""
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise SatsegError(f"--scale must be MIN,MAX (e.g. 0.7,1.4), not {text!r}") from None
    if not 0 < lo <= hi <= 8:
        raise SatsegError(f"--scale needs 0 < MIN <= MAX <= 8, not {text!r}")
    return lo, hi


def init_weights(net: SegNet, path: Path, class_names: list[str], layers: str = "all") -> str:
    """Load ``path``'s weights into ``net``; its classifier only when the classes are the same.

    ``layers`` "encoder" keeps only the encoder's weights: the decoder and the
    classifier keep ``net``'s fresh initialisation. Returns a line saying what
    was kept. Raises ``SatsegError`` when the layers do not fit (another width).
    """
    ckpt = load_checkpoint(path)
    state = dict(ckpt["state_dict"])
    same = list(ckpt["class_names"]) == class_names and layers == "all"
    if layers == "encoder":
        state = {k: v for k, v in state.items() if k.startswith("encoder.")}
    elif not same:
        state = {k: v for k, v in state.items() if not k.startswith("classifier.")}
    try:
        missing, unexpected = net.load_state_dict(state, strict=same)
    except RuntimeError as exc:
        lines = str(exc).strip().splitlines()
        raise SatsegError(
            f"--init {path} (width {ckpt['width']}) does not fit a SegNet of width {net.width}: "
            f"{lines[1].strip() if len(lines) > 1 else lines[0]}"
        ) from None
    kept = ("encoder.",) if layers == "encoder" else ("encoder.", "decoder.")
    if unexpected or any(k.startswith(kept) for k in missing):
        raise SatsegError(f"--init {path} is not a SegNet of this layout")
    if same:
        return f"initialised from {path} (all layers)"
    if layers == "encoder":
        return f"initialised from {path} (encoder only; new decoder and classifier)"
    return (
        f"initialised from {path} (encoder and decoder; new classifier for "
        f"{', '.join(class_names)} instead of {', '.join(ckpt['class_names'])})"
    )


def parameter_groups(net: SegNet, encoder_share: float) -> list[dict[str, Any]]:
    """The optimiser's parameter groups: the encoder's at ``encoder_share`` of the rate, the rest at 1.

    Each group's ``lr_share`` scales the schedule's rate; a share of 0 freezes the encoder.
    """
    encoder = [p for n, p in net.named_parameters() if n.startswith("encoder.")]
    rest = [p for n, p in net.named_parameters() if not n.startswith("encoder.")]
    if encoder_share == 1:  # one group, as runs made before --encoder-lr have it in last.pt
        return [{"params": list(net.parameters()), "lr_share": 1.0}]
    return [{"params": encoder, "lr_share": encoder_share}, {"params": rest, "lr_share": 1.0}]


def _log_until(path: Path, epoch: int) -> str:
    """The log file's header and rows of epochs 1..``epoch`` (last row of each epoch wins)."""
    rows: dict[int, str] = {}
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines()[1:]:
            head = line.split(",", 1)[0]
            if head.isdigit() and 1 <= int(head) <= epoch:
                rows[int(head)] = line
    return LOG_HEADER + "\n" + "".join(rows[e] + "\n" for e in sorted(rows))


def _stop_on_sigterm() -> Any:
    """Treat SIGTERM like Ctrl-C (a task manager's cancel); returns the previous handler."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(_signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    return signal.signal(signal.SIGTERM, handler)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # One training per run folder; what a killed one left (.part files) goes; a full disk is one line.
    with output_folder(args.out, "run folder"):
        return _train(args)


def _train(args: argparse.Namespace) -> int:
    """``main`` with parsed ``args``, in the locked run folder ``args.out``."""
    for name in ("epochs", "batch_size"):
        if getattr(args, name) < 1:
            raise SatsegError(f"--{name.replace('_', '-')} must be at least 1")
    if args.lr <= 0 or (args.width is not None and args.width <= 0):
        raise SatsegError("--lr and --width must be positive")
    if args.max_minutes is not None and args.max_minutes <= 0:
        raise SatsegError("--max-minutes must be positive")
    if args.ema is not None and not 0 < args.ema < 1:
        raise SatsegError(f"--ema must be between 0 and 1 (e.g. 0.995), not {args.ema}")
    if not 0 <= args.encoder_lr <= 1:
        raise SatsegError(f"--encoder-lr must be between 0 and 1 (a share of --lr), not {args.encoder_lr}")
    if args.patience is not None and args.patience < 1:
        raise SatsegError("--patience must be at least 1")
    if not 0 <= args.blur <= 1 or not 0 <= args.color <= 2:
        raise SatsegError("--blur must be in [0, 1] and --color in [0, 2]")
    aug = AugmentConfig(color=args.color, blur=args.blur, scale_range=parse_scale(args.scale))
    width, head = args.width, args.head
    if width is None or head is None:
        base = load_checkpoint(args.init) if args.init else {}
        width = float(base.get("width", 1.0)) if width is None else width
        head = checkpoint_head(base) if head is None else head
    device = pick_device(args.device)
    ds = load_dataset(args.data, rebuild=args.rebuild_cache)
    num_classes = len(ds.class_names)
    val_scenes = scene_names(args.validation_scenes)
    if val_scenes:
        train_idx, val_idx = split_named(ds.groups, val_scenes)
    else:
        train_idx, val_idx = split_indices(ds.groups, args.validation, args.seed)
    n_scenes = len({ds.groups[i] for i in val_idx})
    print(
        f"{len(ds.ids)} tiles, {num_classes} classes ({', '.join(ds.class_names)}); "
        f"train {len(train_idx)}, validation {len(val_idx)} ({n_scenes} scene(s)); device {device}"
    )

    torch.manual_seed(args.seed)
    net = SegNet(num_classes, width, ds.channels, head)
    if args.init and not args.resume:
        print(init_weights(net, args.init, ds.class_names, args.init_layers))
    net = net.to(device)
    groups = parameter_groups(net, args.encoder_lr)
    if args.optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(
            groups, lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay
        )
    else:
        opt = torch.optim.AdamW(groups, lr=args.lr, weight_decay=args.weight_decay)

    weights = None
    if args.class_weights == "median":
        w = median_frequency_weights(*class_pixel_stats(ds, train_idx, num_classes))
        print("class weights: " + ", ".join(f"{n} {v:.3f}" for n, v in zip(ds.class_names, w, strict=True)))
        weights = torch.tensor(w, dtype=torch.float32, device=device)
    criterion = SegmentationLoss(args.loss, weights, IGNORE_INDEX)

    steps_per_epoch = math.ceil(len(train_idx) / args.batch_size)
    total_steps = steps_per_epoch * args.epochs
    budget_s = args.max_minutes * 60 if args.max_minutes else None
    schedule = LRSchedule(args.schedule, args.lr, total_steps, budget_s=budget_s)

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    log_path = out / "training_log.csv"
    start_epoch, best_miou, best_epoch, train_s, step = 0, -1.0, 0, 0.0, 0
    if args.resume:
        ckpt = load_checkpoint(out / "last.pt")
        if (
            list(ckpt["class_names"]) != ds.class_names
            or float(ckpt["width"]) != width
            or int(ckpt.get("channels") or 3) != ds.channels
            or checkpoint_head(ckpt) != head
        ):
            raise SatsegError(
                f"{out / 'last.pt'} is a width {ckpt['width']} model (head {checkpoint_head(ckpt)}) "
                f"for classes {ckpt['class_names']} ({ckpt.get('channels') or 3} bands); this run has "
                f"width {width} (head {head}) and classes {ds.class_names} ({ds.channels} bands)"
            )
        net.load_state_dict(ckpt.get("train_state_dict", ckpt["state_dict"]))
        if "optimizer" in ckpt:
            saved = len(ckpt["optimizer"]["param_groups"])
            if saved != len(groups):
                raise SatsegError(
                    f"{out / 'last.pt'} was trained with "
                    + ("one rate for all layers" if saved == 1 else "an --encoder-lr share")
                    + "; resume it with the same --encoder-lr"
                )
            opt.load_state_dict(ckpt["optimizer"])
            for group, share in zip(opt.param_groups, (g["lr_share"] for g in groups), strict=True):
                group["lr_share"] = share  # this run's shares (older checkpoints have none)
        start_epoch = int(ckpt["epoch"])
        best_miou = float(ckpt.get("best_miou", -1.0))
        best_epoch = int(ckpt.get("best_epoch", start_epoch))
        train_s = float(ckpt.get("train_seconds", 0.0))
        step = int(ckpt.get("step", start_epoch * steps_per_epoch))
        state = ckpt.get("scheduler")
        if isinstance(state, dict) and "start_lr" in state:
            schedule = LRSchedule.resumed(state, args.schedule, total_steps, budget_s, step, train_s)
        log = str(ckpt.get("log") or _log_until(log_path, start_epoch))
        write_text_atomic(log_path, log)  # the rows of the epochs last.pt holds, each once
        print(f"resuming after epoch {start_epoch} (best val mIoU {best_miou:.4f})")
    else:
        log_path.unlink(missing_ok=True)  # a fresh run starts a fresh log
        log = LOG_HEADER + "\n"

    # With --ema the average is the model: it is validated, checkpointed and exported; the raw
    # weights only go on in last.pt's train_state_dict so that --resume continues them.
    ema = WeightEMA(net, args.ema) if args.ema else None
    if ema is not None and args.resume:
        ema.model.load_state_dict(ckpt["state_dict"])
    model = ema.model if ema is not None else net

    gen = torch.Generator().manual_seed(args.seed + start_epoch)
    aug_gen = torch.Generator().manual_seed(args.seed * 7919 + start_epoch)
    train_loader = DataLoader(
        SegmentationTiles(
            ds.cache, train_idx, augment=args.augment, seed=args.seed + start_epoch, normalized=not aug.active,
            mean=ds.mean, std=ds.std,
        ),
        batch_size=args.batch_size, shuffle=True, num_workers=args.workers, generator=gen, drop_last=False,
    )  # fmt: skip
    val_loader = DataLoader(
        SegmentationTiles(ds.cache, val_idx, mean=ds.mean, std=ds.std),
        batch_size=args.batch_size,
        num_workers=args.workers,
    )

    def checkpoint(epoch: int, with_state: bool) -> dict[str, Any]:
        ckpt: dict[str, Any] = {
            "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "class_names": ds.class_names,
            "class_colors": ds.class_colors,
            "width": float(width),
            "head": head,
            "tile_size": ds.tile_size,
            "tiles_overlap": DEFAULT_OVERLAP_PERCENT,
            "zoom": ds.zoom,
            "resolution_cm": ds.resolution_cm,
            "mean": list(ds.mean),  # MEAN/STD for RGB; an N-band dataset's measured statistics
            "std": list(ds.std),
            "epoch": epoch,
            "best_miou": best_miou,
            "best_epoch": best_epoch,
            "seed": args.seed,
            "val_fraction": len(val_idx) / len(ds.ids) if val_scenes else args.validation,
            "data": str(Path(args.data).resolve()),
            "train_seconds": done_s,
            "step": done_step,
        }
        if val_scenes:  # validate and export take the same scenes back (checkpoint_split)
            ckpt["val_scenes"] = val_scenes
        if ds.input_bands:  # a model of other than RGB: what export writes as input_bands
            ckpt["channels"] = ds.channels
            ckpt["input_bands"] = list(ds.input_bands)
        if ema is not None:
            ckpt["ema"] = ema.decay
            if with_state:
                ckpt["train_state_dict"] = {k: v.detach().cpu() for k, v in net.state_dict().items()}
        if with_state:
            ckpt["optimizer"] = opt.state_dict()
            ckpt["scheduler"] = schedule.state_dict()
            ckpt["log"] = log
        return ckpt

    def out_of_time() -> bool:
        return budget_s is not None and train_s >= budget_s

    completed, done_step, done_s = start_epoch, step, train_s  # where the last whole epoch ended
    if args.init and args.init_layers == "all" and not args.resume and val_idx:
        # Fine-tuning must earn its place: the starting weights are the checkpoint to beat, so a
        # run that only makes them worse on validation leaves best.pt as they were.
        _, cm = evaluate(model, val_loader, criterion, device, num_classes)
        best_miou = float(scores(cm)["miou"])  # type: ignore[arg-type]
        save_checkpoint(out / "best.pt", checkpoint(0, with_state=False))
        print(
            f"--init weights: validation mIoU {best_miou:.4f} (best.pt until an epoch beats it)", flush=True
        )
    previous_term = _stop_on_sigterm()
    stopped = ""
    try:
        for epoch in range(start_epoch + 1, args.epochs + 1):
            if out_of_time():
                stopped = f"the {args.max_minutes:g}-minute budget is spent"
                break
            t0 = time.monotonic()
            net.train()
            total, n, correct, counted = 0.0, 0, 0, 0
            lr = schedule.lr(step, train_s)
            with ProgressBar(len(train_loader), f"epoch {epoch}/{args.epochs}") as bar:
                for x, y in train_loader:
                    if aug.active:
                        x, y = augment_batch(x, y, aug, aug_gen)
                        x = normalize_tensor(x, ds.mean, ds.std)
                    x, y = x.to(device), y.to(device)
                    lr = schedule.lr(step, train_s + time.monotonic() - t0)
                    for group in opt.param_groups:
                        group["lr"] = lr * group["lr_share"]
                    logits = net(x)
                    loss = criterion(logits, y)
                    opt.zero_grad(set_to_none=True)
                    if torch.isfinite(loss):  # skip an all-ignore batch
                        loss.backward()
                        opt.step()
                        if ema is not None:
                            ema.update(net, step)
                        total += float(loss.detach()) * len(x)
                        n += len(x)
                    step += 1
                    with torch.no_grad():
                        keep = y != IGNORE_INDEX
                        correct += int((logits.argmax(1)[keep] == y[keep]).sum())
                        counted += int(keep.sum())
                    bar.update()
                    if budget_s is not None and train_s + time.monotonic() - t0 >= budget_s:
                        break  # the budget ends mid-epoch: validate what there is
            train_s += time.monotonic() - t0
            train_loss = total / n if n else float("nan")
            train_acc = correct / counted if counted else float("nan")
            if val_idx:
                val_loss, cm = evaluate(model, val_loader, criterion, device, num_classes)
                s = scores(cm)
                val_acc, val_miou = float(s["accuracy"]), float(s["miou"])  # type: ignore[arg-type]
            else:
                val_loss, val_acc, val_miou = float("nan"), float("nan"), float("nan")
            seconds = time.monotonic() - t0
            improved = (not math.isnan(val_miou) and val_miou > best_miou) or (not val_idx)
            if improved:
                best_epoch = epoch
                if not math.isnan(val_miou):
                    best_miou = val_miou
            row = [epoch, train_loss, val_loss, train_acc, val_acc, val_miou, lr, seconds]
            done_step, done_s = step, train_s
            with interrupts_deferred():  # the log row and both checkpoints agree, whenever Ctrl-C comes
                # last.pt carries the log, and the log file is written from it after it, so even a
                # SIGKILL between the two leaves a pair that --resume makes agree again.
                log += ",".join(_fmt(v) if not isinstance(v, int) else str(v) for v in row) + "\n"
                if improved:
                    save_checkpoint(out / "best.pt", checkpoint(epoch, with_state=False))
                save_checkpoint(out / "last.pt", checkpoint(epoch, with_state=True))
                if args.snapshots:
                    (out / "snapshots").mkdir(exist_ok=True)
                    save_checkpoint(
                        out / "snapshots" / f"epoch-{epoch:03d}.pt", checkpoint(epoch, with_state=False)
                    )
                write_text_atomic(log_path, log)
                completed = epoch
            print(
                f"epoch {epoch}: loss {train_loss:.4f} acc {train_acc:.4f} | val loss {val_loss:.4f} "
                f"acc {val_acc:.4f} mIoU {val_miou:.4f} | lr {lr:.3g} | {seconds:.1f}s"
                + (" *" if improved else ""),
                flush=True,
            )
            if args.patience and val_idx and epoch - best_epoch >= args.patience:
                stopped = f"validation mIoU has not improved for {args.patience} epochs"
                break
            if out_of_time():
                stopped = f"the {args.max_minutes:g}-minute budget is spent"
                break
    except KeyboardInterrupt:
        # The weights of the unfinished epoch are kept; --resume repeats that epoch.
        save_checkpoint(out / "last.pt", checkpoint(completed, with_state=True))
        print(f"\ninterrupted: saved {out / 'last.pt'}; continue with --resume", file=sys.stderr)
        raise
    finally:
        if previous_term is not None:
            signal.signal(signal.SIGTERM, previous_term)
    if stopped:
        print(f"stopped after epoch {completed}: {stopped}")
    if val_idx:
        print(f"done: best validation mIoU {best_miou:.4f} (epoch {best_epoch}); checkpoints in {out}")
    else:
        print(f"done: no validation, best.pt holds the last epoch ({best_epoch}); checkpoints in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
