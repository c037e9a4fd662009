"""Burn class labels into XYZ tiles with GDAL's rasterizer.

The matched features of every class go once into one in-memory OGR layer in
EPSG:3857, already drawn to their final shape: lines buffered to
``stroke-width`` pixels, polygons filled and outlined (buffered by half the
stroke), as Mapnik's line and polygon symbolizers draw them. Features are
stored in the config's drawing order, so a tile is one ``RasterizeLayer``
call with a spatial filter: later classes land over earlier ones, each pixel
gets the class index of the last feature covering its centre, with no
antialiasing.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterable

import numpy as np
from osgeo import gdal, ogr

from .classes import ClassConfig
from .osm_source import OsmFeature, web_mercator
from .tiles import pixel_size, tile_bounds, touching_tiles

gdal.UseExceptions()
ogr.UseExceptions()


def _shape(geom: ogr.Geometry, kind: int, stroke_px: float, px: float) -> ogr.Geometry | None:
    """The area a feature covers once drawn with a ``stroke_px``-pixel pen."""
    if kind == 2 and stroke_px <= 0:
        return None  # a line with no width draws nothing
    if stroke_px <= 0:
        return geom
    try:
        out = geom.Buffer(stroke_px / 2 * px, 2)
    except RuntimeError:
        try:  # broken OSM areas (rings of two points, self-intersections): repair, then draw
            out = geom.MakeValid().Buffer(stroke_px / 2 * px, 2)
        except RuntimeError:
            return None
    return None if out is None or out.IsEmpty() else out


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def encode_label_png(labels: np.ndarray, level: int = 1) -> bytes:
    """PNG bytes of a label tile: RGB, every byte the class index (design.md's label format).

    A direct zlib encoder: label tiles are written for every sampled tile and
    are long runs of a few values, so this is about four times faster than
    GDAL's PNG driver (``imageio.write_png``) and compresses as well.
    ``imageio.read_image`` reads the result back unchanged.
    """
    h, w = labels.shape
    raw = np.zeros((h, 1 + 3 * w), np.uint8)  # each row: filter byte 0, then R G B per pixel
    raw[:, 1:].reshape(h, w, 3)[...] = labels[..., None]
    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)  # 8-bit RGB, no interlace
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(raw.tobytes(), level))
        + _chunk(b"IEND", b"")
    )


class LabelStore:
    """The drawn features of one run, in drawing order, and the tiles they touch.

    ``add`` takes features as read; ``touched`` maps ``(x, y)`` to the class
    indices drawn there; ``render(x, y)`` returns the tile's label array.
    """

    def __init__(
        self, config: ClassConfig, zoom: int, trange: tuple[int, int, int, int], tile_size: int = 256
    ) -> None:
        self.config = config
        self.zoom = zoom
        self.trange = trange
        self.tile_size = tile_size
        self.px = pixel_size(zoom, tile_size)
        self.ds = gdal.GetDriverByName("Memory").Create("", 0, 0, 0, gdal.GDT_Unknown)
        self.layer = self.ds.CreateLayer("labels", web_mercator(), ogr.wkbUnknown)
        self.layer.CreateField(ogr.FieldDefn("cls", ogr.OFTInteger))
        self._defn = self.layer.GetLayerDefn()
        self.touched: dict[tuple[int, int], set[int]] = {}
        self.features_per_class = [0] * config.num_classes
        self.matched_per_rule = [0] * len(config.rules)  # features each rule's filter took
        self._pending: list[list[ogr.Geometry]] = [[] for _ in config.rules]
        self._raster = gdal.GetDriverByName("MEM").Create("", tile_size, tile_size, 1, gdal.GDT_Byte)
        self._raster.SetProjection(web_mercator().ExportToWkt())
        self._band = self._raster.GetRasterBand(1)

    def add(self, features: Iterable[OsmFeature], layers_for: list[list[str] | None]) -> int:
        """Match ``features`` against every rule; keep the drawn shapes. Returns the number matched.

        ``layers_for[i]`` is the layers rule ``i`` reads (``None``: all).
        """
        matched = 0
        rules = list(
            zip(range(len(self.config.rules)), self.config.rules, layers_for, self._pending, strict=True)
        )
        for feat in features:
            hit = False
            for k, rule, layers, pending in rules:
                if layers is not None and feat.layer not in layers:
                    continue
                if not rule.predicate(feat.tags):
                    continue
                self.matched_per_rule[k] += 1
                shape = _shape(feat.geometry, feat.geometry_type, rule.stroke_width, self.px)
                if shape is not None:
                    pending.append(shape)
                    hit = True
            matched += hit
        return matched

    def finish(self, find_tiles: bool = True) -> None:
        """Write the kept shapes to the layer in drawing order and (``find_tiles``) find the tiles they touch.

        A worker of a cluster build, which is given its tiles, leaves ``touched`` empty.
        """
        for rule, shapes in zip(self.config.rules, self._pending, strict=True):
            for shape in shapes:
                f = ogr.Feature(self._defn)
                f.SetField(0, rule.index)
                f.SetGeometryDirectly(shape)
                self.layer.CreateFeature(f)
                if rule.index:
                    self.features_per_class[rule.index] += 1
                for xy in touching_tiles(shape, self.zoom, self.trange) if find_tiles else ():
                    self.touched.setdefault(xy, set()).add(rule.index)
        self._pending = [[] for _ in self.config.rules]

    def labelled_tiles(self) -> list[tuple[int, int]]:
        """Tiles touched by a feature that draws a class (not only background)."""
        return [xy for xy, classes in self.touched.items() if any(classes)]

    def render(self, x: int, y: int) -> np.ndarray:
        """The ``(tile_size, tile_size)`` uint8 class indices of tile ``(x, y)``."""
        minx, miny, maxx, maxy = tile_bounds(x, y, self.zoom)
        self._raster.SetGeoTransform((minx, self.px, 0.0, maxy, 0.0, -self.px))
        self._band.Fill(0)
        self.layer.SetSpatialFilterRect(minx, miny, maxx, maxy)
        gdal.RasterizeLayer(self._raster, [1], self.layer, options=["ATTRIBUTE=cls"])
        self.layer.SetSpatialFilter(None)
        return self._band.ReadAsArray()
