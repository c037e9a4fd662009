"""The inputs of "Train on this area" taken from QGIS: the extent, an OSM layer as GeoJSON, defaults."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from qgis.core import (
    QgsCoordinateReferenceSystem,
    QgsCoordinateTransform,
    QgsCoordinateTransformContext,
    QgsFeatureSource,
    QgsProject,
    QgsRectangle,
    QgsSettings,
    QgsVectorFileWriter,
    QgsVectorLayer,
)

from ..inference.errors import SatsegError

KEY_MINUTES = "satseg/learn_minutes"
KEY_OUT_DIR = "satseg/learn_out_dir"
KEY_CLASSES = "satseg/learn_classes"
DEFAULT_MINUTES = 15.0
DEFAULT_CLASSES = Path("training") / "classes" / "buildings.json"
#: Base checkpoints tried in this order under the checkout's ``models/``.
BASE_MODELS = ("satseg-buildings.pt", "satseg-landcover.pt")
OSM_FILE_FILTER = "OpenStreetMap data (*.osm.pbf *.pbf *.geojson *.json *.mbtiles);;All files (*)"


def polygons_extent(layer: QgsVectorLayer, selected_only: bool) -> QgsRectangle:
    """Return the bounding box (in the layer's CRS) of the selected polygons, or of all of them.

    Raises ``SatsegError`` when there is nothing to take the extent of.
    """
    if selected_only:
        if layer.selectedFeatureCount() == 0:
            raise SatsegError(f"no polygon of '{layer.name()}' is selected: select some, or use all of them")
        box = layer.boundingBoxOfSelected()
    else:
        layer.updateExtents()
        box = layer.extent()
    if box.isNull() or box.isEmpty():
        raise SatsegError(f"the polygons of '{layer.name()}' have an empty extent")
    return box


def crs_text(crs: QgsCoordinateReferenceSystem) -> str:
    """Return ``crs`` as the CLI's ``--bbox-crs`` takes it (``EPSG:n``, else WKT)."""
    from .segment_flow import crs_for_gdal

    return crs_for_gdal(crs)


def layer_to_geojson(
    source: QgsFeatureSource,
    folder: str | Path | None = None,
    context: QgsCoordinateTransformContext | None = None,
) -> Path:
    """Write the features of ``source`` (a vector layer, or a Processing source) to GeoJSON in EPSG:4326.

    OSM data is in EPSG:4326, which is what the dataset builder expects. The
    file goes into a new temporary folder (under ``folder`` when given) that the
    caller removes when the run is over. Reads through ``getFeatures`` only, so
    it may run in a Processing worker thread.
    """
    name = source.sourceName() if hasattr(source, "sourceName") else "the layer"
    if isinstance(source, QgsVectorLayer) and not source.isValid():
        raise SatsegError(f"the layer '{name}' cannot be read")
    if source.featureCount() == 0:
        raise SatsegError(f"the layer '{name}' has no features to learn from")
    wgs84 = QgsCoordinateReferenceSystem("EPSG:4326")
    context = context or QgsProject.instance().transformContext()
    transform = QgsCoordinateTransform(source.sourceCrs(), wgs84, context)
    out_dir = Path(tempfile.mkdtemp(prefix="satseg-osm-", dir=str(folder) if folder else None))
    path = out_dir / "osm.geojson"
    options = QgsVectorFileWriter.SaveVectorOptions()
    options.driverName = "GeoJSON"
    options.fileEncoding = "UTF-8"
    writer = QgsVectorFileWriter.create(str(path), source.fields(), source.wkbType(), wgs84, context, options)
    ok = False
    try:
        if writer.hasError() == QgsVectorFileWriter.NoError:
            for feature in source.getFeatures():
                if feature.hasGeometry():
                    geometry = feature.geometry()
                    geometry.transform(transform)
                    feature.setGeometry(geometry)
                writer.addFeature(feature)
        ok = writer.hasError() == QgsVectorFileWriter.NoError
        message = writer.errorMessage()
    finally:
        writer = None  # closes the file
        if not ok:
            shutil.rmtree(out_dir, ignore_errors=True)
    if not ok:
        raise SatsegError(f"could not write '{name}' as GeoJSON: {message}")
    return path


def default_classes(checkout: str) -> str:
    """Return the checkout's ``training/classes/buildings.json`` (the remembered config first), or ""."""
    remembered = str(QgsSettings().value(KEY_CLASSES, "") or "")
    if remembered and Path(remembered).is_file():
        return remembered
    return checkout_classes(checkout)


def checkout_classes(checkout: str) -> str:
    """Return the checkout's ``training/classes/buildings.json`` if it is there, else ""."""
    path = Path(checkout) / DEFAULT_CLASSES if checkout else None
    return str(path) if path is not None and path.is_file() else ""


def default_base(checkout: str) -> str:
    """Return the first base checkpoint of ``BASE_MODELS`` in the checkout's ``models/``, or "" (scratch)."""
    for name in BASE_MODELS:
        path = Path(checkout) / "models" / name if checkout else None
        if path is not None and path.is_file():
            return str(path)
    return ""


def default_out_dir() -> str:
    """Return where trained models go by default: ``<profile>/satseg/learn``."""
    from qgis.core import QgsApplication

    return str(Path(QgsApplication.qgisSettingsDirPath()) / "satseg" / "learn")


def remembered_minutes() -> float:
    try:
        return float(QgsSettings().value(KEY_MINUTES, DEFAULT_MINUTES))
    except (TypeError, ValueError):
        return DEFAULT_MINUTES


def remembered_out_dir() -> str:
    return str(QgsSettings().value(KEY_OUT_DIR, "") or "") or default_out_dir()


def remember(minutes: float, out_dir: str, classes: str) -> None:
    QgsSettings().setValue(KEY_MINUTES, float(minutes))
    QgsSettings().setValue(KEY_OUT_DIR, out_dir)
    QgsSettings().setValue(KEY_CLASSES, classes)
