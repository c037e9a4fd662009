"""Score a trained model (torch checkpoint or ONNX file) on the held-out tiles.

    python -m training.validate --data data/ --weights runs/NAME/best.pt|model.onnx

Prints pixel accuracy, per-class precision, recall, F1 and IoU, the mIoU and
the confusion matrix (the ignore label counts nowhere); writes
``OUT/metrics.json`` and ``OUT/predictions.hdf5`` (``ids`` and
``probabilities`` float16 ``[N, C, S, S]``, one gzip chunk per tile).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np

from satseg_plugin.inference.atomic import atomic_path, write_text_atomic
from satseg_plugin.inference.cli import DefaultsHelpFormatter, run_cli
from satseg_plugin.inference.errors import ModelError, SatsegError
from satseg_plugin.inference.progress import ProgressBar

from .data import checkpoint_split, load_dataset, read_tiles, scene_names, split_indices, split_named
from .metrics import confusion_matrix, format_report, scores_json
from .predictor import Predictor, load_predictor


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m training.validate",
        description="Score a SegNet checkpoint or ONNX model on a dataset's validation tiles.",
        formatter_class=DefaultsHelpFormatter,
    )
    p.add_argument("--data", type=Path, required=True, help="dataset folder")
    p.add_argument("--weights", type=Path, required=True, help="runs/NAME/best.pt or model.onnx")
    p.add_argument(
        "--out", type=Path, default=None,
        help="folder for metrics.json and predictions.hdf5 (default: WEIGHTS_FOLDER/validation-WEIGHTS_NAME)",
    )  # fmt: skip
    p.add_argument(
        "--split", choices=("val", "train", "all"), default="val",
        help="which tiles: the held-out ones, the training ones, or all",
    )  # fmt: skip
    p.add_argument(
        "--validation", type=float, default=None,
        help="validation share of the split (default: the checkpoint's, else 0.2)",
    )  # fmt: skip
    p.add_argument("--seed", type=int, default=None, help="split seed (default: the checkpoint's, else 0)")
    p.add_argument(
        "--validation-scenes", metavar="NAMES", default=None,
        help="validate on exactly these scenes (comma-separated; default: the checkpoint's, if it named any)",
    )  # fmt: skip
    p.add_argument("--batch-size", type=int, default=8, help="tiles per forward pass")
    p.add_argument("--limit", type=int, default=None, help="score at most this many tiles (default: all)")
    p.add_argument("--device", default="auto", help="torch device for .pt weights: auto, cpu, cuda")
    p.add_argument("--no-predictions", action="store_true", help="do not write predictions.hdf5")
    return p


def evaluate_tiles(
    pred: Predictor, cache: Path, indices: list[int], ids: list[str], batch: int, predictions: Path | None
) -> np.ndarray:
    """Run ``pred`` on the cached tiles at ``indices``; return the confusion matrix.

    With ``predictions`` set, the probabilities go there (float16, atomically).
    """
    c = pred.num_classes
    cm = np.zeros((c, c), np.int64)
    size = None
    with ProgressBar(len(indices), "validating") as bar:
        if predictions is None:
            for s in range(0, len(indices), batch):
                images, labels = read_tiles(cache, indices[s : s + batch])
                cm += confusion_matrix(labels, pred.predict(images).argmax(1), c)
                bar.update(len(images))
            return cm
        with atomic_path(predictions) as tmp, h5py.File(tmp, "w") as f:
            for s in range(0, len(indices), batch):
                images, labels = read_tiles(cache, indices[s : s + batch])
                size = images.shape[1]
                probs = pred.predict(images)
                if "probabilities" not in f:
                    f.create_dataset(
                        "probabilities", (len(indices), c, size, size), np.float16,
                        chunks=(1, c, size, size), compression="gzip", compression_opts=1,
                    )  # fmt: skip
                    f.create_dataset(
                        "ids", data=np.array([ids[i] for i in indices], dtype=h5py.string_dtype())
                    )
                    f.attrs["class_names"] = json.dumps(pred.class_names)
                f["probabilities"][s : s + len(images)] = probs.astype(np.float16)
                cm += confusion_matrix(labels, probs.argmax(1), c)
                bar.update(len(images))
    return cm


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.batch_size < 1:
        raise SatsegError("--batch-size must be at least 1")
    pred = load_predictor(args.weights, args.device)
    ds = load_dataset(args.data)
    if pred.class_names != ds.class_names:
        raise ModelError(
            f"{args.weights} predicts {pred.num_classes} classes ({', '.join(pred.class_names)}) but the dataset "
            f"{args.data} has {len(ds.class_names)} ({', '.join(ds.class_names)}): they do not belong together"
        )
    ckpt = pred.checkpoint or {}
    val = args.validation if args.validation is not None else float(ckpt.get("val_fraction", 0.2))
    seed = args.seed if args.seed is not None else int(ckpt.get("seed", 0))
    if named := scene_names(args.validation_scenes):
        train_idx, val_idx = split_named(ds.groups, named)
    elif args.validation is None and args.seed is None:
        train_idx, val_idx = checkpoint_split(ds.groups, ckpt)
    else:
        train_idx, val_idx = split_indices(ds.groups, val, seed)
    indices = {"val": val_idx, "train": train_idx, "all": sorted(train_idx + val_idx)}[args.split]
    if args.limit is not None:
        indices = indices[: args.limit]
    if not indices:
        raise SatsegError(f"the {args.split} split of {args.data} is empty (validation share {val})")
    out = args.out or args.weights.parent / f"validation-{args.weights.stem}"
    out.mkdir(parents=True, exist_ok=True)
    scenes = sorted({ds.groups[i] for i in indices})
    print(f"{args.weights} on {len(indices)} {args.split} tiles of {args.data} ({len(scenes)} scene(s))")
    cm = evaluate_tiles(
        pred,
        ds.cache,
        indices,
        ds.ids,
        args.batch_size,
        None if args.no_predictions else out / "predictions.hdf5",
    )
    print(format_report(cm, pred.class_names))
    report = scores_json(cm, pred.class_names)
    report.update(
        {"weights": str(args.weights), "data": str(args.data), "split": args.split, "tiles": len(indices)}
    )
    write_text_atomic(out / "metrics.json", json.dumps(report, indent=2) + "\n")
    print(
        f"wrote {out / 'metrics.json'}" + ("" if args.no_predictions else f" and {out / 'predictions.hdf5'}")
    )
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
