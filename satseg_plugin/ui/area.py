"""The processing area of a run in QGIS: the visible extent, a raster layer's extent, or polygons.

Polygons (the selected ones of a vector layer, or all of them) are written to a
GeoPackage of their own in a temporary folder and handed to the inference core
as its mask file, with their bounding box as the extent.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from qgis.core import (
    QgsCoordinateReferenceSystem,
    QgsCoordinateTransformContext,
    QgsFeatureRequest,
    QgsMapLayer,
    QgsProject,
    QgsRasterLayer,
    QgsRectangle,
    QgsVectorFileWriter,
    QgsVectorLayer,
    QgsWkbTypes,
)

from ..inference.errors import SatsegError


@dataclass(frozen=True)
class ProcessingArea:
    """An extent in ``crs`` and, for polygons, the mask file that holds them (in ``folder``)."""

    extent: QgsRectangle
    crs: QgsCoordinateReferenceSystem
    mask_path: str | None = None
    folder: str | None = None  # temporary: removed when the run is over


def is_area_layer(layer: QgsMapLayer | None) -> bool:
    """Raster layers and polygon vector layers can be a processing area."""
    if isinstance(layer, QgsRasterLayer):
        return True
    return isinstance(layer, QgsVectorLayer) and layer.geometryType() == QgsWkbTypes.PolygonGeometry


def area_of_layer(layer: QgsMapLayer, selected_only: bool) -> ProcessingArea:
    """The whole extent of a raster layer, or the (selected, when any and asked for) polygons of a vector layer."""
    if isinstance(layer, QgsRasterLayer):
        return ProcessingArea(QgsRectangle(layer.extent()), layer.crs())
    if not is_area_layer(layer):
        raise SatsegError(f"the layer '{layer.name()}' has no polygons to segment")
    assert isinstance(layer, QgsVectorLayer)
    selected = selected_only and layer.selectedFeatureCount() > 0
    count = layer.selectedFeatureCount() if selected else layer.featureCount()
    if count == 0:
        raise SatsegError(f"the layer '{layer.name()}' has no polygons to segment")
    folder = tempfile.mkdtemp(prefix="satseg-area-")
    path = str(Path(folder) / "area.gpkg")
    options = QgsVectorFileWriter.SaveVectorOptions()
    options.driverName = "GPKG"
    options.layerName = "area"
    options.onlySelectedFeatures = selected
    context = (
        QgsProject.instance().transformContext() if QgsProject.instance() else QgsCoordinateTransformContext()
    )
    writer = (
        getattr(QgsVectorFileWriter, "writeAsVectorFormatV3", None)
        or QgsVectorFileWriter.writeAsVectorFormatV2
    )
    result = writer(layer, path, context, options)
    if result[0] != QgsVectorFileWriter.NoError:
        raise SatsegError(f"the polygons of '{layer.name()}' could not be written for the run: {result[1]}")
    extent = layer.boundingBoxOfSelected() if selected else _extent(layer)
    return ProcessingArea(extent, layer.crs(), path, folder)


def _extent(layer: QgsVectorLayer) -> QgsRectangle:
    box = QgsRectangle()
    box.setMinimal()
    for feature in layer.getFeatures(QgsFeatureRequest().setNoAttributes()):
        if feature.hasGeometry():
            box.combineExtentWith(feature.geometry().boundingBox())
    return box
