"""The release steps of a shipped model, for ``scripts/make_default_models.sh``.

    python -m scripts.model_release baseline RUN/best.pt DATASET --out DIR
    python -m scripts.model_release weights RUN/best.pt models/NAME.pt
    python -m scripts.model_release int8-verdict RUN NAME DATASET
    python -m scripts.model_release pick RUN

``baseline`` scores the constant predictor that says the training tiles'
majority class everywhere on a held-out set (``DIR/metrics.json``, as
``training.validate`` writes it). ``weights`` writes the weights-only
checkpoint that ships beside the ONNX file (no optimizer state, no local
paths), which ``training.train --init`` and ``training.learn_area --base``
start from. ``pick`` prints the checkpoint to ship: the run's last epoch (the end of its
annealed schedule) unless its validation mIoU is more than ``PICK_MARGIN``
below the best epoch's, then ``best.pt``; a validation set of a few dozen tiles
of one or two places cannot tell apart checkpoints closer than that.
``int8-verdict`` exits 0 when the int8 model is measured faster than
float32 on this machine (interleaved rounds of both on the same held-out
tiles, in one process) and loses at most 1 point of mIoU on every held-out set
of ``RUN/heldout``.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from satseg_plugin.inference.atomic import write_text_atomic
from satseg_plugin.inference.model import SegModel
from training.checkpoint import FLIPS_KEY, load_checkpoint, save_checkpoint
from training.data import checkpoint_split, load_dataset, read_tiles
from training.metrics import confusion_matrix, format_report, scores_json
from training.model import FLIPS
from training.train import class_pixel_stats

#: Keys of a training checkpoint that do not ship: resume state and where it was trained.
PRIVATE_KEYS = ("optimizer", "scheduler", "log", "data", "train_state_dict")
MAX_INT8_MIOU_LOSS = 0.01
PICK_MARGIN = 0.02


def majority_class(ckpt: dict) -> int:
    """The most frequent label among the training tiles of ``ckpt``'s own split."""
    train = load_dataset(ckpt["data"])
    idx, _ = checkpoint_split(train.groups, ckpt)
    label_counts, _ = class_pixel_stats(train, idx, len(train.class_names))
    return int(np.argmax(label_counts))


def baseline(weights: Path, data: Path, out: Path) -> dict:
    ckpt = load_checkpoint(weights)
    names = list(ckpt["class_names"])
    majority = majority_class(ckpt)
    ds = load_dataset(data)
    if ds.class_names != names:
        raise SystemExit(f"{data} has classes {ds.class_names}, the model {names}")
    cm = np.zeros((len(names), len(names)), np.int64)
    for s in range(0, len(ds.ids), 64):
        labels = read_tiles(ds.cache, list(range(s, min(s + 64, len(ds.ids)))))[1]
        cm += confusion_matrix(labels, np.full(labels.shape, majority, np.uint8), len(names))
    print(f"== {data.name}: every pixel {names[majority]} (the training tiles' majority class)")
    print(format_report(cm, names))
    metrics = scores_json(cm, names)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    return metrics


def ship_weights(weights: Path, out: Path, flips: int = 1) -> None:
    """The weights-only checkpoint of ``weights``; ``flips`` > 1 names the test-time flips its ONNX
    file was exported with, so torch predictions from it (validate, feed_forward) are the same."""
    ckpt = load_checkpoint(weights)
    shipped = {k: v for k, v in ckpt.items() if k not in (*PRIVATE_KEYS, FLIPS_KEY)}
    if flips > 1:
        shipped[FLIPS_KEY] = flips
    save_checkpoint(out, shipped)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB, weights of epoch {ckpt.get('epoch')})")


def int8_speedup(fp32: Path, int8: Path, images: np.ndarray, rounds: int = 7) -> float:
    """int8's speed as a multiple of fp32's: the median over ``rounds`` interleaved timings."""
    models = [SegModel.load(fp32), SegModel.load(int8)]
    x = models[0].normalize(images)
    for m in models:
        m.run(x[:1])  # warm-up: the first run allocates
    ratios = []
    for _ in range(rounds):
        seconds = []
        for m in models:
            t0 = time.perf_counter()
            for i in range(0, len(x), 8):
                m.run(x[i : i + 8])
            seconds.append(time.perf_counter() - t0)
        ratios.append(seconds[0] / seconds[1])
    return statistics.median(ratios)


def int8_verdict(run: Path, name: str, data: Path) -> tuple[bool, str]:
    losses = {}
    for folder in sorted(p for p in (run / "heldout").iterdir() if p.is_dir()):
        fp32 = json.loads((folder / f"{name}.onnx" / "metrics.json").read_text())["miou"]
        int8 = json.loads((folder / f"{name}.int8.onnx" / "metrics.json").read_text())["miou"]
        losses[folder.name] = fp32 - int8
    worst = max(losses.values()) if losses else float("inf")
    ds = load_dataset(data)
    images = read_tiles(ds.cache, list(range(min(16, len(ds.ids)))))[0]
    speed = int8_speedup(run / f"{name}.onnx", run / f"{name}.int8.onnx", images)
    detail = ", ".join(f"{k} {100 * v:+.2f} points" for k, v in losses.items())
    ok = speed > 1.0 and worst <= MAX_INT8_MIOU_LOSS
    verdict = "shipped" if ok else "not shipped"
    return (
        ok,
        f"int8 {verdict}: x{speed:.2f} the float32 speed (median of 7 interleaved rounds), mIoU loss {detail}",
    )


def pick(run: Path) -> Path:
    """The checkpoint of ``run`` that ships: ``RUN/last.pt`` or ``RUN/best.pt``.

    ``last.pt`` when its validation mIoU is within ``PICK_MARGIN`` of the best
    epoch's, else ``best.pt``. A ``--init`` run whose epochs never beat the
    starting weights (``best.pt`` still holds them, epoch 0) ships them: a
    continuation replaces the weights it started from only by beating them.
    """
    with (run / "training_log.csv").open(newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["val_mIoU"] and math.isfinite(float(r["val_mIoU"]))]
    if not rows:  # no validation (--validation 0): train saved every epoch as best.pt, the last one ships
        return run / "best.pt"
    best_pt = load_checkpoint(run / "best.pt")
    if int(best_pt.get("epoch", -1)) == 0:
        return run / "best.pt"
    best = max(float(r["val_mIoU"]) for r in rows)
    last = float(rows[-1]["val_mIoU"])
    return run / ("last.pt" if last >= best - PICK_MARGIN else "best.pt")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m scripts.model_release", description=__doc__.split("\n\n")[0]
    )
    sub = parser.add_subparsers(dest="verb", required=True)
    b = sub.add_parser("baseline", help="score the training majority class on a held-out set")
    b.add_argument("weights", type=Path)
    b.add_argument("data", type=Path)
    b.add_argument("--out", type=Path, required=True)
    w = sub.add_parser("weights", help="write the weights-only checkpoint that ships")
    w.add_argument("weights", type=Path)
    w.add_argument("out", type=Path)
    w.add_argument("--flips", type=int, choices=FLIPS, default=1, help="the ONNX file's test-time flips")
    v = sub.add_parser("int8-verdict", help="exit 0 when the int8 model may ship")
    v.add_argument("run", type=Path)
    v.add_argument("name")
    v.add_argument("data", type=Path, help="a held-out dataset whose tiles time the two models")
    k = sub.add_parser("pick", help="print the checkpoint to ship")
    k.add_argument("run", type=Path)
    args = parser.parse_args(argv)
    if args.verb == "pick":
        print(pick(args.run))
    elif args.verb == "baseline":
        baseline(args.weights, args.data, args.out)
    elif args.verb == "weights":
        ship_weights(args.weights, args.out, args.flips)
    else:
        ok, line = int8_verdict(args.run, args.name, args.data)
        print(line)
        return 0 if ok else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
