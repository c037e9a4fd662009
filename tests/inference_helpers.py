"""Test models and tiles for the inference core: outputs computable from the imagery alone."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from conftest import ROOT
from onnx import TensorProto, helper, numpy_helper
from osgeo import gdal, osr

from satseg_plugin.inference.imageio import encode_png
from satseg_plugin.inference.metadata import MEAN, STD, ModelMetadata, build_metadata
from satseg_plugin.inference.outputs import HEATMAP_NODATA, HEATMAP_SCALE, HEATMAP_STEPS
from satseg_plugin.inference.segment import SegmentRequest, SegmentResult, run_segment

NAMES = ["background", "red", "green", "blue"]
COLORS = ["#000000", "#ff0000", "#00ff00", "#0000ff"]


def save_model(
    path: Path,
    nodes: list,
    initializers: list,
    classes: int,
    props: dict[str, str] | None,
    in_shape: list | None = None,
) -> Path:
    graph = helper.make_graph(
        nodes,
        "test_model",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, in_shape or ["N", 3, "H", "W"])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", classes, "H", "W"])],
        initializer=initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    if props:
        helper.set_model_props(model, props)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def rgb_logits_weights(gain: float = 20.0) -> tuple[np.ndarray, np.ndarray]:
    """1x1 conv weights/bias: class 0 for dark pixels, else the brightest channel (normalised)."""
    w = np.zeros((4, 3, 1, 1), np.float32)
    for c in range(3):
        w[c + 1, c, 0, 0] = gain
    b = np.zeros(4, np.float32)
    b[0] = gain * 1.0  # background wins where every channel is below ~1 std above the mean
    return w, b


def make_rgb_model(
    path: Path,
    zoom: int | None = 18,
    overlap: int = 0,
    blur: bool = False,
    props: dict[str, str] | None = None,
    resolution_cm: float | None = None,
) -> Path:
    """A model whose class per pixel follows the pixel's (optionally 5x5-blurred) colour.

    With ``blur`` the 5x5 box blur with zero padding makes a window's border
    pixels differ from its inside: exactly what seams at window borders look like.
    """
    w, b = rgb_logits_weights()
    nodes, inits = [], [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")]
    src = "image"
    if blur:
        k = np.zeros((3, 1, 5, 5), np.float32) + 1 / 25
        inits.append(numpy_helper.from_array(k, "k"))
        nodes.append(helper.make_node("Conv", ["image", "k"], ["blurred"], group=3, pads=[2, 2, 2, 2]))
        src = "blurred"
    nodes += [
        helper.make_node("Conv", [src, "w", "b"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
    ]
    meta = ModelMetadata(NAMES, COLORS, 256, overlap, resolution_cm, zoom=zoom)
    return save_model(path, nodes, inits, 4, build_metadata(meta) if props is None else props)


def expected_probabilities(rgb: np.ndarray, blur: bool = False) -> np.ndarray:
    """What ``make_rgb_model`` outputs for a whole ``(H, W, 3)`` image at once (zero padding at its edge)."""
    x = (rgb.astype(np.float32) / 255 - np.array(MEAN, np.float32)) / np.array(STD, np.float32)
    if blur:
        padded = np.pad(x, ((2, 2), (2, 2), (0, 0)))
        acc = np.zeros_like(x)
        for dy in range(5):
            for dx in range(5):
                acc += padded[dy : dy + x.shape[0], dx : dx + x.shape[1]]
        x = acc / 25
    w, b = rgb_logits_weights()
    logits = np.einsum("hwc,kc->khw", x, w[:, :, 0, 0]) + b[:, None, None]
    logits -= logits.max(axis=0)
    e = np.exp(logits)
    return e / e.sum(axis=0)


def pattern_tile(x: int, y: int, z: int, size: int = 256) -> np.ndarray:
    """A deterministic RGB tile: coloured blocks and stripes that cross tile borders smoothly."""
    n = 2**z
    rows = (y * size + np.arange(size))[:, None]
    cols = (x * size + np.arange(size))[None, :]
    g = (rows * 7 + cols * 3) % (n * size)
    rgb = np.zeros((size, size, 3), np.uint8)
    rgb[..., 0] = ((cols // 37) % 3 == 0) * 230
    rgb[..., 1] = ((rows // 29) % 3 == 1) * 220
    rgb[..., 2] = (g // 41 % 4 == 2) * 240
    return rgb


def pattern_provider(z: int, x: int, y: int) -> bytes:
    return encode_png(pattern_tile(x, y, z))


def mosaic(x0: int, y0: int, x1: int, y1: int, z: int) -> np.ndarray:
    """The pattern tiles x0..x1, y0..y1 (inclusive) as one image."""
    rows = [
        np.concatenate([pattern_tile(x, y, z) for x in range(x0, x1 + 1)], axis=1) for y in range(y0, y1 + 1)
    ]
    return np.concatenate(rows, axis=0)


#: Half a step of the 8-bit heatmaps: how far their probabilities may lie from the floats.
HEATMAP_ROUNDING = 0.5 / HEATMAP_STEPS + 1e-6


def heatmap_probabilities(path: str | Path) -> np.ndarray:
    """A heatmap's probabilities as float64 (nodata: NaN), after checking how it stores them:
    bytes 0..254 with scale 1/254 and offset 0 (what GDAL and QGIS apply), nodata 255."""
    ds = gdal.Open(str(path))
    band = ds.GetRasterBand(1)
    assert band.DataType == gdal.GDT_Byte
    assert band.GetScale() == HEATMAP_SCALE and band.GetOffset() == 0
    assert band.GetNoDataValue() == HEATMAP_NODATA
    raw = band.ReadAsArray()
    ds = None
    assert raw[raw != HEATMAP_NODATA].max(initial=0) <= HEATMAP_STEPS
    return np.where(raw == HEATMAP_NODATA, np.nan, raw * HEATMAP_SCALE)


def write_geotiff(path: Path, rgb: np.ndarray, geotransform: tuple, epsg: int = 3857) -> Path:
    """``(H, W, 3)`` uint8 ``rgb`` as a GeoTIFF on ``geotransform`` in ``EPSG:epsg``."""
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(epsg)
    ds = gdal.GetDriverByName("GTiff").Create(str(path), rgb.shape[1], rgb.shape[0], 3, gdal.GDT_Byte)
    ds.SetGeoTransform(geotransform)
    ds.SetProjection(srs.ExportToWkt())
    for i in range(3):
        ds.GetRasterBand(i + 1).WriteArray(rgb[..., i])
    ds = None
    return path


def segment(
    model: Path, url: str, out: Path, bbox: tuple[float, ...], crs: str = "EPSG:3857", **kw: Any
) -> SegmentResult:
    """``run_segment`` of the tiles at ``url`` over ``bbox`` (in ``crs``) into ``out``; ``kw``: more request fields."""
    return run_segment(SegmentRequest(model=model, bbox=bbox, bbox_crs=crs, tiles_url=url, out_dir=out, **kw))


def cli(*args: object) -> subprocess.CompletedProcess:
    """Run ``python -m satseg_plugin.inference <args>`` from the checkout; its output is captured."""
    return subprocess.run(
        [sys.executable, "-m", "satseg_plugin.inference", *map(str, args)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


#: UTM 32N, 0.5 m pixels: the grid of the test GeoTIFFs of bands and channels.
UTM_GT = (500000.0, 0.5, 0.0, 5000000.0, 0.0, -0.5)


def write_utm_raster(path: Path, bands: np.ndarray, alpha: int | None = None) -> Path:
    """A byte GeoTIFF of ``bands`` ``[B, H, W]`` on ``UTM_GT``; band ``alpha`` (1-based) tagged alpha."""
    return write_raster(path, bands, gdal.GDT_Byte, alpha=alpha)


def write_raster(
    path: Path, bands: np.ndarray, kind: int, gt: tuple = UTM_GT, epsg: int = 32632, **how: object
) -> Path:
    """``bands`` ``[B, H, W]`` as a GeoTIFF of GDAL type ``kind`` (Byte, UInt16, Float32...) on ``gt``
    in ``EPSG:epsg``.

    ``how``: ``nodata`` for every band, ``alpha`` (1-based) the band tagged alpha. GDAL would tag
    the 4th band of a 4-band GeoTIFF alpha: an RGB + near-infrared survey says it is not
    (``ALPHA=NO``), so only ``alpha`` makes one.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    count, height, width = bands.shape
    options = ["PHOTOMETRIC=RGB"] if count >= 3 else []
    if count == 4:
        options.append("ALPHA=NO")
    ds = gdal.GetDriverByName("GTiff").Create(str(path), width, height, count, kind, options)
    ds.SetGeoTransform(gt)
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(epsg)
    ds.SetProjection(srs.ExportToWkt())
    for i, band in enumerate(bands):
        out = ds.GetRasterBand(i + 1)
        out.WriteArray(band)
        if how.get("nodata") is not None:
            out.SetNoDataValue(float(how["nodata"]))  # type: ignore[arg-type]
        if how.get("alpha") == i + 1:
            out.SetColorInterpretation(gdal.GCI_AlphaBand)
    ds = None
    return path
