"""Polygons per class: the class raster's regions as a GeoPackage layer, block by block.

``polygonize_classes`` reads the class raster a block of rows at a time and
runs ``gdal.Polygonize`` (4-connected, the way the sieve counts regions too,
so every polygon is valid: no ring touches itself at a corner) on each block.
Regions that reach a block's bottom row are held back; the next block's
top-row regions of the same class that touch them from below are merged with
them (union-find over region ids, then one GEOS union of the parts), so a
region is one feature with no cut line at a block edge, whatever the block
size. Memory holds one block and the regions still open at its bottom edge.

Coordinates are computed in pixel units (integers, exact in floating point,
so the parts of a region meet exactly and their union leaves no sliver) and
moved onto the grid by one affine PROJ operation at the end.

Each feature's ``area_m2`` is the sum of its pixels' ground areas, each row's
pixel area from ``counts.row_pixel_areas`` (the pixel-count table's), so the
areas of a class's polygons add up to the table's area for that class. The
pixels of a region are found by burning the block's polygons back into a
label raster (pixel centres: exactly the pixels polygonize traced).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from osgeo import gdal, ogr, osr

from .atomic import atomic_path
from .counts import row_pixel_areas
from .errors import Cancelled, SatsegError
from .tileplan import Grid, srs_from_user

gdal.UseExceptions()
ogr.UseExceptions()

VECTORS_NAME = "classes.gpkg"
LAYER_NAME = "classes"
#: Pixels per polygonized block: bounds the label raster and the per-pixel area weights (~50 MB).
BLOCK_PIXELS = 4_000_000
FIELD_CLASS_ID = "class_id"
FIELD_CLASS = "class"
FIELD_AREA = "area_m2"


@dataclass(frozen=True)
class VectorResult:
    """What ``polygonize_classes`` wrote: the GeoPackage, its features, their area per class."""

    path: str
    features: int
    area_m2: list[float]  # per class index, summed over its features


def ground_pixel_size(grid: Grid) -> float:
    """Side in metres of the grid's middle-row pixel on the ground (square root of its area)."""
    return float(np.sqrt(row_pixel_areas(grid)[grid.height // 2]))


def _affine(grid: Grid) -> osr.CoordinateTransformation:
    """Pixel coordinates (column, row) to the grid's CRS, as one PROJ affine operation."""
    x0, dx, rx, y0, ry, dy = grid.geotransform
    srs = srs_from_user(grid.crs_wkt)
    options = osr.CoordinateTransformationOptions()
    options.SetOperation(
        f"+proj=affine +xoff={x0!r} +yoff={y0!r} +s11={dx!r} +s12={rx!r} +s21={ry!r} +s22={dy!r}"
    )
    return osr.CoordinateTransformation(srs, srs, options)


class _Regions:
    """Union-find over region ids, with each region's class, area and polygon parts."""

    def __init__(self) -> None:
        self.parent: dict[int, int] = {}
        self.cls: dict[int, int] = {}
        self.area: dict[int, float] = {}
        self.parts: dict[int, list[ogr.Geometry]] = {}

    def add(self, rid: int, cls: int, area: float, geom: ogr.Geometry) -> None:
        self.parent[rid] = rid
        self.cls[rid] = cls
        self.area[rid] = area
        self.parts[rid] = [geom]

    def find(self, rid: int) -> int:
        root = rid
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[rid] != root:  # path compression
            self.parent[rid], rid = root, self.parent[rid]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if len(self.parts[ra]) < len(self.parts[rb]):
            ra, rb = rb, ra
        self.parent[rb] = ra
        self.area[ra] += self.area.pop(rb)
        self.parts[ra].extend(self.parts.pop(rb))
        del self.cls[rb]

    def pop(self, root: int) -> tuple[int, float, list[ogr.Geometry]]:
        """Take a finished region out (its members' ids go too)."""
        return self.cls.pop(root), self.area.pop(root), self.parts.pop(root)

    def forget(self, rids: Sequence[int]) -> None:
        for rid in rids:
            del self.parent[rid]


def _polygonize_block(
    classes: np.ndarray, y0: int, nodata: int | None, srs: osr.SpatialReference
) -> tuple[list[tuple[int, ogr.Geometry]], np.ndarray]:
    """Polygonize ``(rows, width)`` classes in pixel coordinates; return the polygons and their label raster.

    Polygon ``i`` is ``(class, geometry)`` and covers the pixels labelled ``i`` (-1: nodata).
    ``srs`` is only there so that rasterizing sees the layer and raster in the same CRS.
    """
    rows, width = classes.shape
    mem = gdal.GetDriverByName("MEM")
    ds = mem.Create("", width, rows, 1, gdal.GDT_Byte)
    ds.SetGeoTransform((0.0, 1.0, 0.0, float(y0), 0.0, 1.0))
    band = ds.GetRasterBand(1)
    if nodata is not None:
        band.SetNoDataValue(nodata)
    band.WriteArray(classes)
    vds = ogr.GetDriverByName("Memory").CreateDataSource("")
    layer = vds.CreateLayer("regions", srs, geom_type=ogr.wkbPolygon)
    layer.CreateField(ogr.FieldDefn("cls", ogr.OFTInteger))
    layer.CreateField(ogr.FieldDefn("id", ogr.OFTInteger))
    mask = band.GetMaskBand() if nodata is not None else None
    gdal.Polygonize(band, mask, layer, 0, [])
    polygons: list[tuple[int, ogr.Geometry]] = []
    layer.ResetReading()
    for feature in layer:
        feature.SetField(1, len(polygons))
        layer.SetFeature(feature)
        polygons.append((feature.GetField(0), feature.GetGeometryRef().Clone()))
    labels = mem.Create("", width, rows, 1, gdal.GDT_Int32)
    labels.SetGeoTransform((0.0, 1.0, 0.0, float(y0), 0.0, 1.0))
    labels.SetSpatialRef(srs)
    labels.GetRasterBand(1).Fill(-1)
    gdal.RasterizeLayer(labels, [1], layer, options=["ATTRIBUTE=id"])
    return polygons, labels.GetRasterBand(1).ReadAsArray()


def _union(parts: list[ogr.Geometry]) -> ogr.Geometry:
    if len(parts) == 1:
        return parts[0]
    multi = ogr.Geometry(ogr.wkbMultiPolygon)
    for p in parts:
        multi.AddGeometry(p)
    return multi.UnionCascaded()


def polygonize_classes(
    band: gdal.Band,
    grid: Grid,
    class_names: Sequence[str],
    path: str | os.PathLike[str],
    simplify_m: float | None = None,
    block_rows: int | None = None,
    is_cancelled: Callable[[], bool] | None = None,
) -> VectorResult:
    """Write the regions of the class raster ``band`` (on ``grid``) to the GeoPackage ``path``.

    One feature per 4-connected region of a class (nodata left out) with
    ``class_id``, ``class`` and ``area_m2`` (ground area of its pixels, as the
    pixel-count table measures it). ``simplify_m`` simplifies each polygon
    (GEOS, topology of the polygon kept) with that tolerance in ground metres;
    the area stays the pixels' (what the class raster shows). ``block_rows``
    (default: as many rows as fit ``BLOCK_PIXELS``) is the height of a block.
    Written under a temporary name and renamed when complete.
    """
    if simplify_m is not None and simplify_m < 0:
        raise SatsegError(f"the simplification tolerance must be 0 or more metres, not {simplify_m}")
    width, height = grid.width, grid.height
    rows_per_block = block_rows or max(1, BLOCK_PIXELS // max(1, width))
    row_area = row_pixel_areas(grid)
    tolerance_px = simplify_m / ground_pixel_size(grid) if simplify_m else 0.0
    to_grid = _affine(grid)
    nodata_value = band.GetNoDataValue()
    nodata = int(nodata_value) if nodata_value is not None else None
    srs = srs_from_user(grid.crs_wkt)
    per_class = [0.0] * len(class_names)
    count = 0
    with atomic_path(path) as tmp:
        out = ogr.GetDriverByName("GPKG").CreateDataSource(str(tmp))
        try:
            layer = out.CreateLayer(LAYER_NAME, srs, ogr.wkbMultiPolygon, ["SPATIAL_INDEX=YES"])
            layer.CreateField(ogr.FieldDefn(FIELD_CLASS_ID, ogr.OFTInteger))
            name_field = ogr.FieldDefn(FIELD_CLASS, ogr.OFTString)
            layer.CreateField(name_field)
            layer.CreateField(ogr.FieldDefn(FIELD_AREA, ogr.OFTReal))
            defn = layer.GetLayerDefn()
            regions = _Regions()

            def write(root: int) -> None:
                nonlocal count
                cls, area, parts = regions.pop(root)
                geom = _union(parts)
                if tolerance_px > 0:
                    geom = geom.SimplifyPreserveTopology(tolerance_px)
                geom = ogr.ForceToMultiPolygon(geom)
                geom.Transform(to_grid)
                feature = ogr.Feature(defn)
                feature.SetField(FIELD_CLASS_ID, cls)
                feature.SetField(FIELD_CLASS, class_names[cls] if cls < len(class_names) else str(cls))
                feature.SetField(FIELD_AREA, area)
                feature.SetGeometryDirectly(geom)
                layer.CreateFeature(feature)
                if cls < len(per_class):
                    per_class[cls] += area
                count += 1

            layer.StartTransaction()
            next_id = 0
            prev_bottom: np.ndarray | None = None  # region ids of the last block's bottom row (-1: none)
            prev_classes: np.ndarray | None = None
            pending: list[int] = []  # region ids not yet written
            for y0 in range(0, height, rows_per_block):
                if is_cancelled is not None and is_cancelled():
                    raise Cancelled("cancelled")
                rows = min(rows_per_block, height - y0)
                classes = band.ReadAsArray(0, y0, width, rows)
                polygons, labels = _polygonize_block(classes, y0, nodata, srs)
                n = len(polygons)
                ids = labels.astype(np.int64)
                ids[labels >= 0] += next_id
                # Ground area of each polygon: its pixels, each weighted by its row's pixel area.
                weights = np.broadcast_to(row_area[y0 : y0 + rows, None], labels.shape)
                valid = labels >= 0
                areas = np.bincount(labels[valid], weights=weights[valid], minlength=n)
                for i, (cls, geom) in enumerate(polygons):
                    regions.add(next_id + i, int(cls), float(areas[i]), geom)
                    pending.append(next_id + i)
                next_id += n
                if prev_bottom is not None and prev_classes is not None:
                    top = ids[0]
                    touch = (prev_bottom >= 0) & (top >= 0) & (prev_classes == classes[0])
                    if touch.any():
                        pairs = np.unique(np.stack([prev_bottom[touch], top[touch]], axis=1), axis=0)
                        for a, b in pairs:
                            regions.union(int(a), int(b))
                last = y0 + rows >= height
                open_roots = set() if last else {regions.find(int(r)) for r in np.unique(ids[-1]) if r >= 0}
                still: list[int] = []
                done_ids: list[int] = []
                finished: set[int] = set()
                for rid in pending:
                    root = regions.find(rid)
                    if root in open_roots:
                        still.append(rid)
                    else:
                        done_ids.append(rid)
                        finished.add(root)
                for root in finished:
                    write(root)
                regions.forget(done_ids)
                pending = still
                prev_bottom, prev_classes = ids[-1].copy(), classes[-1].copy()
            layer.CommitTransaction()
        finally:
            out = None  # closing writes the file
    return VectorResult(str(path), count, per_class)


def open_vectors(path: str | os.PathLike[str]) -> ogr.DataSource:
    """Open a GeoPackage written by ``polygonize_classes`` (for tests and callers that read it back)."""
    if not Path(path).is_file():
        raise SatsegError(f"no polygon layer at {path}")
    return ogr.Open(str(path))
