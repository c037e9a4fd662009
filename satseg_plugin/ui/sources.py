"""Turn a QGIS raster layer into the imagery source the inference core reads."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote

from qgis.core import (
    QgsCoordinateReferenceSystem,
    QgsCoordinateTransform,
    QgsDataSourceUri,
    QgsMapLayer,
    QgsProject,
    QgsProviderRegistry,
    QgsRasterLayer,
    QgsRectangle,
)

from ..inference.errors import SatsegError, SourceError
from ..inference.tileurl import redact


@dataclass(frozen=True)
class ImagerySource:
    """Exactly one of ``tiles_url`` (an XYZ template) and ``raster_path`` (a GDAL raster)."""

    tiles_url: str | None = None
    raster_path: str | None = None

    @property
    def label(self) -> str:
        """The source for messages and logs, with any access token hidden (a WMS URL may carry one)."""
        return redacted(self.tiles_url) if self.tiles_url else redacted(self.raster_path or "")


def redacted(url: str) -> str:
    """Return ``url`` with its secrets replaced by ``***`` (``tileurl.redact``, the one redaction).

    >>> redacted("https://a/{z}/{x}/{y}.png?access_token=pk.123&fmt=png")
    'https://a/{z}/{x}/{y}.png?access_token=***&fmt=png'
    """
    return redact(url)


def xyz_url_from_source(source: str) -> str | None:
    """Return the URL template of an XYZ layer source, or None when it is not XYZ.

    QGIS stores an XYZ layer as ``type=xyz&url=https://a/%7Bz%7D/%7Bx%7D/%7By%7D.png&zmax=19``;
    ``QgsDataSourceUri`` undoes the percent-encoding of the template.
    """
    uri = QgsDataSourceUri()
    uri.setEncodedUri(source)
    if uri.param("type") != "xyz":
        return None
    url = uri.param("url")
    return url or None


def _with_query(url: str, params: dict[str, str]) -> str:
    query = "&".join(f"{k}={quote(v, safe=',:/')}" for k, v in params.items())
    return f"{url}{'&' if '?' in url else '?'}{query}"


def gdal_name_of_wms(source: str) -> str | None:
    """The GDAL dataset name of a QGIS WMS or WMTS layer source, or None for XYZ and others.

    WMTS (the source names a ``tileMatrixSet``): ``WMTS:<capabilities URL>,layer=..,tilematrixset=..``,
    GDAL's WMTS driver. WMS: ``WMS:<url>?SERVICE=WMS&VERSION=1.1.1&REQUEST=GetMap&LAYERS=..&SRS=..&BBOX=..``
    over the CRS's area of use, GDAL's WMS driver, which asks the server for what each read needs.
    """
    uri = QgsDataSourceUri()
    uri.setEncodedUri(source)
    url = uri.param("url")
    if uri.param("type") == "xyz" or not url:
        return None
    layers = [v for v in uri.params("layers") if v]
    styles = uri.params("styles")
    if not layers:
        return None
    matrix_set = uri.param("tileMatrixSet")
    if matrix_set:
        name = f"WMTS:{url},layer={layers[0]},tilematrixset={matrix_set}"
        return name + (f",style={styles[0]}" if styles and styles[0] else "")
    crs_id = uri.param("crs") or "EPSG:3857"
    crs = QgsCoordinateReferenceSystem(crs_id)
    if not crs.isValid():
        return None
    bounds = crs.bounds()  # the area of use, in WGS 84
    if crs.authid() == "EPSG:3857":
        bounds = QgsRectangle(-180, -85.0511287798066, 180, 85.0511287798066)
    to_crs = QgsCoordinateTransform(QgsCoordinateReferenceSystem("EPSG:4326"), crs, QgsProject.instance())
    box = to_crs.transformBoundingBox(bounds)
    params = {
        "SERVICE": "WMS",
        "VERSION": "1.1.1",  # x/y axis order in every CRS
        "REQUEST": "GetMap",
        "LAYERS": ",".join(layers),
        "STYLES": ",".join(styles[: len(layers)]) if any(styles) else "",
        "SRS": crs_id,
        "BBOX": f"{box.xMinimum()!r},{box.yMinimum()!r},{box.xMaximum()!r},{box.yMaximum()!r}",
        "FORMAT": uri.param("format") or "image/png",
    }
    return "WMS:" + _with_query(url, params)


def is_supported_layer(layer: QgsMapLayer | None) -> bool:
    """Return True for raster layers satseg can read: XYZ tiles, WMS/WMTS or GDAL rasters."""
    if not isinstance(layer, QgsRasterLayer):
        return False
    provider = layer.providerType()
    if provider == "wms":
        source = layer.source()
        return xyz_url_from_source(source) is not None or gdal_name_of_wms(source) is not None
    return provider == "gdal"


def source_of_layer(layer: QgsMapLayer) -> ImagerySource:
    """Return the imagery source behind ``layer``.

    Raises ``SourceError`` for a layer that is neither an XYZ tile layer nor a
    raster GDAL opens (a WMS or WCS service, a vector layer...).
    """
    if isinstance(layer, QgsRasterLayer):
        if layer.providerType() == "wms":
            url = xyz_url_from_source(layer.source())
            if url:
                return ImagerySource(tiles_url=url)
            name = gdal_name_of_wms(layer.source())
            if name:  # WMS and WMTS through GDAL's drivers
                return ImagerySource(raster_path=name)
        elif layer.providerType() == "gdal":
            parts = QgsProviderRegistry.instance().decodeUri("gdal", layer.source())
            path = parts.get("path") or layer.source()
            return ImagerySource(raster_path=path)
    raise SourceError(
        f"the layer '{layer.name()}' cannot be segmented: choose an XYZ tile layer, a WMS/WMTS layer or "
        "a raster file layer (GeoTIFF, VRT...), or type a tile URL"
    )


def source_of_url(url: str) -> ImagerySource:
    """Return the source for a typed URL template (or TileJSON URL); ``SourceError`` if empty."""
    text = url.strip()
    if not text:
        raise SourceError("no imagery source: choose a layer or type a tile URL")
    if "://" not in text:
        raise SourceError(
            f"'{redact(text)}' is not a URL; a tile URL looks like https://server/{{z}}/{{x}}/{{y}}.png"
        )
    return ImagerySource(tiles_url=text)


def parse_bands(text: str) -> tuple[int, ...] | None:
    """``"4, 1,2,3"`` -> ``(4, 1, 2, 3)``; empty -> None; ``SatsegError`` for anything else."""
    parts = [p for p in text.replace(" ", "").split(",") if p]
    if not parts:
        return None
    try:
        bands = tuple(int(p) for p in parts)
    except ValueError:
        raise SatsegError(f"bands are numbers separated by commas, such as 1,2,3,4, not '{text}'") from None
    if min(bands) < 1:
        raise SatsegError(f"bands are numbered from 1, not '{text}'")
    return bands
