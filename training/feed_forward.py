"""Segment one image of any size with a trained model and write what it found.

    python -m training.feed_forward WEIGHTS IMAGE OUTDIR

WEIGHTS is a checkpoint (``.pt``) or an ONNX model. The image is cut into
overlapping windows of the model's size whose probabilities are blended, with
the plugin's own windows and blend (``training.tiled``): for an ONNX model the
probabilities are those ``python -m satseg_plugin.inference segment --raster``
gives for the same image. Output in OUTDIR:

* ``pixel_counts.csv``: ``class,pixels,share,area_m2,area_ha`` (areas only when
  the image's or the model's resolution is known); the pixels sum to the image's
  pixel count;
* ``classes.png``: one band, the class index of every pixel;
* ``segments.png``: the class display colours blended over the image;
* ``heatmap_<class>.png``: the probability of each class, colour-mapped
  (``HEATMAP_STOPS``: dark blue at 0, through green, to yellow at 1.0).

Scale: a model sees roofs and roads at the size it was trained on. When the
image's ground resolution is known (``--resolution-cm``, else a GeoTIFF's
georeferencing in metres, feet or degrees) and differs from the model's by
more than 2 %, the image is resampled to the model's resolution for the model
and the probabilities back to the image's pixels, so every output keeps the
image's size; ``--no-resample`` segments the pixels as they are.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from osgeo import gdal

from satseg_plugin.inference.atomic import write_text_atomic
from satseg_plugin.inference.cli import DefaultsHelpFormatter, run_cli
from satseg_plugin.inference.errors import ModelError, ParameterError
from satseg_plugin.inference.imageio import read_image, resize_bands, to_rgb, write_png
from satseg_plugin.inference.metadata import parse_hex_color
from satseg_plugin.inference.runfolder import output_folder
from satseg_plugin.inference.tileplan import ground_pixel_size, srs_from_user

from .predictor import load_predictor
from .tiled import predict_image

#: Colour map of the heatmaps (a viridis-like ramp): (probability, RGB) stops.
HEATMAP_STOPS: tuple[tuple[float, tuple[int, int, int]], ...] = (
    (0.0, (68, 1, 84)),
    (0.25, (59, 82, 139)),
    (0.5, (33, 145, 140)),
    (0.75, (94, 201, 98)),
    (1.0, (253, 231, 37)),
)


def heatmap_lut() -> np.ndarray:
    """``[256, 3]`` uint8: the colour of probability ``i / 255``."""
    xs = np.array([s for s, _ in HEATMAP_STOPS])
    rgb = np.array([c for _, c in HEATMAP_STOPS], np.float64)
    t = np.arange(256) / 255.0
    return np.stack([np.interp(t, xs, rgb[:, k]) for k in range(3)], axis=1).round().astype(np.uint8)


def heatmap(prob: np.ndarray) -> np.ndarray:
    """``(H, W)`` probabilities in [0, 1] -> ``(H, W, 3)`` uint8; 1.0 maps to the top colour."""
    index = np.clip(np.rint(prob * 255.0), 0, 255).astype(np.uint8)  # clip before the cast: no wrap-around
    return heatmap_lut()[index]


def overlay(image: np.ndarray, classes: np.ndarray, colors: list[str], alpha: float = 0.5) -> np.ndarray:
    """The image with each pixel's class colour blended in at ``alpha``."""
    palette = np.array([parse_hex_color(c) for c in colors], np.float32)
    mixed = image.astype(np.float32) * (1 - alpha) + palette[classes] * alpha
    return np.clip(np.rint(mixed), 0, 255).astype(np.uint8)


def file_name(class_name: str) -> str:
    """``heatmap_<class>``'s class part: lower case, other runs than a-z0-9 turned into ``_``;
    past 80 characters cut, with 8 hex digits of the name's SHA-1 (file names end at 255 bytes)."""
    safe = re.sub(r"[^a-z0-9]+", "_", class_name.lower()).strip("_") or "class"
    if len(safe) > 80:
        safe = f"{safe[:71]}_{hashlib.sha1(class_name.encode('utf-8')).hexdigest()[:8]}"
    return safe


#: Image and model resolutions closer than this ratio are taken as equal: no resampling.
RESAMPLE_TOLERANCE = 0.02


def image_resolution_cm(path: str | Path) -> float | None:
    """The ground size of a georeferenced image's pixels in cm (``tileplan.ground_pixel_size``
    at the image's middle latitude); ``None`` for an image without a CRS and geotransform
    (a plain PNG or JPEG)."""
    ds = gdal.Open(str(path))
    try:
        gt = ds.GetGeoTransform(can_return_null=True)
        wkt = ds.GetProjection()
        rows = ds.RasterYSize
    finally:
        ds = None
    if gt is None or not wkt:
        return None
    return 100.0 * ground_pixel_size(srs_from_user(wkt), gt, gt[3] + gt[5] * rows / 2)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m training.feed_forward",
        description="Segment one image (any size) with a .pt checkpoint or .onnx model; write counts, "
        "class image, overlay and per-class heatmaps.",
        formatter_class=DefaultsHelpFormatter,
    )
    p.add_argument("weights", type=Path, metavar="WEIGHTS", help="runs/NAME/best.pt or model.onnx")
    p.add_argument("image", type=Path, metavar="IMAGE", help="RGB image (PNG, JPEG, GeoTIFF, ...)")
    p.add_argument("outdir", type=Path, metavar="OUTDIR", help="folder for the results")
    p.add_argument(
        "--overlap", type=float, default=None,
        help="tile overlap in percent (default: the model's tiles_overlap, 13 for satseg models)",
    )  # fmt: skip
    p.add_argument("--batch-size", type=int, default=8, help="tiles per forward pass")
    p.add_argument("--alpha", type=float, default=0.5, help="opacity of the class colours in segments.png")
    p.add_argument("--device", default="auto", help="torch device for .pt weights: auto, cpu, cuda")
    p.add_argument("--no-heatmaps", action="store_true", help="skip the per-class heatmap PNGs")
    p.add_argument(
        "--resolution-cm", type=float, default=None, metavar="CM",
        help="ground size of the image's pixels in cm (default: from a GeoTIFF's georeferencing, else "
        "unknown); the image is resampled to the model's resolution for the model when they differ",
    )  # fmt: skip
    p.add_argument(
        "--no-resample", action="store_true",
        help="segment the image's pixels as they are, whatever their resolution and the model's",
    )  # fmt: skip
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # One run per folder at a time, .part files of a killed one removed, a full disk in one line.
    with output_folder(args.outdir):
        return _segment_image(args)


def _segment_image(args: argparse.Namespace) -> int:
    """``main`` with parsed ``args``, in the locked output folder ``args.outdir``."""
    if args.batch_size < 1:
        raise ParameterError("--batch-size must be at least 1")
    if not 0 <= args.alpha <= 1:
        raise ParameterError(f"--alpha must be in [0, 1], not {args.alpha}")
    if args.resolution_cm is not None and not args.resolution_cm > 0:
        raise ParameterError(f"--resolution-cm must be positive, not {args.resolution_cm}")
    pred = load_predictor(args.weights, args.device)
    image, _ = to_rgb(read_image(args.image, stretch=True))
    overlap = pred.tiles_overlap if args.overlap is None else args.overlap
    if not 0 <= overlap < 100:
        raise ParameterError(f"--overlap must be a percent in [0, 100), not {overlap}")
    h, w = image.shape[:2]
    print(
        f"{args.image}: {w}x{h} px, {pred.kind} model {args.weights.name}, tiles {pred.tile_size}, overlap {overlap}%"
    )
    res = args.resolution_cm or image_resolution_cm(args.image)
    factor = res / pred.resolution_cm if res and pred.resolution_cm and not args.no_resample else 1.0
    if abs(factor - 1) > RESAMPLE_TOLERANCE:
        sw, sh = max(1, round(w * factor)), max(1, round(h * factor))
        print(
            f"resampled to {sw}x{sh} px for the model ({res:.3g} cm/px to its {pred.resolution_cm:.3g}), "
            "results back to the image's pixels"
        )
        small = resize_bands(image.transpose(2, 0, 1), sw, sh, "bilinear").transpose(1, 2, 0)
        probs = predict_image(
            np.ascontiguousarray(small),
            pred.predict,
            pred.num_classes,
            pred.tile_size,
            overlap,
            args.batch_size,
        )
        probs = resize_bands(probs.astype(np.float32, copy=False), w, h, "bilinear")
    else:
        probs = predict_image(image, pred.predict, pred.num_classes, pred.tile_size, overlap, args.batch_size)
    lo, hi = float(probs.min()), float(probs.max())
    if not (np.isfinite(lo) and np.isfinite(hi)) or lo < -1e-3 or hi > 1 + 1e-3:  # never pictures of NaN
        got = f"values from {lo:.4g} to {hi:.4g}" if np.isfinite(lo + hi) else "NaN or infinite values"
        raise ModelError(
            f"{args.weights.name} gave {got} where probabilities (0..1) belong: the model (or its "
            "weights) is broken"
        )
    classes = probs.argmax(0).astype(np.uint8)
    counts = np.bincount(classes.ravel(), minlength=pred.num_classes)
    assert counts.sum() == h * w  # every pixel has exactly one class

    out: Path = args.outdir
    out.mkdir(parents=True, exist_ok=True)
    res = res or pred.resolution_cm  # an image of unknown resolution is taken to be at the model's
    rows = ["class,pixels,share,area_m2,area_ha"]
    print(f"{'class':<20} {'pixels':>12} {'share':>8}")
    for name, n in zip(pred.class_names, counts, strict=True):
        share = n / (h * w)
        area = n * (res / 100.0) ** 2 if res else None
        rows.append(f"{name},{n},{share:.6f},{'' if area is None else f'{area:.2f}'},"
                    f"{'' if area is None else f'{area / 1e4:.4f}'}")  # fmt: skip
        print(f"{name:<20} {n:>12} {100 * share:>7.2f}%")
    print(f"{'total':<20} {int(counts.sum()):>12} (= {w} x {h})")
    write_text_atomic(out / "pixel_counts.csv", "\n".join(rows) + "\n")
    write_png(out / "classes.png", classes)
    write_png(out / "segments.png", overlay(image, classes, pred.class_colors, args.alpha))
    if not args.no_heatmaps:
        for i, name in enumerate(pred.class_names):
            write_png(out / f"heatmap_{file_name(name)}.png", heatmap(probs[i]))
    print(
        f"wrote pixel_counts.csv, classes.png, segments.png{'' if args.no_heatmaps else ', heatmap_*.png'} in {out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
