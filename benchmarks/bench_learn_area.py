"""Train on this area, measured: fine-tune on one half of a real area, score on the other half.

    .venv/bin/python -m benchmarks.bench_learn_area [--minutes 15] [--base models/satseg-buildings.pt]

The real OpenAerialMap tiles of ``../shared/data/oam-osm-buildings/area1``
(Zanzibar) are served on 127.0.0.1 and split in two halves by longitude (tile
columns at the base model's zoom, as many tiles on each side as whole columns
allow). ``python -m training.learn_area`` runs on the western half twice, for
the same ``--minutes`` of training each: fine-tuning the base model, and from
scratch (``--base none``, the shipped model's width). The eastern half, never
seen by either, is built as a dataset of its own and scores three models: the
base model as it is, the fine-tuned one and the one from scratch. Prints IoU
per class and mIoU, the minutes and epochs trained, and the issue's goal
(building IoU at least 60 % and at least 10 points above the base).
"""

from __future__ import annotations

import argparse
import csv
import re
import tempfile
import time
from collections import Counter
from pathlib import Path

import mercantile

from satseg_plugin.inference.cli import run_cli
from scripts.tileserver import TileServer, oam_provider
from training import learn_area
from training.dataset.__main__ import main as dataset_main
from training.metrics import scores

ROOT = Path(__file__).resolve().parents[1]
AREA = ROOT.parent / "shared" / "data" / "oam-osm-buildings" / "area1"
CLASSES = ROOT / "training" / "classes" / "buildings.json"


def halves(zoom: int) -> tuple[str, str]:
    """``(west, east)`` bboxes (W,S,E,N) of area1's tiles at ``zoom``, split between two tile columns."""
    tiles = [
        tuple(int(v) for v in m.groups())
        for p in AREA.glob(f"OAM-*-{zoom}.png")
        if (m := re.match(r"OAM-(\d+)-(\d+)-", p.name))
    ]
    if not tiles:
        raise SystemExit(f"area1 has no tiles at zoom {zoom}")
    cols = Counter(x for x, _ in tiles)
    order = sorted(cols)
    best = min(range(1, len(order)), key=lambda k: abs(sum(cols[x] for x in order[:k]) - len(tiles) / 2))
    ys = [y for _, y in tiles]

    def bbox(x0: int, x1: int) -> str:
        nw, se = mercantile.bounds(x0, min(ys), zoom), mercantile.bounds(x1, max(ys), zoom)
        eps = 1e-7  # inside the edge: the bbox takes no neighbouring column
        return f"{nw.west + eps:.8f},{se.south + eps:.8f},{se.east - eps:.8f},{nw.north - eps:.8f}"

    return bbox(order[0], order[best - 1]), bbox(order[best], order[-1])


def trained(run: Path) -> tuple[float, int]:
    with (run / "run" / "training_log.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    return sum(float(r["seconds"]) for r in rows) / 60, len(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_learn_area", description=__doc__.split("\n\n")[0]
    )
    p.add_argument(
        "--minutes", type=float, default=15.0, help="training minutes of each run (default: %(default)s)"
    )
    p.add_argument(
        "--base", type=Path, default=learn_area.DEFAULT_BASE,
        help="base checkpoint to fine-tune (default: models/satseg-buildings.pt)",
    )  # fmt: skip
    p.add_argument("--work", type=Path, default=None, help="folder for the runs (default: a temporary one)")
    args = p.parse_args(argv)
    base = learn_area.load_base(str(args.base))
    assert base is not None
    zoom = base.zoom or 19
    west, east = halves(zoom)
    with (
        tempfile.TemporaryDirectory(prefix="bench-learn-area-") as tmp,
        TileServer(oam_provider(AREA)) as server,
    ):
        work = args.work or Path(tmp)
        common = ["--bbox", west, "--tiles", server.template, "--osm", str(AREA / "labels.geojson")]
        common += ["--classes", str(CLASSES), "--minutes", str(args.minutes)]
        print(f"area1 at zoom {zoom}: train on the west half {west}, score on the east half {east}")
        runs = {}
        for name, extra in (("fine-tuned", ["--base", str(base.path)]), ("from scratch", ["--base", "none"])):
            out = work / name.replace(" ", "-")
            t0 = time.perf_counter()
            rc = run_cli(learn_area.main, [*common, *extra, "--out", str(out)])
            if rc != 0:
                raise SystemExit(f"learn_area ({name}) failed with status {rc}")
            runs[name] = (out / "model.onnx", *trained(out), (time.perf_counter() - t0) / 60)
        data = work / "east"
        argv_east = ["build", "--bbox", east, "--zoom", str(zoom), "--classes", str(CLASSES)]
        argv_east += [
            "--osm",
            str(AREA / "labels.geojson"),
            "--imagery",
            server.template,
            "--out",
            str(data),
            "--quiet",
        ]
        if run_cli(dataset_main, argv_east) != 0:
            raise SystemExit("the east half's dataset could not be built")
        models = {"base": (base.path, 0.0, 0, 0.0), **runs}
        results = {}
        for name, (path, *_rest) in models.items():
            cm, _ = learn_area.score(path, data)
            results[name] = scores(cm)
        tiles = len(learn_area.dataset_ids(data))
    print(
        f"\nIoU on the east half ({tiles} tiles, never trained on), {args.minutes:g} training minutes per run:"
    )
    print(f"{'model':<14} {'building':>9} {'background':>11} {'mIoU':>7}   trained")
    for name, s in results.items():
        _, minutes, epochs, wall = models[name]
        iou = s["iou"]
        note = (
            f"{minutes:.1f} min, {epochs} epochs ({wall:.1f} min with dataset, export, scoring)"
            if epochs
            else "-"
        )
        print(f"{name:<14} {100 * iou[1]:8.2f}% {100 * iou[0]:10.2f}% {100 * s['miou']:6.2f}%   {note}")  # type: ignore[index]
    tuned, before = float(results["fine-tuned"]["iou"][1]), float(results["base"]["iou"][1])  # type: ignore[index]
    goal = tuned >= 0.6 and tuned - before >= 0.1
    print(
        f"goal (building IoU >= 60 % and >= base + 10 points): {'met' if goal else 'not met'} "
        f"({100 * tuned:.1f} %, {100 * (tuned - before):+.1f} points)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
