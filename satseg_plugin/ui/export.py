"""Export a satseg raster layer (class raster or heatmap) as a GeoTIFF in one step."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from osgeo import gdal

from ..inference.atomic import atomic_path
from ..inference.errors import SatsegError

CREATION_OPTIONS = ["TILED=YES", "COMPRESS=DEFLATE", "BIGTIFF=IF_SAFER", "COPY_SRC_OVERVIEWS=YES"]


def export_geotiff(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> Path:
    """Copy raster ``src`` to GeoTIFF ``dst`` (tiled, DEFLATE), colour table and class names kept.

    The file appears complete or not at all. Raises ``SatsegError`` when ``src``
    does not open or ``dst`` cannot be written.
    """
    dst = Path(dst)
    if dst.suffix.lower() not in (".tif", ".tiff"):
        dst = dst.with_suffix(".tif")
    if Path(src).resolve() == dst.resolve():
        raise SatsegError(f"{dst} is the layer's own file; choose another path")
    gdal.UseExceptions()
    try:
        with atomic_path(dst) as tmp:
            out = gdal.Translate(str(tmp), str(src), format="GTiff", creationOptions=CREATION_OPTIONS)
            if out is None:
                raise SatsegError(f"could not write {dst}")
            out = None  # flush and close before the rename
            # GeoTIFF keeps class names in a .aux.xml sidecar: it moves first, the image last
            aux = Path(f"{tmp}.aux.xml")
            if aux.exists():
                os.replace(aux, f"{dst}.aux.xml")
    except RuntimeError as exc:  # GDAL's errors: unreadable source, read-only folder...
        raise SatsegError(f"could not export to {dst}: {exc}") from None
    except OSError as exc:
        raise SatsegError(f"could not export to {dst}: {exc.strerror or exc}") from None
    return dst


def export_active_layer(iface: Any) -> Path | None:
    """Ask where to save the selected satseg raster layer and export it; report in the message bar."""
    from qgis.core import Qgis, QgsRasterLayer
    from qgis.PyQt.QtWidgets import QFileDialog

    from .layers import satseg_kind

    bar = iface.messageBar()
    layer = iface.activeLayer()
    if not isinstance(layer, QgsRasterLayer) or satseg_kind(layer) not in ("classes", "heatmap"):
        bar.pushMessage(
            "satseg",
            "select a satseg class raster or heatmap in the Layers panel first",
            Qgis.Warning,
            10,
        )
        return None
    src = layer.source()
    path, _ = QFileDialog.getSaveFileName(
        iface.mainWindow(),
        f"Export {layer.name()} as GeoTIFF",
        str(Path.home() / f"{Path(src).stem}.tif"),
        "GeoTIFF (*.tif *.tiff)",
    )
    if not path:
        return None
    try:
        out = export_geotiff(src, path)
    except SatsegError as exc:
        bar.pushMessage("satseg", str(exc), Qgis.Warning, 10)
        return None
    bar.pushMessage("satseg", f"exported {layer.name()} to {out}", Qgis.Success, 10)
    return out
