"""Turn a QGIS raster layer into the imagery source the inference core reads."""

from __future__ import annotations

from dataclasses import dataclass

from qgis.core import QgsDataSourceUri, QgsMapLayer, QgsProviderRegistry, QgsRasterLayer

from ..inference.errors import SatsegError, SourceError
from ..inference.tileurl import redact


@dataclass(frozen=True)
class ImagerySource:
    """Exactly one of ``tiles_url`` (an XYZ template) and ``raster_path`` (a GDAL raster)."""

    tiles_url: str | None = None
    raster_path: str | None = None

    @property
    def label(self) -> str:
        """The source for messages and logs, with any access token hidden."""
        return redacted(self.tiles_url) if self.tiles_url else (self.raster_path or "")


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


def is_supported_layer(layer: QgsMapLayer | None) -> bool:
    """Return True for raster layers satseg can read: XYZ tiles or GDAL rasters."""
    if not isinstance(layer, QgsRasterLayer):
        return False
    provider = layer.providerType()
    if provider == "wms":
        return xyz_url_from_source(layer.source()) is not None
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
        elif layer.providerType() == "gdal":
            parts = QgsProviderRegistry.instance().decodeUri("gdal", layer.source())
            path = parts.get("path") or layer.source()
            return ImagerySource(raster_path=path)
    raise SourceError(
        f"the layer '{layer.name()}' cannot be segmented: choose an XYZ tile layer or a raster file "
        "layer (GeoTIFF, VRT...), or type a tile URL"
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
