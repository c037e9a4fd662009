"""Polygons per class (inference/vectors.py) on real GDAL rasters: regions across block edges, areas."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from osgeo import gdal, ogr, osr

from satseg_plugin.inference.counts import CountAccumulator, row_pixel_areas
from satseg_plugin.inference.tileplan import Grid, srs_from_user
from satseg_plugin.inference.vectors import polygonize_classes

NAMES = ["background", "a", "b"]
#: A zoom-18 Web Mercator grid at 45° N: pixel areas change from row to row.
RES = 0.5971642834779395
GT = (1113194.9079327357, RES, 0.0, 5621521.486192066, 0.0, -RES)


def _grid(classes: np.ndarray) -> Grid:
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(3857)
    return Grid(srs.ExportToWkt(), GT, classes.shape[1], classes.shape[0])


def _band(classes: np.ndarray, tmp: Path) -> tuple[gdal.Dataset, Grid]:
    grid = _grid(classes)
    ds = gdal.GetDriverByName("GTiff").Create(str(tmp / "c.tif"), grid.width, grid.height, 1, gdal.GDT_Byte)
    ds.SetGeoTransform(grid.geotransform)
    ds.SetProjection(grid.crs_wkt)
    ds.GetRasterBand(1).SetNoDataValue(255)
    ds.GetRasterBand(1).WriteArray(classes)
    return ds, grid


def _features(path: str) -> list[tuple[int, str, float, ogr.Geometry]]:
    ds = ogr.Open(path)
    layer = ds.GetLayer(0)
    out = [
        (f.GetField("class_id"), f.GetField("class"), f.GetField("area_m2"), f.GetGeometryRef().Clone())
        for f in layer
    ]
    ds = None
    return out


def _table_area(classes: np.ndarray, grid: Grid) -> np.ndarray:
    acc = CountAccumulator(grid, len(NAMES))
    acc.add(classes, 0)
    return acc.area


def test_regions_spanning_block_edges_are_one_feature_each(tmp_path: Path) -> None:
    c = np.zeros((40, 30), np.uint8)
    c[2:38, 3:6] = 1  # a bar down through every block edge
    c[5:25, 10:12] = 2  # a U open upwards: two arms in the top blocks, joined at the bottom
    c[5:25, 18:20] = 2
    c[23:25, 10:20] = 2
    c[12:30, 23:27] = 1  # an upside-down U of class 1 with a hole of nodata inside
    c[14:30, 24:26] = 255
    c[31:33, 23:27] = 1  # separate (a row of background between): its own feature
    ds, grid = _band(c, tmp_path)
    for block_rows in (3, 7, 40):
        out = tmp_path / f"v{block_rows}.gpkg"
        result = polygonize_classes(ds.GetRasterBand(1), grid, NAMES, out, block_rows=block_rows)
        feats = _features(str(out))
        assert result.features == len(feats)
        ones = [f for f in feats if f[0] == 1]
        twos = [f for f in feats if f[0] == 2]
        assert len(ones) == 3 and len(twos) == 1, block_rows
        assert all(f[3].IsValid() for f in feats)
        # One polygon each, no cut line: a feature's ring count is that of the real shape.
        for f in ones + twos:
            assert f[3].GetGeometryCount() == 1  # one polygon in the multipolygon
        u = twos[0][3].GetGeometryRef(0)
        assert u.GetGeometryCount() == 1  # no interior ring: the U is simply connected
        assert twos[0][1] == "b"
        # Areas: the sum of the pixels' ground areas, class by class equal to the table's.
        table = _table_area(c, grid)
        for k in range(3):
            got = sum(f[2] for f in feats if f[0] == k)
            assert got == pytest.approx(table[k], rel=1e-9)
        # And the geometries are where the pixels are: their areas on the ground within 0.5 %.
        laea = srs_from_user("+proj=laea +lat_0=45 +lon_0=10 +datum=WGS84 +units=m +no_defs")
        ct = osr.CoordinateTransformation(srs_from_user(grid.crs_wkt), laea)
        for f in feats:
            g = f[3].Clone()
            g.Transform(ct)
            assert g.GetArea() == pytest.approx(f[2], rel=5e-3)
    ds = None


def test_areas_follow_the_rows_pixel_area(tmp_path: Path) -> None:
    c = np.ones((600, 40), np.uint8)  # one region of 600 rows: its rows differ in ground area
    ds, grid = _band(c, tmp_path)
    result = polygonize_classes(ds.GetRasterBand(1), grid, NAMES, tmp_path / "v.gpkg", block_rows=64)
    feats = _features(str(tmp_path / "v.gpkg"))
    assert len(feats) == 1
    assert feats[0][2] == pytest.approx(40 * row_pixel_areas(grid).sum(), rel=1e-12)
    assert result.area_m2[1] == pytest.approx(feats[0][2])
    ds = None


def test_simplify_keeps_the_pixel_area_and_leaves_no_temp_file(tmp_path: Path) -> None:
    yy, xx = np.mgrid[0:80, 0:80]
    c = ((yy - 40) ** 2 + (xx - 40) ** 2 < 30**2).astype(np.uint8)  # a staircase disc
    ds, grid = _band(c, tmp_path)
    plain = polygonize_classes(ds.GetRasterBand(1), grid, NAMES, tmp_path / "p.gpkg", block_rows=16)
    simple = polygonize_classes(
        ds.GetRasterBand(1), grid, NAMES, tmp_path / "s.gpkg", simplify_m=0.5, block_rows=16
    )
    fp = next(f for f in _features(plain.path) if f[0] == 1)
    fs = next(f for f in _features(simple.path) if f[0] == 1)

    def vertices(g: ogr.Geometry) -> int:
        return sum(g.GetGeometryRef(i).GetGeometryRef(0).GetPointCount() for i in range(g.GetGeometryCount()))

    assert vertices(fs[3]) < vertices(fp[3]) / 3
    assert fs[2] == fp[2]  # the attribute stays what the raster shows
    assert fs[3].GetArea() == pytest.approx(fp[3].GetArea(), rel=0.02)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.tif", "p.gpkg", "s.gpkg"]
    ds = None
