"""Which stretch serves the models on imagery of more than 8 bits? Quality through the pipeline.

    .venv/bin/python -m benchmarks.bench_stretch [--sets demo,tile1]

Real 8-bit imagery with real labels is made into a 16-bit raster (x 16 + 100:
12-bit counts, as many satellite products hold) and segmented as users run it
(``run_segment`` over a GeoTIFF, blended windows), once through satseg's own
reading of wide rasters (``stretch``) and once for each other stretch,
applied here to the same values and run as an 8-bit raster. Sets: the demo
block (``satseg-buildings``, the 14 tiles of ``data/default/heldout-demo-z19``,
made by ``STOP_AFTER_DATA=1 bash scripts/make_default_models.sh``) and Dubai
tile1 (``satseg-landcover``, its 9 whole images and masks from ../shared).
Prints IoU per class and the mIoU of each stretch, and its difference from the
8-bit original.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from osgeo import gdal, osr

from satseg_plugin.inference.imageio import read_image
from satseg_plugin.inference.segment import SegmentRequest, run_segment

ROOT = Path(__file__).resolve().parents[1]
DUBAI = ROOT.parent / "shared" / "data" / "dubai-aerial"
DEMO = ROOT / "data" / "default" / "heldout-demo-z19"
UTM_ORIGIN = (500000.0, 5000000.0)

Scene = tuple[np.ndarray, np.ndarray]  # (H, W, 3) uint8 image, (H, W) class labels (255: unlabelled)
StretchFn = Callable[[np.ndarray], np.ndarray]  # wide values (H, W, 3) -> uint8


def linear(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """``values`` from ``low .. high`` to 0 .. 255, rounded and clipped."""
    return np.clip(np.floor((values - low) * 255 / max(high - low, 1e-9) + 0.5), 0, 255).astype(np.uint8)


def per_band(low: float, high: float) -> StretchFn:
    """Each band between its own percentiles (QGIS draws a multiband raster so, from 2 % to 98 %)."""

    def f(v: np.ndarray) -> np.ndarray:
        return np.dstack(
            [linear(v[..., i], *np.percentile(v[..., i], [low, high])) for i in range(v.shape[-1])]
        )

    return f


def joint(low: float, high: float) -> StretchFn:
    """One line for all bands, through the percentiles of all their values."""
    return lambda v: linear(v, *np.percentile(v, [low, high]))


STRETCHES: dict[str, StretchFn | None] = {
    "satseg (the code: wide raster read as it is)": None,
    "per band, 2 % to 98 % (QGIS's drawing)": per_band(2, 98),
    "per band, 0.5 % to 99.5 %": per_band(0.5, 99.5),
    "all bands, 2 % to 98 %": joint(2, 98),
    "all bands, 0 % to 100 % (min to max)": joint(0, 100),
}


def write_raster(path: Path, image: np.ndarray, res: float) -> tuple[float, float, float, float]:
    """``image`` (H, W, 3) as a GeoTIFF of its dtype in UTM 32N with ``res`` m pixels; its bounds."""
    h, w = image.shape[:2]
    kind = gdal.GDT_Byte if image.dtype == np.uint8 else gdal.GDT_UInt16
    ds = gdal.GetDriverByName("GTiff").Create(str(path), w, h, 3, kind, ["PHOTOMETRIC=RGB"])
    ds.SetGeoTransform((UTM_ORIGIN[0], res, 0, UTM_ORIGIN[1], 0, -res))
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(32632)
    ds.SetProjection(srs.ExportToWkt())
    for i in range(3):
        ds.GetRasterBand(i + 1).WriteArray(image[..., i])
    ds = None
    return UTM_ORIGIN[0], UTM_ORIGIN[1] - h * res, UTM_ORIGIN[0] + w * res, UTM_ORIGIN[1]


def segment(model: Path, image: np.ndarray, res: float, tmp: Path) -> np.ndarray:
    """The class raster of ``image`` through ``run_segment``, on the image's own pixels."""
    bbox = write_raster(tmp / "in.tif", image, res)
    out = tmp / "out"
    result = run_segment(
        SegmentRequest(
            model=model, bbox=bbox, bbox_crs="EPSG:32632", raster_path=str(tmp / "in.tif"), out_dir=out,
            write_heatmaps=False, write_counts=False,
        )
    )  # fmt: skip
    h, w = image.shape[
        :2
    ]  # the model's resolution may differ a little from the raster's: back onto its pixels
    ds = gdal.Warp("/vsimem/bench-stretch.tif", result.classes_path, outputBounds=bbox, width=w, height=h)
    classes = ds.ReadAsArray()
    ds = None
    gdal.Unlink("/vsimem/bench-stretch.tif")
    shutil.rmtree(out)
    return classes


def ious(pairs: list[tuple[np.ndarray, np.ndarray]], classes: list[int]) -> np.ndarray:
    inter, union = np.zeros(len(classes)), np.zeros(len(classes))
    for pred, lab in pairs:
        ok = (lab != 255) & (pred != 255)
        for k, c in enumerate(classes):
            p, t = (pred == c) & ok, (lab == c) & ok
            inter[k] += (p & t).sum()
            union[k] += (p | t).sum()
    return inter / np.maximum(union, 1)


def demo_scenes() -> list[Scene]:
    if not DEMO.is_dir():
        raise SystemExit(
            f"{DEMO} is missing: STOP_AFTER_DATA=1 bash scripts/make_default_models.sh builds it"
        )
    tiles = [
        tuple(int(v) for v in f.stem.split("-")) for f in sorted((DEMO / "labels" / "color").glob("*.png"))
    ]
    x0, y0 = min(t[1] for t in tiles), min(t[2] for t in tiles)
    w, h = (max(t[1] for t in tiles) - x0 + 1) * 256, (max(t[2] for t in tiles) - y0 + 1) * 256
    image, labels = np.zeros((h, w, 3), np.uint8), np.full((h, w), 255, np.uint8)
    for z, x, y in tiles:
        at = np.s_[(y - y0) * 256 : (y - y0 + 1) * 256, (x - x0) * 256 : (x - x0 + 1) * 256]
        image[at] = read_image(DEMO / "images" / f"{z}-{x}-{y}.png")[..., :3]
        labels[at] = read_image(DEMO / "labels" / "color" / f"{z}-{x}-{y}.png")[..., 0]
    return [(image, labels)]


def dubai_scenes(scene: str) -> list[Scene]:
    config = json.loads((ROOT / "training" / "classes" / "dubai.json").read_text())
    colours = {
        k: tuple(int(c["mask_color"][i : i + 2], 16) for i in (1, 3, 5))
        for k, c in enumerate(config["classes"])
        if c["mask_color"]
    }
    scenes = []
    for path in sorted((DUBAI / scene / "images").glob("*.jpg")):
        mask = read_image(DUBAI / scene / "masks" / f"{path.stem}.png")[..., :3]
        labels = np.full(mask.shape[:2], 255, np.uint8)
        for k, c in colours.items():
            labels[(mask == c).all(axis=-1)] = k
        scenes.append((read_image(path)[..., :3], labels))
    return scenes


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--sets", default="demo,tile1", help="comma-separated: demo, and Dubai scenes (tile1, tile7...)"
    )
    args = p.parse_args(argv)
    for name in args.sets.split(","):
        if name == "demo":
            scenes, model, res, classes = demo_scenes(), "satseg-buildings", 0.29692, [0, 1]
        else:
            scenes, model, res, classes = dubai_scenes(name), "satseg-landcover", 1.0, [1, 2, 3, 4, 5]
        onnx = ROOT / "models" / f"{model}.onnx"
        print(f"\n{name} ({model}; IoU per class {classes} and mIoU, %)")
        with tempfile.TemporaryDirectory() as tmp:
            base = ious([(segment(onnx, img, res, Path(tmp)), lab) for img, lab in scenes], classes)
            print(
                f"  {'8-bit original':46s} {100 * base.mean():5.1f}  "
                + " ".join(f"{100 * v:5.1f}" for v in base)
            )
            for label, fn in STRETCHES.items():
                pairs = []
                for img, lab in scenes:
                    wide = img.astype(np.uint16) * 16 + 100
                    pairs.append((segment(onnx, wide if fn is None else fn(wide), res, Path(tmp)), lab))
                got = ious(pairs, classes)
                print(
                    f"  {label:46s} {100 * got.mean():5.1f}  " + " ".join(f"{100 * v:5.1f}" for v in got)
                    + f"  ({100 * (got.mean() - base.mean()):+.1f})"
                )  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
