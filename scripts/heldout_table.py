"""Markdown tables of held-out metrics, for a model card.

    .venv/bin/python -m scripts.heldout_table runs/buildings/heldout

Reads ``SET/MODEL/metrics.json`` as ``python -m training.validate`` writes them
(``baseline`` being the majority-class predictor) and prints, per held-out set,
pixel accuracy, the mean IoU over the classes that occur in that set and the
IoU, precision and recall of each of those classes. Classes absent from a set
are left out of its mean: a held-out set labelled only building/background
says nothing about water, and predicting water there already costs the
background class its IoU.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from training.metrics import scores_json


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def present_miou(metrics: dict) -> float:
    """Mean IoU over the classes with ground-truth pixels in the set: ``training.metrics``' mIoU."""
    return float(metrics["miou"] or 0.0)


def _majority(metrics: dict) -> str:
    return max(metrics["classes"], key=lambda n: metrics["classes"][n]["pixels"])


def _predicted(metrics: dict) -> str:
    """The class a constant predictor predicted: the only column of its confusion matrix in use."""
    columns = [sum(row[j] for row in metrics["confusion"]) for j in range(len(metrics["confusion"]))]
    return list(metrics["classes"])[columns.index(max(columns))]


def constant_metrics(metrics: dict, name: str) -> dict:
    """The metrics of predicting class ``name`` for every pixel of the set ``metrics`` describes."""
    names = list(metrics["classes"])
    confusion = np.zeros((len(names), len(names)), np.int64)
    confusion[:, names.index(name)] = [metrics["classes"][n]["pixels"] for n in names]
    return scores_json(confusion, names)


def table(folder: Path) -> str:
    """One markdown table: a row per model, columns accuracy, mean IoU and each present class's IoU."""
    runs = {p.parent.name: json.loads(p.read_text()) for p in sorted(folder.glob("*/metrics.json"))}
    if not runs:
        raise SystemExit(f"no */metrics.json under {folder}")
    first = next(iter(runs.values()))
    present = [name for name, c in first["classes"].items() if c["pixels"] > 0]
    lines = [
        "| model | pixel accuracy | mIoU (present classes) | "
        + " | ".join(f"{n} IoU (P / R)" for n in present)
        + " |",
        "|---" * (3 + len(present)) + "|",
    ]
    rows = sorted(runs.items(), key=lambda kv: kv[0] == "baseline")
    if "baseline" not in runs or _predicted(runs["baseline"]) != _majority(first):
        rows.append(("set majority", constant_metrics(first, _majority(first))))
    for model, m in rows:
        cells = [
            f"{_pct(m['classes'][n]['iou'])} ({_pct(m['classes'][n]['precision'])} / "
            f"{_pct(m['classes'][n]['recall'])})"
            for n in present
        ]
        if model == "baseline":
            label = f"every pixel {_predicted(m)} (the training tiles' majority class)"
        elif model == "set majority":
            label = f"every pixel {_majority(first)} (this set's majority class, known only afterwards)"
        else:
            label = f"`{model}`"
        lines.append(
            f"| {label} | {_pct(m['accuracy'])} | {_pct(present_miou(m))} | " + " | ".join(cells) + " |"
        )
    pixels = ", ".join(f"{n} {first['classes'][n]['pixels']:,}" for n in present)
    return "\n".join(lines) + f"\n\n{first['pixels']:,} pixels: {pixels}.\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("heldout", type=Path, help="folder with one subfolder per held-out set")
    args = parser.parse_args(argv)
    for folder in sorted(p for p in args.heldout.iterdir() if p.is_dir()):
        print(f"### {folder.name}\n\n{table(folder)}")


if __name__ == "__main__":
    main()
