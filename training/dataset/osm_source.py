"""Read OpenStreetMap features through GDAL/OGR: .osm.pbf, GeoJSON, OSM QA .mbtiles.

Every OSM tag is visible: OGR's own fields plus the ``other_tags`` hstore that
its OSM driver fills with the tags its schema lacks. Geometries come back in
EPSG:3857 (Web Mercator), clipped to the area asked for; points are left out
(labels are drawn from lines and areas, as Mapnik's line and polygon
symbolizers draw them).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from osgeo import gdal, ogr, osr

from satseg_plugin.inference.errors import SourceError
from satseg_plugin.inference.tileplan import HALF_WORLD

gdal.UseExceptions()
ogr.UseExceptions()
osr.UseExceptions()

_HSTORE_RE = re.compile(r'"((?:[^"\\]|\\.)*)"\s*=>\s*(?:"((?:[^"\\]|\\.)*)"|NULL)')
_UNESCAPE_RE = re.compile(r"\\(.)")
#: Layers of OGR's OSM driver that hold only points (never drawn).
_POINT_LAYERS = {"points"}


def parse_hstore(text: str | None) -> dict[str, str]:
    """Parse OGR's ``other_tags`` (``"k"=>"v","k2"=>"v2"``) into a dict."""
    if not text:
        return {}
    out: dict[str, str] = {}
    for m in _HSTORE_RE.finditer(text):
        if m.group(2) is None:
            continue
        out[_UNESCAPE_RE.sub(r"\1", m.group(1))] = _UNESCAPE_RE.sub(r"\1", m.group(2))
    return out


@dataclass
class OsmFeature:
    """One feature: its layer, all its tags and its geometry in EPSG:3857."""

    layer: str
    tags: dict[str, object]
    geometry: ogr.Geometry
    geometry_type: int  # Mapnik's: 1 point, 2 line, 3 polygon, 4 collection


def web_mercator() -> osr.SpatialReference:
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(3857)
    srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    return srs


def _mapnik_type(geom: ogr.Geometry) -> int:
    flat = ogr.GT_Flatten(geom.GetGeometryType())
    if flat in (ogr.wkbPoint, ogr.wkbMultiPoint):
        return 1
    if flat in (ogr.wkbLineString, ogr.wkbMultiLineString):
        return 2
    if flat in (ogr.wkbPolygon, ogr.wkbMultiPolygon):
        return 3
    return 4


class OsmSource:
    """An opened OSM file; ``features(extent)`` reads it once, clipped to ``extent``.

    Raises ``SourceError`` when the file is missing or OGR cannot read it.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise SourceError(f"OSM file not found: {self.path}")
        try:
            self.ds = gdal.OpenEx(str(self.path), gdal.OF_VECTOR | gdal.OF_READONLY)
        except RuntimeError as exc:
            raise SourceError(
                f"cannot read {self.path} as OSM data (.osm.pbf, .osm, GeoJSON or OSM QA .mbtiles): {exc}"
            ) from None
        if self.ds is None or self.ds.GetLayerCount() == 0:
            raise SourceError(f"{self.path} holds no vector layers (expected .osm.pbf, GeoJSON or .mbtiles)")
        self.driver = self.ds.GetDriver().ShortName
        self.layer_names = [self.ds.GetLayer(i).GetName() for i in range(self.ds.GetLayerCount())]

    @property
    def is_vector_tiles(self) -> bool:
        return self.driver in ("MBTiles", "MVT")

    def layers_for(self, source_layer: str | None) -> list[str] | None:
        """Layer names a class with ``sourceLayer`` reads (``None``: all).

        OSM QA tiles name their one layer ``osm``; a .osm.pbf or GeoJSON file
        has its driver's layer names instead, so there a ``sourceLayer`` that
        matches no layer means the whole file. In vector tiles with other
        layers it is an error.
        """
        if source_layer is None:
            return None
        if source_layer in self.layer_names:
            return [source_layer]
        if self.is_vector_tiles:
            raise SourceError(
                f"{self.path.name} has no layer {source_layer!r} (layers: {', '.join(self.layer_names)}); "
                "fix 'sourceLayer' in the class config"
            )
        return None

    def features(
        self,
        extent_3857: tuple[float, float, float, float],
        within: tuple[float, float, float, float] | None = None,
    ) -> Iterator[OsmFeature]:
        """Yield the line and area features that meet ``extent_3857``, clipped to it.

        ``within`` (a part of the extent, EPSG:3857) yields only the features
        that meet it, each still clipped to the whole extent: exactly the
        geometries a read of the whole extent gives, for the features that
        can draw there (a chunk of a cluster build).
        """
        target = web_mercator()
        minx, miny, maxx, maxy = extent_3857
        clip = ogr.CreateGeometryFromWkt(
            f"POLYGON(({minx} {miny},{maxx} {miny},{maxx} {maxy},{minx} {maxy},{minx} {miny}))"
        )
        keep = extent_3857 if within is None else within
        if within is not None and self.is_vector_tiles:
            # A feature cut into vector tiles comes once per tile, each piece reaching into its
            # neighbours' buffers: read the tiles around too, so that no piece that draws here is missed.
            pad = self.vector_tile_span()
            keep = (within[0] - pad, within[1] - pad, within[2] + pad, within[3] + pad)
        if within is not None:  # never more than the whole extent: what it leaves out stays out
            keep = (
                max(keep[0], minx), max(keep[1], miny), min(keep[2], maxx), min(keep[3], maxy)
            )  # fmt: skip
        if self.driver == "OSM":
            # The OSM driver reads the file in one pass across its layers. Its spatial filter also
            # drops the nodes outside, which changes the ways and areas it builds: filtered by the
            # whole extent, as a whole read is, and only then by ``within``.
            yield from self._osm_features(target, clip, extent_3857, keep)
            return
        for name in self.layer_names:
            if name in _POINT_LAYERS:
                continue
            layer = self.ds.GetLayerByName(name)
            yield from self._layer_features(layer, name, target, clip, extent_3857, keep)

    def vector_tile_span(self) -> float:
        """Width in EPSG:3857 metres of one of the file's vector tiles (0 for other formats)."""
        if not self.is_vector_tiles:
            return 0.0
        try:
            zoom = int(self.ds.GetMetadataItem("ZOOM_LEVEL") or self.ds.GetMetadataItem("maxzoom") or 0)
        except ValueError:
            zoom = 0
        return 2 * HALF_WORLD / (1 << zoom)

    def _transform_for(
        self, layer: ogr.Layer, target: osr.SpatialReference
    ) -> osr.CoordinateTransformation | None:
        srs = layer.GetSpatialRef()
        if srs is None:
            srs = osr.SpatialReference()
            srs.ImportFromEPSG(4326)  # GeoJSON without a CRS is WGS84 lon/lat
        srs = srs.Clone()
        srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
        if srs.IsSame(target):
            return None
        return osr.CoordinateTransformation(srs, target)

    def _set_filter(
        self, layer: ogr.Layer, to_3857: osr.CoordinateTransformation | None, extent: tuple
    ) -> None:
        minx, miny, maxx, maxy = extent
        if to_3857 is None:
            layer.SetSpatialFilterRect(minx, miny, maxx, maxy)
            return
        back = to_3857.GetInverse()
        # Corners and edge midpoints are enough: the extent is small and axis-aligned in both CRSs.
        xs, ys = [], []
        for x in (minx, (minx + maxx) / 2, maxx):
            for y in (miny, (miny + maxy) / 2, maxy):
                px, py, _ = back.TransformPoint(x, y)
                xs.append(px)
                ys.append(py)
        layer.SetSpatialFilterRect(min(xs), min(ys), max(xs), max(ys))

    def _layer_features(
        self,
        layer: ogr.Layer,
        name: str,
        target: osr.SpatialReference,
        clip: ogr.Geometry,
        extent: tuple,
        keep: tuple,
    ) -> Iterator[OsmFeature]:
        to_3857 = self._transform_for(layer, target)
        self._set_filter(layer, to_3857, keep)
        layer.ResetReading()
        defn = layer.GetLayerDefn()
        fields = [defn.GetFieldDefn(i).GetName() for i in range(defn.GetFieldCount())]
        for feat in layer:
            out = self._convert(feat, name, fields, to_3857, clip, extent, keep)
            if out is not None:
                yield out

    def _osm_features(
        self, target: osr.SpatialReference, clip: ogr.Geometry, extent: tuple, keep: tuple
    ) -> Iterator[OsmFeature]:
        transforms: dict[str, tuple[osr.CoordinateTransformation | None, list[str]]] = {}
        for name in self.layer_names:
            layer = self.ds.GetLayerByName(name)
            to_3857 = self._transform_for(layer, target)
            self._set_filter(layer, to_3857, extent)
            defn = layer.GetLayerDefn()
            transforms[name] = (
                to_3857,
                [defn.GetFieldDefn(i).GetName() for i in range(defn.GetFieldCount())],
            )
        self.ds.ResetReading()
        while True:
            feat, layer = self.ds.GetNextFeature()
            if feat is None:
                break
            name = layer.GetName()
            if name in _POINT_LAYERS:
                continue
            to_3857, fields = transforms[name]
            out = self._convert(feat, name, fields, to_3857, clip, extent, keep)
            if out is not None:
                yield out

    @staticmethod
    def _convert(
        feat: ogr.Feature,
        layer: str,
        fields: list[str],
        to_3857: osr.CoordinateTransformation | None,
        clip: ogr.Geometry,
        extent: tuple,
        keep: tuple,
    ) -> OsmFeature | None:
        geom = feat.GetGeometryRef()
        if geom is None or geom.IsEmpty():
            return None
        kind = _mapnik_type(geom)
        if kind == 1:
            return None
        geom = geom.Clone()
        if to_3857 is not None:
            geom.Transform(to_3857)
        if kind == 3 and not geom.IsValid():
            # What cannot be repaired into an area is drawn as it is (it may draw nothing), so
            # the filters still select exactly the features OGR's own queries select.
            geom = repair_area(geom) or geom
        minx, maxx, miny, maxy = geom.GetEnvelope()
        if maxx < keep[0] or minx > keep[2] or maxy < keep[1] or miny > keep[3]:
            return None
        if minx < extent[0] or maxx > extent[2] or miny < extent[1] or maxy > extent[3]:
            clipped = _clip(geom, clip)
            if clipped is None:
                return None
            geom = clipped
        tags: dict[str, object] = {}
        for i, key in enumerate(fields):
            if key == "other_tags":
                tags.update(parse_hstore(feat.GetFieldAsString(i) if feat.IsFieldSetAndNotNull(i) else None))
            elif feat.IsFieldSetAndNotNull(i):
                tags[key] = feat.GetField(i)
        tags.setdefault("mapnik::geometry_type", kind)
        return OsmFeature(layer, tags, geom, kind)


def repair_area(geom: ogr.Geometry) -> ogr.Geometry | None:
    """An invalid OSM area made valid with all of its area kept, or ``None`` when none is left.

    Self-intersecting rings are common in OSM; burnt as they are, the
    rasteriser's even-odd rule leaves the parts that the ring wraps twice (or
    that cross) empty. GEOS's "structure" repair unions the rings' areas (the
    shell's whole area, holes cut out) and the polygon parts are kept; GEOS's
    older "linework" repair is the fallback.
    """
    for options in (["METHOD=STRUCTURE"], None):
        try:
            fixed = geom.MakeValid(options) if options else geom.MakeValid()
        except (RuntimeError, TypeError):
            continue
        if fixed is None:
            continue
        parts = _polygon_parts(fixed)
        if parts is not None and not parts.IsEmpty() and parts.GetArea() > 0:
            return parts
    return None


def _polygon_parts(geom: ogr.Geometry) -> ogr.Geometry | None:
    """The polygons of ``geom`` (a repair may add stray lines or points) as one multipolygon."""
    flat = ogr.GT_Flatten(geom.GetGeometryType())
    if flat == ogr.wkbPolygon:
        return geom
    if flat == ogr.wkbMultiPolygon:
        return geom
    if flat == ogr.wkbGeometryCollection:
        out = ogr.Geometry(ogr.wkbMultiPolygon)
        for i in range(geom.GetGeometryCount()):
            part = geom.GetGeometryRef(i)
            sub = _polygon_parts(part)
            if sub is None:
                continue
            if ogr.GT_Flatten(sub.GetGeometryType()) == ogr.wkbPolygon:
                out.AddGeometry(sub)
            else:
                for j in range(sub.GetGeometryCount()):
                    out.AddGeometry(sub.GetGeometryRef(j))
        return out if out.GetGeometryCount() else None
    return None


def _clip(geom: ogr.Geometry, clip: ogr.Geometry) -> ogr.Geometry | None:
    """``geom`` cut to ``clip``; ``None`` when nothing is left. Invalid OSM areas are repaired first."""
    try:
        out = geom.Intersection(clip)
    except RuntimeError:
        out = None
    if out is None:
        try:
            out = geom.MakeValid().Intersection(clip)
        except RuntimeError:
            return geom  # clipping only saves work; drawing the whole geometry is still right
    if out is None or out.IsEmpty():
        return None
    return out
