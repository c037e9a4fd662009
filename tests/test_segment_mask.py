"""Processing area (--mask): only windows touching the polygons run; outside is nodata and not counted.

Real GeoPackage/GeoJSON files, loopback tiles, real onnxruntime. Which pixels are
inside is computed here from the polygons' own equations, not by GDAL.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from inference_helpers import cli, make_rgb_model, segment
from osgeo import gdal, ogr, osr
from test_inference_segment import RES, T0, tile_rect
from tileserver import TileServer

from satseg_plugin.inference.errors import ExtentError, SourceError
from satseg_plugin.inference.segment import SegmentResult

BBOX = tile_rect(T0.x, T0.y, T0.x + 10, T0.y + 2)  # ten tiles wide
#: A rectangle over the first 1.5 tiles and a triangle in the ninth tile (EPSG:3857).
RECT = tile_rect(T0.x + 0.2, T0.y + 0.3, T0.x + 1.7, T0.y + 1.6)
TRI = tile_rect(T0.x + 8.1, T0.y + 0.2, T0.x + 8.9, T0.y + 1.0)


def _triangle() -> list[tuple[float, float]]:
    x0, y0, x1, y1 = TRI
    return [(x0, y0), (x1, y0), (x0, y1)]  # right angle at the bottom-left


def write_mask(path: Path, driver: str = "GPKG") -> Path:
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(3857)
    ds = ogr.GetDriverByName(driver).CreateDataSource(str(path))
    layer = ds.CreateLayer("area", srs, ogr.wkbPolygon)
    x0, y0, x1, y1 = RECT
    tri = _triangle()
    for wkt in (
        f"POLYGON (({x0} {y0}, {x1} {y0}, {x1} {y1}, {x0} {y1}, {x0} {y0}))",
        "POLYGON ((" + ", ".join(f"{x} {y}" for x, y in [*tri, tri[0]]) + "))",
    ):
        f = ogr.Feature(layer.GetLayerDefn())
        f.SetGeometry(ogr.CreateGeometryFromWkt(wkt))
        layer.CreateFeature(f)
    ds = None
    return path


def inside(gt: tuple, shape: tuple[int, int]) -> np.ndarray:
    """Pixel centres inside the rectangle or the triangle."""
    h, w = shape
    cx = gt[0] + (np.arange(w) + 0.5) * gt[1]
    cy = gt[3] + (np.arange(h) + 0.5) * gt[5]
    x, y = np.meshgrid(cx, cy)
    x0, y0, x1, y1 = RECT
    rect = (x > x0) & (x < x1) & (y > y0) & (y < y1)
    (ax, ay), (bx, _), (_, cy_) = _triangle()
    tri = (x > ax) & (y > ay) & ((x - ax) / (bx - ax) + (y - ay) / (cy_ - ay) < 1)
    return rect | tri


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_rgb_model(tmp_path_factory.mktemp("m") / "rgb.onnx", overlap=25, blur=True)


def run(model: Path, url: str, out: Path, **kw: object) -> SegmentResult:
    return segment(model, url, out, BBOX, **kw)


def read(path: str) -> tuple[np.ndarray, tuple]:
    ds = gdal.Open(path)
    out = ds.GetRasterBand(1).ReadAsArray(), ds.GetGeoTransform()
    ds = None
    return out


def test_masked_run_is_the_full_run_inside_and_nodata_outside(
    model: Path, pattern_server: TileServer, tmp_path: Path
) -> None:
    pattern_server.requests.clear()  # the server serves the whole module: count this test's requests
    full = run(model, pattern_server.template, tmp_path / "full", write_vectors=True)
    full_tiles = sum(pattern_server.requests.values())
    pattern_server.requests.clear()
    mask = write_mask(tmp_path / "area.gpkg")
    masked = run(model, pattern_server.template, tmp_path / "masked", mask_path=str(mask), write_vectors=True)
    masked_tiles = sum(pattern_server.requests.values())
    a, gt = read(full.classes_path)
    b, gt_b = read(masked.classes_path)
    assert gt == gt_b and a.shape == b.shape
    want = inside(gt, a.shape)
    assert 0.05 < want.mean() < 0.3
    np.testing.assert_array_equal(b[want], a[want])  # inside: exactly what an unmasked run gives
    assert (b[~want] == 255).all()
    for name in masked.heatmap_paths:
        ha, _ = read(full.heatmap_paths[name])
        hb, _ = read(masked.heatmap_paths[name])
        np.testing.assert_array_equal(hb[want], ha[want])
        assert (hb[~want] == 255).all()  # the heatmaps' nodata
    # Counts: only the pixels inside.
    assert sum(c.pixels for c in masked.counts) == int(want.sum())
    assert [c.pixels for c in masked.counts] == [int((b == k).sum()) for k in range(len(masked.counts))]
    # Tiles fetched: those the area's windows read (the middle tiles were never asked for).
    assert masked_tiles < full_tiles * 0.75
    print(f"tiles fetched: {masked_tiles} masked against {full_tiles} for the whole extent")
    # The polygons stay inside the area too.
    ds = ogr.Open(masked.vectors_path)
    layer = ds.GetLayer(0)
    area_box = ogr.CreateGeometryFromWkt(
        "POLYGON (({0} {1}, {2} {1}, {2} {3}, {0} {3}, {0} {1}))".format(*RECT)
    ).Union(ogr.CreateGeometryFromWkt(f"POLYGON (({TRI[0]} {TRI[1]}, {TRI[2]} {TRI[1]}, {TRI[2]} {TRI[3]}, {TRI[0]} {TRI[3]}, {TRI[0]} {TRI[1]}))").Buffer(RES))  # fmt: skip
    assert all(area_box.Buffer(RES).Contains(f.GetGeometryRef()) for f in layer)
    ds = None


def test_mask_in_another_crs_and_file_format(model: Path, pattern_server: TileServer, tmp_path: Path) -> None:
    mask = write_mask(tmp_path / "area3857.gpkg")
    geojson = tmp_path / "area.geojson"
    gdal.VectorTranslate(str(geojson), str(mask), format="GeoJSON", dstSRS="EPSG:4326")
    a = run(model, pattern_server.template, tmp_path / "a", mask_path=str(mask))
    b = run(model, pattern_server.template, tmp_path / "b", mask_path=str(geojson))
    ca, gt = read(a.classes_path)
    cb, _ = read(b.classes_path)
    differ = (ca != cb).mean()
    assert differ < 0.002  # only pixels on the polygons' (reprojected) edges
    assert abs(int((cb != 255).sum()) - int(inside(gt, ca.shape).sum())) < 0.01 * inside(gt, ca.shape).sum()


def test_bad_masks_are_explained(model: Path, pattern_server: TileServer, tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="does not exist"):
        run(model, pattern_server.template, tmp_path / "x", mask_path=str(tmp_path / "none.gpkg"))
    points = tmp_path / "points.geojson"
    points.write_text(
        json.dumps(
            {"type": "FeatureCollection", "features": [
                {"type": "Feature", "properties": {}, "geometry": {"type": "Point", "coordinates": [10, 45]}}
            ]}
        )
    )  # fmt: skip
    with pytest.raises(SourceError, match="has no polygons"):
        run(model, pattern_server.template, tmp_path / "x", mask_path=str(points))
    far = tmp_path / "far.geojson"
    far.write_text(
        json.dumps(
            {"type": "FeatureCollection", "features": [{"type": "Feature", "properties": {}, "geometry": {
                "type": "Polygon", "coordinates": [[[20, 40], [21, 40], [21, 41], [20, 40]]]}}]}
        )
    )  # fmt: skip
    with pytest.raises(ExtentError, match="lies in the extent"):
        run(model, pattern_server.template, tmp_path / "x", mask_path=str(far))
    assert not (tmp_path / "x").exists() or not list((tmp_path / "x").iterdir())


def test_cli_mask_gives_the_extent(model: Path, pattern_server: TileServer, tmp_path: Path) -> None:
    mask = write_mask(tmp_path / "area.gpkg")
    done = cli("segment", "--model", model, "--tiles", pattern_server.template, "--mask", mask, "--out", tmp_path / "o",
               "--quiet")  # fmt: skip
    assert done.returncode == 0, done.stderr
    classes, gt = read(str(tmp_path / "o" / "classes.tif"))
    # The grid is the polygons' bounding box, snapped out to whole pixels.
    assert gt[0] <= RECT[0] < gt[0] + RES and gt[3] - RES < max(RECT[3], TRI[3]) <= gt[3]
    assert gt[0] + classes.shape[1] * RES >= TRI[2] > gt[0] + (classes.shape[1] - 1) * RES
    want = inside(gt, classes.shape)
    assert (classes[~want] == 255).all() and (classes[want] != 255).all()
    neither = cli("segment", "--model", model, "--tiles", pattern_server.template, "--out", tmp_path / "n")
    assert neither.returncode == 2 and "--bbox" in neither.stderr and "--mask" in neither.stderr
    clustered = cli("segment", "--model", model, "--tiles", pattern_server.template, "--mask", mask, "--out",
                    tmp_path / "c", "--cluster", "local:1")  # fmt: skip
    assert clustered.returncode == 2 and "--mask" in clustered.stderr and "single process" in clustered.stderr
