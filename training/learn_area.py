"""Train on this area: OpenStreetMap labels over your own imagery, to a model for that area.

    python -m training.learn_area --bbox W,S,E,N [--bbox-crs EPSG:4326] (--tiles URL | --raster FILE) \\
        --osm FILE [--classes training/classes/buildings.json] [--base models/satseg-buildings.pt | none] \\
        [--minutes 15] [--zoom Z] --out DIR

1. builds the dataset over the extent at the base model's zoom (or --zoom) with
   python -m training.dataset build (labels burned from --osm, imagery from
   --tiles or cut out of --raster, preview.png) in DIR/dataset, and the same
   ground one zoom finer in DIR/dataset-finer (four tiles to each, at twice the
   detail: more to learn from on a small area; --no-finer leaves it out);
2. holds out the eastern-most tile columns (about 20 % of the tiles, one
   contiguous block) in DIR/heldout: never trained on, never used to pick a
   checkpoint (nor are the finer tiles under it);
3. trains from the base model (by default its encoder, with a new decoder and
   classifier, --base-layers; --base none trains from scratch) with
   python -m training.train on DIR/train until
   --minutes of training have passed (or validation, a share of DIR/train, has not
   improved for --patience epochs, if given); a moving average of the weights
   (--ema) is what is validated and kept; checkpoints in DIR/run;
4. exports DIR/model.onnx with python -m training.export (checked against torch;
   its metadata names the area and the date) and scores it and the base model on
   the held-out block: IoU per class before and after, printed and written to
   DIR/report.csv and DIR/MODEL_CARD.md.

Bad input (an extent without any feature of the classes, imagery that cannot be
had, a base model whose zoom, channels or tile size do not fit) stops with one
line before any long work. Ctrl-C (or SIGTERM) at any point leaves a usable
state: run the same command again and it resumes (images on disk are kept,
training continues from DIR/run/last.pt); --export-best exports and scores the
best checkpoint so far. With --progress-json, stdout carries one JSON object per
line (docs/design.md, "Train on this area").
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import io
import json
import math
import os
import shutil
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import requests

from satseg_plugin.inference.atomic import write_text_atomic
from satseg_plugin.inference.cli import run_cli
from satseg_plugin.inference.errors import ExtentError, ModelError, ParameterError, SatsegError, SourceError
from satseg_plugin.inference.imageio import ImageError, decode_image
from satseg_plugin.inference.tileplan import srs_from_user, transform_bounds
from satseg_plugin.inference.tileurl import TokenError, redact, resolve_template, token_message

from .checkpoint import load_checkpoint, model_from_checkpoint
from .dataset import build
from .dataset.__main__ import join_negative_values
from .dataset.classes import load_classes
from .dataset.imagery import DEFAULT_TOKEN_ENV
from .dataset.manifest import read_ids, read_manifest, write_ids
from .dataset.raster_tiles import RasterTiles
from .dataset.tiles import Tile, bbox_tiles, parse_bbox, parse_tile_id
from .metrics import scores

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CLASSES = ROOT / "training" / "classes" / "buildings.json"
DEFAULT_BASE = ROOT / "models" / "satseg-buildings.pt"
#: Models whose zoom a run from scratch takes when --zoom is not given (the first that exists).
SHIPPED_ONNX = (ROOT / "models" / "satseg-buildings.onnx",)
FALLBACK_ZOOM = 19
HELDOUT_SHARE = 0.2
#: Learning rate (Adam): with the base encoder passed on, and from scratch, 0.0003 lost to 0.001 on bench_learn_area.
DEFAULT_LR = 0.001
#: Moving average of the weights (decay per step, about the last 200 steps) that learn_area validates and
#: exports; 0 = off. On bench_learn_area four runs with it scored 60.3, 62.0, 57.2 and 62.9 % building IoU
#: (mean 60.6), two without 63.4 and 51.9 %: the average hangs less on where the last steps happened to land.
DEFAULT_EMA = 0.995
SETTINGS = "learn_area.json"
#: Share of the overall progress each phase ends at.
PHASE_END = {"dataset": 0.15, "train": 0.9, "export": 0.95, "score": 1.0}
REPORT_HEADER = ["class", "pixels", "base_iou", "new_iou", "change"]


# ---------------------------------------------------------------- progress


class Progress:
    """Progress for people (stderr) or, with ``json_stream``, one JSON object per line for a caller.

    Thread-safe: the training watcher reports from its own thread. The stream
    is the process's stdout as it was at the start, so the tools' own prints
    (redirected to stderr meanwhile) never mix with the JSON lines.
    """

    def __init__(self, json_stream: TextIO | None) -> None:
        self.stream = json_stream
        self._lock = threading.Lock()

    def __call__(self, phase: str, fraction: float, message: str, **extra: Any) -> None:
        with self._lock:
            if self.stream is not None:
                doc = {"phase": phase, "fraction": round(min(max(fraction, 0.0), 1.0), 4), "message": message}
                doc.update({k: v for k, v in extra.items() if v is not None})
                self.stream.write(json.dumps(doc) + "\n")
                self.stream.flush()
            else:
                print(f"[{phase} {100 * fraction:3.0f} %] {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def _tools_output(progress: Progress) -> Iterator[None]:
    """With JSON progress, the tools' stdout goes to stderr: stdout is the caller's channel."""
    if progress.stream is None:
        yield
        return
    with contextlib.redirect_stdout(sys.stderr):
        yield


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (a task manager's cancel) ends the run like Ctrl-C: same clean-up, same usable state."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(_signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# ---------------------------------------------------------------- checks before long work


@dataclasses.dataclass
class Base:
    """The model a run starts from: its checkpoint file and what must fit."""

    path: Path
    class_names: list[str]
    zoom: int | None
    width: float


def load_base(spec: str) -> Base | None:
    """``none`` -> ``None``; else the checkpoint at ``spec`` (an ``.onnx`` with a ``.pt`` beside it works too).

    Raises ``ModelError`` when it cannot be read or is not a 3-channel (RGB) SegNet of 256-pixel tiles.
    """
    if spec.strip().lower() == "none":
        return None
    path = Path(spec)
    if path.suffix.lower() == ".onnx":
        pt = path.with_suffix(".pt")
        if not pt.is_file():
            raise ModelError(
                f"--base {path} is an ONNX model; fine-tuning needs its torch weights ({pt} not found), "
                "or use --base none"
            )
        path = pt
    if not path.is_file():
        raise ModelError(
            f"--base {path} not found: give a satseg checkpoint (.pt), or --base none (from scratch)"
        )
    ckpt = load_checkpoint(path)
    model_from_checkpoint(ckpt, str(path))  # the weights fit the network the checkpoint names
    first = next((v for v in ckpt["state_dict"].values() if getattr(v, "ndim", 0) == 4), None)
    channels = int(first.shape[1]) if first is not None else None
    if channels != 3 or len(ckpt.get("mean") or (0, 0, 0)) != 3:
        raise ModelError(f"--base {path} takes {channels} input channels; satseg trains on RGB imagery (3)")
    if int(ckpt.get("tile_size") or 256) != build.TILE_SIZE:
        raise ModelError(
            f"--base {path} works on {ckpt['tile_size']}-pixel tiles; the dataset has {build.TILE_SIZE}-pixel tiles"
        )
    zoom = ckpt.get("zoom")
    return Base(
        path, list(ckpt["class_names"]), int(zoom) if zoom is not None else None, float(ckpt["width"])
    )


def default_zoom() -> int:
    """The zoom of the shipped model (read from its metadata), else 19."""
    for path in SHIPPED_ONNX:
        if path.is_file():
            import onnx

            from satseg_plugin.inference.metadata import parse_metadata

            proto = onnx.load(str(path), load_external_data=False)
            zoom = parse_metadata({e.key: e.value for e in proto.metadata_props}).zoom
            if zoom is not None:
                return int(zoom)
    return FALLBACK_ZOOM


def pick_zoom(base: Base | None, zoom: int | None) -> int:
    """The run's zoom: the base model's (``--zoom`` must agree), else ``--zoom``, else the shipped model's."""
    if base is None:
        return zoom if zoom is not None else default_zoom()
    if base.zoom is None:
        if zoom is None:
            raise ModelError(f"--base {base.path} has no zoom (trained on pixel masks): give --zoom")
        return zoom
    if zoom is not None and zoom != base.zoom:
        raise ModelError(
            f"--base {base.path} was trained at zoom {base.zoom}; --zoom {zoom} does not fit it "
            f"(leave --zoom out, or train from scratch with --base none)"
        )
    return base.zoom


def to_wgs84(text: str, crs: str) -> tuple[float, float, float, float]:
    """``--bbox`` in ``--bbox-crs`` -> WGS84 ``(w, s, e, n)``, checked like the dataset builder's."""
    parts = [p.strip() for p in text.split(",")]
    if srs_from_user(crs).IsSame(srs_from_user("EPSG:4326")):
        return parse_bbox(text)
    try:
        w, s, e, n = (float(p) for p in parts)
    except ValueError:
        raise ExtentError(f"--bbox needs four numbers W,S,E,N, not {text!r}") from None
    if w >= e or s >= n:
        raise ExtentError(f"--bbox is empty: W must be below E and S below N (got {text!r})")
    box = transform_bounds((w, s, e, n), srs_from_user(crs), srs_from_user("EPSG:4326"))
    return parse_bbox(",".join(f"{v:.9f}" for v in box))


def probe_tiles(trange: tuple[int, int, int, int], zoom: int) -> list[Tile]:
    """Up to nine tiles spread over the range (centre first), to probe the imagery with."""
    x0, y0, x1, y1 = trange
    xs = sorted({(x0 + x1) // 2, x0, x1})
    ys = sorted({(y0 + y1) // 2, y0, y1})
    tiles = [((x0 + x1) // 2, (y0 + y1) // 2, zoom)]
    tiles += [(x, y, zoom) for x in xs for y in ys if (x, y, zoom) != tiles[0]]
    return tiles


def probe_imagery(args: argparse.Namespace, bbox: tuple[float, float, float, float], zoom: int) -> str:
    """Fetch (or cut) a few tiles of the extent; the imagery's public name, or ``SourceError`` when none comes."""
    tiles = probe_tiles(bbox_tiles(bbox, zoom), zoom)
    if args.raster is not None:
        if not args.raster.is_file():
            raise SourceError(f"the raster {args.raster} does not exist")
        with RasterTiles(args.raster, tiles, build.TILE_SIZE) as raster:
            if all(raster.read(t) is None for t in tiles):
                raise SourceError(
                    f"the raster {args.raster} has no imagery over the extent (tried {len(tiles)} tiles at zoom {zoom})"
                )
        return str(args.raster)
    with requests.Session() as session:
        template = resolve_template(args.tiles, args.token_env, None, session=session, timeout=args.timeout)
        reasons: list[str] = []
        for x, y, z in tiles:
            try:
                resp = session.get(template.url(x, y, z), timeout=args.timeout)
            except requests.RequestException as exc:
                raise SourceError(
                    f"cannot fetch imagery from {template.public}: {type(exc).__name__}: "
                    f"{redact(str(exc), template.token)}"
                ) from None
            if resp.status_code in (401, 403):
                raise TokenError(token_message(resp.status_code, template.token_env, template.token))
            if resp.status_code == 200:
                try:
                    decode_image(resp.content, f"tile {z}/{x}/{y}")
                    return template.public
                except ImageError:
                    reasons.append(f"tile {z}/{x}/{y} is not an image")
                    continue
            reasons.append(f"HTTP {resp.status_code}")
    raise SourceError(
        f"no imagery from {template.public} over the extent at zoom {zoom}: tried {len(tiles)} tiles "
        f"({', '.join(sorted(set(reasons)))})"
    )


# ---------------------------------------------------------------- the held-out block


def dataset_ids(data: Path) -> list[str]:
    """The dataset's usable tiles: listed in sample-filtered.txt, with image and label on disk."""
    listed = data / "sample-filtered.txt"
    ids = read_ids(listed) if listed.is_file() else []
    return [
        i
        for i in ids
        if (data / "images" / f"{i}.png").is_file() and (data / "labels" / "color" / f"{i}.png").is_file()
    ]


def heldout_block(ids: Sequence[str], share: float = HELDOUT_SHARE) -> tuple[list[str], list[str]]:
    """``(train, heldout)``: the eastern-most tile columns, as close to ``share`` of the tiles as whole columns allow.

    One contiguous block of ground (every column from the eastern edge inwards),
    at least one column, and at least one column left to train on.
    """
    cols = Counter(parse_tile_id(i)[0] for i in ids)
    if len(cols) < 2:
        raise SatsegError(
            f"the tiles with labels and imagery ({len(ids)}) lie in {len(cols)} tile column(s): too few to hold out "
            "a block for scoring; widen the extent east or west"
        )
    target = share * len(ids)
    held: set[int] = set()
    taken = 0
    for x in sorted(cols, reverse=True)[:-1]:
        if held and abs(taken + cols[x] - target) >= abs(taken - target):
            break
        held.add(x)
        taken += cols[x]
    heldout = [i for i in ids if parse_tile_id(i)[0] in held]
    return [i for i in ids if parse_tile_id(i)[0] not in held], heldout


def _link(src: Path, dst: Path) -> None:
    """Hard link (no copy, no privileges needed on Windows), a copy where links are not possible."""
    if dst.is_file():
        return
    tmp = dst.with_name(f".{dst.name}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copy2(src, tmp)
    os.replace(tmp, dst)


def write_view(
    data: Path,
    view: Path,
    ids: Sequence[str],
    part: str,
    scenes: dict[str, str] | None = None,
    folders: dict[str, Path] | None = None,
) -> None:
    """A dataset folder holding only ``ids`` (files hard-linked), as training.data reads it.

    Each tile's files come from ``folders[id]`` where given, else from ``data``,
    whose manifest (classes, zoom) the view takes.
    """
    folders = folders or {}
    (view / "images").mkdir(parents=True, exist_ok=True)
    (view / "labels" / "color").mkdir(parents=True, exist_ok=True)
    keep = {f"{i}.png" for i in ids}
    for sub in ("images", "labels/color"):
        for old in (view / sub).glob("*.png"):
            if old.name not in keep:
                old.unlink()
        for i in ids:
            _link(folders.get(i, data) / sub / f"{i}.png", view / sub / f"{i}.png")
    manifest = read_manifest(data)
    manifest["learn_area"] = {"part": part, "of": str(data.resolve()), "tiles": len(ids)}
    write_text_atomic(view / "manifest.json", json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    write_ids(view / "sample-filtered.txt", list(ids))
    if scenes is not None:
        write_text_atomic(view / "scenes.csv", "id,scene\n" + "".join(f"{i},{scenes[i]}\n" for i in ids))


def small_blocks(ids: Sequence[str], zoom: int | None = None) -> dict[str, str]:
    """2 x 2-tile blocks: the validation split inside a small area still keeps neighbours together.

    With ``zoom``, tiles of finer zooms join the block of their ancestor at
    ``zoom``, so the same ground never sits on both sides of the split.
    """
    out = {}
    for i in ids:
        x, y, z = parse_tile_id(i)
        up = max(z - zoom, 0) if zoom is not None else 0
        out[i] = f"{z - up}-{x >> (up + 1)}-{y >> (up + 1)}"
    return out


def finer_tiles(finer: Path, heldout_columns: set[int]) -> list[str]:
    """The tiles of the finer dataset (one zoom down) that lie outside the held-out columns."""
    if not finer.is_dir():
        return []
    return [i for i in dataset_ids(finer) if parse_tile_id(i)[0] >> 1 not in heldout_columns]


# ---------------------------------------------------------------- scoring


def remap_predictor(pred: Any, names: list[str]) -> Any:
    """``pred`` answering in the classes ``names``: its classes matched by name, any other -> index 0.

    The most probable class of each pixel is mapped (what a user of the base
    model sees), and returned one-hot.
    """
    if pred.class_names == names:
        return pred
    lut = np.array([names.index(n) if n in names else 0 for n in pred.class_names])
    eye = np.eye(len(names), dtype=np.float32)
    inner = pred._run

    def run(x: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(eye[lut[inner(x).argmax(1)]].transpose(0, 3, 1, 2))

    return dataclasses.replace(pred, class_names=list(names), class_colors=["#000000"] * len(names), _run=run)


def score(weights: Path, heldout: Path, batch: int = 4) -> tuple[np.ndarray, list[str]]:
    """The confusion matrix of ``weights`` on every tile of the held-out folder, and the model's class names."""
    from .data import load_dataset
    from .predictor import load_predictor
    from .validate import evaluate_tiles

    ds = load_dataset(heldout)
    pred = load_predictor(weights, "cpu")
    own = list(pred.class_names)
    pred = remap_predictor(pred, ds.class_names)
    return evaluate_tiles(pred, ds.cache, list(range(len(ds.ids))), ds.ids, batch, None), own


def report_rows(
    names: list[str], new_cm: np.ndarray, base_cm: np.ndarray | None, base_names: list[str] | None
) -> list[dict[str, str]]:
    """Rows of report.csv: per class and the mean, IoU as fractions (empty where a model has no such class)."""

    def num(v: float | None) -> str:
        return "" if v is None or math.isnan(v) else f"{v:.6f}"

    new_iou = scores(new_cm)["iou"]
    base_iou = scores(base_cm)["iou"] if base_cm is not None else None
    rows = []
    known = [base_names is not None and n in base_names for n in names]
    for i, name in enumerate(names):
        b = float(base_iou[i]) if base_iou is not None and known[i] else None  # type: ignore[index]
        a = float(new_iou[i])  # type: ignore[index]
        rows.append(
            {
                "class": name,
                "pixels": str(int(new_cm[i].sum())),
                "base_iou": num(b),
                "new_iou": num(a),
                "change": num(a - b) if b is not None and not math.isnan(a) and not math.isnan(b) else "",
            }
        )
    # The mean over the classes the held-out labels hold, as training.metrics' mIoU; the base's over
    # those it knows (a class it cannot predict is not held against it: its row shows no "before").
    present = [i for i in range(len(names)) if new_cm[i].sum() > 0]
    a_vals = [float(new_iou[i]) for i in present]  # type: ignore[index]
    b_vals = [float(base_iou[i]) for i in present if base_iou is not None and known[i]]  # type: ignore[index]
    a_mean = sum(a_vals) / len(a_vals) if a_vals else None
    b_mean = sum(b_vals) / len(b_vals) if b_vals else None
    rows.append(
        {
            "class": "mean",
            "pixels": str(int(new_cm.sum())),
            "base_iou": num(b_mean),
            "new_iou": num(a_mean),
            "change": num(a_mean - b_mean) if a_mean is not None and b_mean is not None else "",
        }
    )
    return rows


def verdict(rows: list[dict[str, str]]) -> str:
    """One line on the held-out block: the new model's mean IoU, and how it stands against the base's.

    A new model below its base says so: a short run or a small area can end worse than where it started.
    """
    new, base = rows[-1]["new_iou"], rows[-1]["base_iou"]
    if not new:
        return "no held-out pixel to score"
    text = f"held-out mIoU {100 * float(new):.1f} %"
    if not base:
        return text
    if float(new) < float(base):
        return (
            f"{text}, below the base model's {100 * float(base):.1f} %: the base does better on this "
            "area's held-out block (train longer or over more ground, or keep the base)"
        )
    return f"{text} (base model {100 * float(base):.1f} %, {100 * (float(new) - float(base)):+.1f} points)"


def format_table(rows: list[dict[str, str]]) -> str:
    """The before/after table as text, IoU in percent."""

    def pct(v: str) -> str:
        return f"{100 * float(v):7.2f}" if v else "      -"

    def signed(v: str) -> str:
        return f"{100 * float(v):+7.2f}" if v else "      -"

    width = max(10, *(len(r["class"]) for r in rows))
    lines = [f"{'class':<{width}}  {'pixels':>9}  base IoU %  new IoU %  change"]
    for r in rows:
        lines.append(
            f"{r['class']:<{width}}  {r['pixels']:>9}     {pct(r['base_iou'])}    {pct(r['new_iou'])}  {signed(r['change'])}"
        )
    return "\n".join(lines)


def write_report(path: Path, rows: list[dict[str, str]]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, REPORT_HEADER, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(path, buf.getvalue())


def training_summary(run: Path) -> dict[str, Any]:
    """Epochs, training seconds and best validation mIoU from training_log.csv and best.pt."""
    rows = []
    log = run / "training_log.csv"
    if log.is_file():
        with log.open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    seconds = sum(float(r.get("seconds") or 0) for r in rows)
    best = load_checkpoint(run / "best.pt")
    return {
        "epochs": len(rows),
        "seconds": round(seconds, 1),
        "best_epoch": int(best.get("epoch") or 0),
        "best_val_miou": float(best.get("best_miou", float("nan"))),
    }


def write_card(
    path: Path, settings: dict[str, Any], rows: list[dict[str, str]], summary: dict[str, Any]
) -> None:
    """A short MODEL_CARD.md: what the model is, where it was trained, how it scores on the held-out block."""
    bbox = ", ".join(f"{v:.6f}" for v in settings["bbox"])
    base = (
        f"{settings['base']} ({_from_base(settings)} it)"
        if settings["base"]
        else "none (trained from scratch)"
    )
    counts = settings.get("tiles", {})
    lines = [
        f"# {settings['name']}: a satseg model trained on one area",
        "",
        f"- **Area**: W,S,E,N {bbox} (EPSG:4326), zoom {settings['zoom']} XYZ tiles of 256 pixels",
        f"- **Trained**: {settings['date']} with `python -m training.learn_area`, "
        f"{summary['seconds'] / 60:.1f} minutes of training ({summary['epochs']} epochs, budget {settings['minutes']} min), "
        f"best epoch {summary['best_epoch']} (validation mIoU {100 * summary['best_val_miou']:.2f} %)",
        f"- **Started from**: {base}",
        f"- **Classes**: {', '.join(settings['class_names'])} (from {Path(settings['classes']).name})",
        f"- **Imagery**: {settings['source']}; **labels**: OpenStreetMap ({Path(settings['osm']).name}), "
        "© OpenStreetMap contributors, ODbL 1.0",
        f"- **Tiles**: {counts.get('train', '?')} to train on"
        + (f" ({counts['finer']} of them at zoom {settings['zoom'] + 1})" if counts.get("finer") else "")
        + " (a share of them validates), "
        f"{counts.get('heldout', '?')} held out (the eastern-most columns, never trained on)",
        "",
        "## IoU on the held-out block",
        "",
        "| class | pixels | base model | this model | change |",
        "|---|---:|---:|---:|---:|",
    ]

    def pct(v: str, sign: bool = False) -> str:
        return (f"{100 * float(v):+.2f}" if sign else f"{100 * float(v):.2f} %") if v else "-"

    for r in rows:
        lines.append(
            f"| {r['class']} | {r['pixels']} | {pct(r['base_iou'])} | {pct(r['new_iou'])} | {pct(r['change'], True)} |"
        )
    lines += [
        "",
        f"**In short**: {verdict(rows)}.",
        "",
        "The held-out block is ground next to the training tiles, labelled by the same OpenStreetMap data: "
        "it says how the model does on this area's imagery, not elsewhere. OpenStreetMap is incomplete (roofs "
        "without an outline count as background), so IoU here is a lower bound of what a careful labelling "
        "would give. Scores of a few tiles vary a lot; look at the results on the map before trusting them.",
        "",
    ]
    write_text_atomic(path, "\n".join(lines))


# ---------------------------------------------------------------- the run


class TrainingWatcher(threading.Thread):
    """Reports the training phase every ``every`` seconds from training_log.csv and the clock."""

    def __init__(self, run: Path, budget_s: float, progress: Progress, every: float = 2.0) -> None:
        super().__init__(daemon=True, name="satseg-learn-area-progress")
        self.run_dir, self.budget_s, self.progress, self.every = run, budget_s, progress, every
        self.stop = threading.Event()
        self.start_time = time.monotonic()
        self._done_before = 0.0  # training seconds of a resumed run's earlier epochs
        rows = self._rows()
        self._done_before = sum(float(r.get("seconds") or 0) for r in rows)

    def _rows(self) -> list[dict[str, str]]:
        try:
            text = (self.run_dir / "training_log.csv").read_text(encoding="utf-8")
        except OSError:
            return []
        return list(csv.DictReader(io.StringIO(text)))

    def report(self) -> None:
        rows = self._rows()
        spent = self._done_before + time.monotonic() - self.start_time
        share = min(spent / self.budget_s, 1.0) if self.budget_s > 0 else 1.0
        start = PHASE_END["dataset"]
        last = rows[-1] if rows else {}
        val = last.get("val_mIoU") or ""
        epoch = int(last["epoch"]) if last.get("epoch", "").isdigit() else None
        self.progress(
            "train",
            start + share * (PHASE_END["train"] - start),
            f"training: {epoch or 0} epoch(s) done"
            + (f", validation mIoU {100 * float(val):.1f} %" if val else "")
            + f", {max(self.budget_s - spent, 0.0) / 60:.1f} min left at most",
            epoch=epoch,
            val_iou=round(float(val), 4) if val else None,
            seconds_left=round(max(self.budget_s - spent, 0.0), 1),
        )

    def run(self) -> None:
        while not self.stop.wait(self.every):
            self.report()


def build_dataset(
    args: argparse.Namespace, settings: dict[str, Any], data: Path, zoom: int | None = None
) -> None:
    """python -m training.dataset build over the extent (at ``zoom``, else the run's), as its own CLI would run it."""
    parser = argparse.ArgumentParser()
    build.add_arguments(parser)
    zoom = settings["zoom"] if zoom is None else zoom
    size = args.max_tiles * (4 if zoom > settings["zoom"] else 1)
    argv = ["--bbox=" + ",".join(repr(v) for v in settings["bbox"]), "--zoom", str(zoom)]
    argv += ["--classes", str(args.classes), "--osm", str(args.osm), "--out", str(data)]
    argv += ["--size", str(size), "--seed", str(args.seed), "--timeout", str(args.timeout)]
    if args.raster is not None:
        argv += ["--raster", str(args.raster)]
    else:
        argv += ["--imagery", args.tiles, "--token-env", args.token_env]
    build.run(parser.parse_args(argv))


def build_finer(
    args: argparse.Namespace, settings: dict[str, Any], out: Path, progress: Progress
) -> Path | None:
    """DIR/dataset-finer: the extent one zoom finer, or None (--no-finer, or no imagery that fine)."""
    if not args.finer:
        return None
    finer, zoom = out / "dataset-finer", settings["zoom"] + 1
    progress("dataset", PHASE_END["dataset"] / 2, f"building the same ground at zoom {zoom} in {finer}")
    try:
        with _tools_output(progress):
            build_dataset(args, settings, finer, zoom)
    except SatsegError as exc:  # an imagery service without that zoom: train on the run's zoom alone
        progress(
            "dataset",
            PHASE_END["dataset"] / 2,
            f"no tiles at zoom {zoom} ({exc}); training on zoom {zoom - 1} alone",
        )
        return None
    return finer


def train(args: argparse.Namespace, settings: dict[str, Any], out: Path) -> None:
    """python -m training.train on DIR/train into DIR/run (resumed when DIR/run/last.pt is there)."""
    from . import train as trainer

    run = out / "run"
    argv = ["--data", str(out / "train"), "--out", str(run), "--validation", str(args.validation)]
    argv += ["--epochs", str(args.max_epochs), "--optimizer", "adam", "--batch-size", str(args.batch_size)]
    argv += ["--seed", str(args.seed), "--max-minutes", str(args.minutes)]
    if args.patience:
        argv += ["--patience", str(args.patience)]
    if args.ema:
        argv += ["--ema", str(args.ema)]
    argv += ["--lr", str(args.lr)]
    if settings["base"]:
        argv += ["--init", settings["base"], "--init-layers", args.base_layers]
    else:
        argv += ["--width", str(args.width)]
    if (run / "last.pt").is_file():
        argv.append("--resume")
    trainer.main(argv)


def _from_base(settings: dict[str, Any]) -> str:
    """How the run started from its base, in words (runs made before --base-layers kept every layer)."""
    return "trained from the encoder of" if settings.get("base_layers") == "encoder" else "fine-tuned from"


def export(out: Path, settings: dict[str, Any]) -> Path:
    """python -m training.export of DIR/run/best.pt to DIR/model.onnx, metadata naming the area and date."""
    from . import export as exporter

    model = out / "model.onnx"
    w, s, e, n = settings["bbox"]
    desc = (
        f"satseg model trained on the area W,S,E,N {w:.6f},{s:.6f},{e:.6f},{n:.6f} (EPSG:4326) on "
        f"{settings['date']}, "
        + (f"{_from_base(settings)} {Path(settings['base']).name}" if settings["base"] else "from scratch")
    )
    area = {
        "bbox": settings["bbox"],
        "crs": "EPSG:4326",
        "zoom": settings["zoom"],
        "source": settings["source"],
    }
    exporter.main(
        [
            *(str(out / "run" / "best.pt"), "--out", str(model), "--data", str(out / "train")),
            *("--description", desc, "--meta", "training_area=" + json.dumps(area)),
            *("--meta", "training_date=" + json.dumps(settings["date"])),
        ]
    )
    return model


def finish(out: Path, settings: dict[str, Any], progress: Progress) -> dict[str, str]:
    """Export DIR/run/best.pt, score it and the base on DIR/heldout, write report.csv and MODEL_CARD.md."""
    if not (out / "run" / "best.pt").is_file():
        raise SatsegError(f"{out / 'run' / 'best.pt'} does not exist: no epoch of training has finished yet")
    progress("export", PHASE_END["train"], "exporting the best checkpoint to ONNX (checked against torch)")
    with _tools_output(progress):
        model = export(out, settings)
    progress("score", PHASE_END["export"], "scoring the new model and the base on the held-out block")
    with _tools_output(progress):
        new_cm, _ = score(model, out / "heldout")
        base_cm, base_names = (
            score(Path(settings["base"]), out / "heldout") if settings["base"] else (None, None)
        )
    rows = report_rows(settings["class_names"], new_cm, base_cm, base_names)
    report, card = out / "report.csv", out / "MODEL_CARD.md"
    write_report(report, rows)
    write_card(card, settings, rows, training_summary(out / "run"))
    table = format_table(rows)
    print(
        f"IoU on the held-out block ({settings['tiles']['heldout']} tiles):\n{table}",
        file=sys.stderr if progress.stream else sys.stdout,
    )
    summary = verdict(rows)
    progress(
        "done",
        1.0,
        f"model {model}: {summary}",
        model=str(model),
        report=str(report),
        card=str(card),
        verdict=summary,
    )
    return {"model": str(model), "report": str(report), "card": str(card), "verdict": summary}


def _read_settings(out: Path) -> dict[str, Any]:
    path = out / SETTINGS
    if not path.is_file():
        raise SatsegError(
            f"{out} holds no learn_area run ({SETTINGS} not found); start one without --export-best"
        )
    return json.loads(path.read_text(encoding="utf-8"))


def build_parser() -> argparse.ArgumentParser:
    doc = __doc__.replace("``", "")
    p = argparse.ArgumentParser(
        prog="python -m training.learn_area",
        description=doc.split("\n\n")[0],
        epilog="\n\n".join(doc.split("\n\n")[1:]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--bbox", help="the area as W,S,E,N in --bbox-crs, e.g. 39.2404,-6.0449,39.2459,-6.0422")
    p.add_argument(
        "--bbox-crs", default="EPSG:4326", help="CRS of --bbox: EPSG:n, WKT or PROJ (default: %(default)s)"
    )
    src = p.add_mutually_exclusive_group()
    src.add_argument("--tiles", help="imagery: XYZ template (https://host/{z}/{x}/{y}.png) or TileJSON URL")
    src.add_argument(
        "--raster", type=Path, help="imagery: a local georeferenced 8-bit raster (GeoTIFF, VRT...)"
    )
    p.add_argument("--osm", type=Path, help="OpenStreetMap labels: .osm.pbf, GeoJSON or OSM QA .mbtiles")
    p.add_argument(
        "--classes", type=Path, default=DEFAULT_CLASSES,
        help="class config JSON (default: training/classes/buildings.json: every feature is a building)",
    )  # fmt: skip
    p.add_argument(
        "--base", default=str(DEFAULT_BASE),
        help="checkpoint (.pt) to fine-tune, or 'none' to train from scratch (default: models/satseg-buildings.pt)",
    )  # fmt: skip
    p.add_argument(
        "--minutes", type=float, default=15.0,
        help="minutes of training at most (the dataset, export and scoring come on top; default: %(default)s)",
    )  # fmt: skip
    p.add_argument(
        "--zoom", type=int, default=None, help="XYZ zoom (default: the base model's; from scratch: 19)"
    )
    p.add_argument("--out", type=Path, required=True, help="run folder (created; a second run resumes in it)")
    p.add_argument(
        "--export-best", action="store_true",
        help="only export and score the best checkpoint so far of the run in --out (after a Ctrl-C)",
    )  # fmt: skip
    p.add_argument(
        "--fresh", action="store_true",
        help="start training over (DIR/run is removed); the dataset is kept either way",
    )  # fmt: skip
    p.add_argument(
        "--progress-json", action="store_true",
        help="one JSON object per line on stdout (phase, fraction, message, ...; docs/design.md)",
    )  # fmt: skip
    p.add_argument(
        "--patience", type=int, default=None,
        help="stop when validation has not improved for N epochs (default: train for all of --minutes; "
        "on the small held-out block of an area validation plateaus early, while the cosine schedule's "
        "later epochs still gained: benchmarks/README.md)",
    )  # fmt: skip
    p.add_argument(
        "--max-epochs",
        type=int,
        default=1000,
        help="epochs at most, besides --minutes (default: %(default)s)",
    )
    p.add_argument("--lr", type=float, default=DEFAULT_LR, help="learning rate (Adam; default: %(default)s)")
    p.add_argument(
        "--ema", type=float, default=DEFAULT_EMA, metavar="DECAY",
        help="validate, keep and export a moving average of the weights with this decay per step "
        "(0 = off; default: %(default)s)",
    )  # fmt: skip
    p.add_argument(
        "--base-layers", choices=("encoder", "all"), default="encoder",
        help="what the base model passes on: its encoder (default: decoder and classifier are trained "
        "anew, which held up better on unseen ground in benchmarks/bench_learn_area.py) or all layers",
    )  # fmt: skip
    p.add_argument(
        "--finer", action=argparse.BooleanOptionalAction, default=True,
        help="also train on the extent's tiles one zoom finer, where the imagery has them "
        "(default: %(default)s)",
    )  # fmt: skip
    p.add_argument("--batch-size", type=int, default=4, help="tiles per training step (default: %(default)s)")
    p.add_argument(
        "--width",
        type=float,
        default=0.25,
        help="SegNet width from scratch (--base none; default: %(default)s)",
    )
    p.add_argument(
        "--validation", type=float, default=0.2,
        help="share of the training tiles that validates (picks the checkpoint; default: %(default)s)",
    )  # fmt: skip
    p.add_argument(
        "--max-tiles",
        type=int,
        default=10000,
        help="tiles of the extent at most, a seeded sample (default: %(default)s)",
    )
    p.add_argument(
        "--seed", type=int, default=0, help="seed of the sample, split and training (default: %(default)s)"
    )
    p.add_argument(
        "--token-env", default=DEFAULT_TOKEN_ENV,
        help="environment variable holding the imagery access token (default: %(default)s; never logged)",
    )  # fmt: skip
    p.add_argument(
        "--timeout", type=float, default=30.0, help="seconds per HTTP request (default: %(default)s)"
    )
    return p


def _check(args: argparse.Namespace) -> None:
    missing = [name for name, v in (("--bbox", args.bbox), ("--osm", args.osm)) if v is None]
    if args.tiles is None and args.raster is None:
        missing.append("--tiles or --raster")
    if missing:
        raise SatsegError(f"give {', '.join(missing)} (or --export-best for a run already in --out)")
    if not args.osm.is_file():
        raise SatsegError(f"--osm {args.osm} does not exist")
    if (
        args.minutes <= 0
        or args.max_epochs < 1
        or (args.patience is not None and args.patience < 1)
        or not 0 <= args.ema < 1
        or args.batch_size < 1
    ):
        raise ParameterError(
            "--minutes must be positive, --max-epochs, --patience, --batch-size at least 1 and --ema in [0, 1)"
        )
    if args.zoom is not None and not 0 <= args.zoom <= 24:
        raise ParameterError(f"--zoom must be between 0 and 24, not {args.zoom}")


def prepare(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """Every check that needs no long work; the run's settings."""
    _check(args)
    bbox = to_wgs84(args.bbox, args.bbox_crs)
    config = load_classes(args.classes)
    base = load_base(args.base)
    zoom = pick_zoom(base, args.zoom)
    source = probe_imagery(args, bbox, zoom)
    previous = json.loads((out / SETTINGS).read_text(encoding="utf-8")) if (out / SETTINGS).is_file() else {}
    return {
        "name": out.resolve().name,
        "bbox": [round(v, 9) for v in bbox],
        "zoom": zoom,
        "source": source,
        "osm": str(args.osm),
        "classes": str(args.classes),
        "class_names": list(config.names),
        "base": str(base.path) if base else None,
        "base_classes": base.class_names if base else None,
        "base_layers": args.base_layers if base else None,
        "minutes": args.minutes,
        "date": previous.get("date") or datetime.now(UTC).date().isoformat(),
    }


def learn(args: argparse.Namespace, progress: Progress) -> dict[str, str]:
    """The whole run: dataset, held-out block, training, export, scores."""
    out: Path = args.out
    if args.export_best:
        return finish(out, _read_settings(out), progress)
    settings = prepare(args, out)
    out.mkdir(parents=True, exist_ok=True)
    if args.fresh and (out / "run").exists():
        shutil.rmtree(out / "run")
    write_text_atomic(out / SETTINGS, json.dumps(settings, indent=2) + "\n")
    data = out / "dataset"
    progress("dataset", 0.0, f"building the dataset at zoom {settings['zoom']} in {data}")
    with _tools_output(progress):
        build_dataset(args, settings, data)
    ids = dataset_ids(data)
    if not ids:
        raise SourceError(f"no tile has both labels and imagery in {data} (see {data / 'skipped.csv'})")
    train_ids, held_ids = heldout_block(ids)
    held_columns = {parse_tile_id(i)[0] for i in held_ids}
    finer = build_finer(args, settings, out, progress)
    finer_ids = finer_tiles(finer, held_columns) if finer else []
    all_train = train_ids + finer_ids
    write_view(
        data, out / "train", all_train, "train", small_blocks(all_train, settings["zoom"]),
        {i: finer for i in finer_ids} if finer else None,
    )  # fmt: skip
    write_view(data, out / "heldout", held_ids, "heldout")
    settings["tiles"] = {"train": len(all_train), "finer": len(finer_ids), "heldout": len(held_ids)}
    settings["heldout_columns"] = sorted(held_columns)
    write_text_atomic(out / SETTINGS, json.dumps(settings, indent=2) + "\n")
    extra = f" (and {len(finer_ids)} at zoom {settings['zoom'] + 1})" if finer_ids else ""
    progress(
        "dataset",
        PHASE_END["dataset"],
        f"{len(ids)} tiles: {len(train_ids)} to train on{extra}, {len(held_ids)} held out (eastern-most columns)",
    )
    watcher = TrainingWatcher(out / "run", args.minutes * 60, progress)
    watcher.report()
    watcher.start()
    try:
        with _tools_output(progress):
            train(args, settings, out)
    finally:
        watcher.stop.set()
        watcher.join()
    watcher.report()  # the last epoch's row
    return finish(out, settings, progress)


def main(argv: Sequence[str] | None = None) -> int:
    argv = join_negative_values(list(sys.argv[1:] if argv is None else argv))
    args = build_parser().parse_args(argv)
    progress = Progress(sys.stdout if args.progress_json else None)
    try:
        with _sigterm_as_interrupt():
            learn(args, progress)
    except KeyboardInterrupt:
        out: Path = args.out
        hint = f"interrupted: the dataset in {out / 'dataset'} is kept; the same command resumes"
        if (out / "run" / "best.pt").is_file():
            hint += f"; export the best checkpoint so far with: python -m training.learn_area --out {out} --export-best"
        print(hint, file=sys.stderr)
        raise
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
