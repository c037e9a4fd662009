"""Add a segmentation run's files to the project as one styled layer group."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from qgis.core import (
    QgsCategorizedSymbolRenderer,
    QgsColorRampShader,
    QgsFillSymbol,
    QgsLayerTreeGroup,
    QgsMapLayer,
    QgsPalettedRasterRenderer,
    QgsProject,
    QgsRasterLayer,
    QgsRasterShader,
    QgsRendererCategory,
    QgsSingleBandPseudoColorRenderer,
    QgsStyle,
    QgsVectorLayer,
)
from qgis.PyQt.QtCore import QUrl
from qgis.PyQt.QtGui import QColor

from ..inference.errors import SatsegError

#: Custom layer property telling satseg layers apart: "classes", "polygons", "heatmap" or "counts".
KIND_PROPERTY = "satseg/kind"
CLASS_LAYER_OPACITY = 0.6  # the imagery stays readable under the classes
HEATMAP_RAMP = "Viridis"


def satseg_kind(layer: QgsMapLayer | None) -> str | None:
    """Return "classes", "polygons", "heatmap" or "counts" for a layer satseg added, else None."""
    if layer is None:
        return None
    return layer.customProperty(KIND_PROPERTY) or None


def class_layer(path: str, class_names: Sequence[str], class_colors: Sequence[str]) -> QgsRasterLayer:
    """Return the class raster with a paletted renderer whose legend names each class."""
    layer = QgsRasterLayer(path, "classes", "gdal")
    style_class_layer(layer, class_names, class_colors)
    return layer


def style_class_layer(layer: QgsRasterLayer, class_names: Sequence[str], class_colors: Sequence[str]) -> None:
    """Give a class raster its paletted renderer (one legend entry per class) and mark it as satseg's."""
    if layer.isValid():
        classes = []
        for i, (name, color) in enumerate(zip(class_names, class_colors, strict=True)):
            qcolor = QColor(color)
            if i == 0 and name.lower() == "background":
                qcolor.setAlpha(0)  # the imagery shows through where nothing was found
            classes.append(QgsPalettedRasterRenderer.Class(i, qcolor, name))
        layer.setRenderer(QgsPalettedRasterRenderer(layer.dataProvider(), 1, classes))
        layer.setOpacity(CLASS_LAYER_OPACITY)
    layer.setCustomProperty(KIND_PROPERTY, "classes")


def polygon_layer(path: str, class_names: Sequence[str], class_colors: Sequence[str]) -> QgsVectorLayer:
    """Return the polygons of ``classes.gpkg`` categorized by ``class_id``, one legend entry per class."""
    layer = QgsVectorLayer(f"{path}|layername=classes", "polygons", "ogr")
    style_polygon_layer(layer, class_names, class_colors)
    return layer


def style_polygon_layer(
    layer: QgsVectorLayer, class_names: Sequence[str], class_colors: Sequence[str]
) -> None:
    """Colour a polygon layer by class like the class raster; background is listed but not drawn."""
    if layer.isValid():
        categories = []
        for i, (name, color) in enumerate(zip(class_names, class_colors, strict=True)):
            outline = QColor(color).darker(160).name()
            symbol = QgsFillSymbol.createSimple(
                {
                    "color": color,
                    "outline_color": outline,
                    "outline_width": "0.26",
                    "outline_width_unit": "MM",
                }
            )
            drawn = not (i == 0 and name.lower() == "background")
            categories.append(QgsRendererCategory(i, symbol, name, drawn))
        layer.setRenderer(QgsCategorizedSymbolRenderer("class_id", categories))
        layer.setOpacity(CLASS_LAYER_OPACITY)
    layer.setCustomProperty(KIND_PROPERTY, "polygons")


def heatmap_layer(path: str, class_name: str) -> QgsRasterLayer:
    """Return a class's probability raster drawn with a pseudocolour ramp over 0..1."""
    layer = QgsRasterLayer(path, f"p({class_name})", "gdal")
    if layer.isValid():
        ramp_shader = QgsColorRampShader(0.0, 1.0)
        ramp_shader.setColorRampType(QgsColorRampShader.Interpolated)
        ramp = QgsStyle.defaultStyle().colorRamp(HEATMAP_RAMP)
        if ramp is not None:
            ramp_shader.setSourceColorRamp(ramp)
            ramp_shader.classifyColorRamp(5, -1)
        else:  # a stripped-down style database: a plain dark-to-bright ramp
            ramp_shader.setColorRampItemList(
                [
                    QgsColorRampShader.ColorRampItem(0.0, QColor("#440154"), "0"),
                    QgsColorRampShader.ColorRampItem(1.0, QColor("#fde725"), "1"),
                ]
            )
        shader = QgsRasterShader(0.0, 1.0)
        shader.setRasterShaderFunction(ramp_shader)
        renderer = QgsSingleBandPseudoColorRenderer(layer.dataProvider(), 1, shader)
        renderer.setClassificationMin(0.0)
        renderer.setClassificationMax(1.0)
        layer.setRenderer(renderer)
    layer.setCustomProperty(KIND_PROPERTY, "heatmap")
    return layer


def counts_layer(csv_path: str) -> QgsVectorLayer:
    """Return the pixel-count CSV as a table layer (delimited text, no geometry)."""
    uri = QUrl.fromLocalFile(csv_path).toString() + "?type=csv&detectTypes=yes&geomType=none"
    layer = QgsVectorLayer(uri, "pixel counts", "delimitedtext")
    layer.setCustomProperty(KIND_PROPERTY, "counts")
    return layer


def add_result_layers(
    project: QgsProject,
    group_name: str,
    class_names: Sequence[str],
    class_colors: Sequence[str],
    classes_path: str | None = None,
    heatmap_paths: Mapping[str, str] | None = None,
    counts_csv: str | None = None,
    vectors_path: str | None = None,
) -> QgsLayerTreeGroup:
    """Add the run's layers to a new group on top of the layer tree; return the group.

    Every layer is opened before any is added, so a file that does not open
    raises ``SatsegError`` and leaves the project untouched. The heatmaps are
    added unchecked: the class raster is what the user looks at first.
    """
    layers: list[tuple[QgsMapLayer, bool]] = []
    if vectors_path:
        layers.append((polygon_layer(vectors_path, class_names, class_colors), True))
    if classes_path:
        layers.append((class_layer(classes_path, class_names, class_colors), True))
    for name, path in (heatmap_paths or {}).items():
        layers.append((heatmap_layer(path, name), False))
    if counts_csv:
        layers.append((counts_layer(counts_csv), True))
    bad = [
        Path(layer.source().split("?")[0].split("|")[0]).name for layer, _ in layers if not layer.isValid()
    ]
    if bad:
        raise SatsegError(f"QGIS could not open the result file(s): {', '.join(bad)}")
    group = project.layerTreeRoot().insertGroup(0, group_name)
    for layer, visible in layers:
        project.addMapLayer(layer, False)
        node = group.addLayer(layer)
        node.setItemVisibilityChecked(visible)
        if satseg_kind(layer) == "heatmap":
            node.setExpanded(False)
    return group
