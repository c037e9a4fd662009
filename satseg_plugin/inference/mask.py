"""Processing area: the polygons of a vector file, burnt onto the output grid a strip at a time.

``AreaMask(path, grid)`` reads every polygon of the file (all its layers; each
layer's own CRS), reprojects them onto the grid and answers
``mask(y, h, x, w)``: a boolean ``(h, w)`` array of the grid pixels whose
centre lies inside a polygon (GDAL rasterize). Windows that touch no polygon
are neither fetched nor run through the model; the pixels outside are nodata.
Only one strip's pixels are ever burnt at once, so the mask costs no memory
that grows with the extent.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from osgeo import gdal, ogr, osr

from .errors import ExtentError, SourceError
from .tileplan import Grid, srs_from_user
from .tileurl import redact

gdal.UseExceptions()
ogr.UseExceptions()

_POLYGONS = (ogr.wkbPolygon, ogr.wkbMultiPolygon, ogr.wkbCurvePolygon, ogr.wkbMultiSurface)


def _polygons(path: str | os.PathLike[str]) -> list[tuple[ogr.Geometry, osr.SpatialReference | None]]:
    """Every polygon of the vector file ``path`` (``file|layername=NAME``: of that layer) with its CRS.

    ``SourceError`` when there is none.
    """
    text, _, layer_name = str(path).partition("|layername=")  # QGIS's way of naming one layer of a file
    path = text
    name = redact(text)
    if not Path(path).exists() and "://" not in str(path):
        raise SourceError(f"the processing-area file {name} does not exist")
    try:
        ds = ogr.Open(str(path))
    except RuntimeError as exc:
        raise SourceError(f"the processing-area file {name} is not a vector file GDAL reads: {exc}") from None
    if ds is None:
        raise SourceError(f"the processing-area file {name} is not a vector file GDAL reads")
    out = []
    layers = [ds.GetLayerByName(layer_name.split("|")[0])] if layer_name else list(ds)
    if None in layers:
        raise SourceError(f"the processing-area file {name} has no layer {layer_name!r}")
    for layer in layers:
        srs = layer.GetSpatialRef()
        if srs is not None:
            srs = srs.Clone()
            srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
        for feature in layer:
            geom = feature.GetGeometryRef()
            if geom is None or geom.IsEmpty():
                continue
            if ogr.GT_Flatten(geom.GetGeometryType()) not in _POLYGONS:
                continue
            out.append((geom.Clone(), srs))
    ds = None
    if not out:
        raise SourceError(f"the processing-area file {name} has no polygons")
    return out


def mask_bounds(path: str | os.PathLike[str]) -> tuple[tuple[float, float, float, float], str]:
    """The bounding box of the polygons of ``path`` and its CRS (as WKT), to segment just that."""
    polys = _polygons(path)
    srs = polys[0][1] or srs_from_user("EPSG:4326")
    minx = miny = float("inf")
    maxx = maxy = float("-inf")
    for geom, own in polys:
        g = geom.Clone()
        if own is not None and not own.IsSame(srs):
            g.Transform(osr.CoordinateTransformation(own, srs))
        x0, x1, y0, y1 = g.GetEnvelope()
        minx, miny, maxx, maxy = min(minx, x0), min(miny, y0), max(maxx, x1), max(maxy, y1)
    return (minx, miny, maxx, maxy), srs.ExportToWkt()


class AreaMask:
    """The polygons of a vector file on ``grid``: ``mask(y, h, x, w)`` per strip, ``touches`` per window."""

    def __init__(self, path: str | os.PathLike[str], grid: Grid) -> None:
        self.grid = grid
        dst = srs_from_user(grid.crs_wkt)
        self._ds = ogr.GetDriverByName("Memory").CreateDataSource("")
        self._layer = self._ds.CreateLayer("area", dst, ogr.wkbMultiPolygon)
        x0, dx, _, y0, _, dy = grid.geotransform
        gx1, gy1 = x0 + dx * grid.width, y0 + dy * grid.height
        grid_box = ogr.CreateGeometryFromWkt(
            f"POLYGON (({x0} {y0}, {gx1} {y0}, {gx1} {gy1}, {x0} {gy1}, {x0} {y0}))"
        )
        hits = 0
        for geom, srs in _polygons(path):
            g = geom.Clone()
            if srs is not None and not srs.IsSame(dst):
                try:
                    g.Transform(osr.CoordinateTransformation(srs, dst))
                except RuntimeError:
                    continue  # a polygon the grid's CRS cannot hold (beyond Web Mercator's latitudes)
            f = ogr.Feature(self._layer.GetLayerDefn())
            f.SetGeometry(g)
            self._layer.CreateFeature(f)
            hits += bool(g.Intersects(grid_box))
        if not hits:
            raise ExtentError(f"no polygon of {redact(str(path))} lies in the extent to segment")
        self._cache: dict[tuple[int, int, int, int], np.ndarray] = {}  # the strips asked for lately

    def mask(self, y: int, h: int, x: int, w: int) -> np.ndarray:
        """``(h, w)`` booleans: grid pixels ``y..y+h``, ``x..x+w`` whose centre is in a polygon."""
        key = (y, h, x, w)
        if key in self._cache:
            return self._cache[key]
        x0, dx, rx, y0, ry, dy = self.grid.geotransform
        ds = gdal.GetDriverByName("MEM").Create("", w, h, 1, gdal.GDT_Byte)
        ds.SetGeoTransform((x0 + dx * x + rx * y, dx, rx, y0 + ry * x + dy * y, ry, dy))
        ds.SetProjection(self.grid.crs_wkt)
        gdal.RasterizeLayer(ds, [1], self._layer, burn_values=[1])
        out = ds.GetRasterBand(1).ReadAsArray().astype(bool)
        if len(self._cache) >= 4:  # a strip is asked for when prefetched and when read
            del self._cache[next(iter(self._cache))]
        self._cache[key] = out
        return out
