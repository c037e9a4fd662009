"""The real QGIS desktop: Segment extent with polygons, a minimum region and a processing area; screenshots."""

from __future__ import annotations

from pathlib import Path

import pytest
from qgis_gui import run_plugin
from tileserver import TileServer
from ui_helpers import CLASS_NAMES, tiles_rect_3857, xyz_source

pytestmark = pytest.mark.gui

RECT = tiles_rect_3857(619224.2, 523264.85, 619229.8, 523267.15, 20)  # the canvas: area2's imagery


def _area_wkt() -> str:
    """A six-sided field across the middle of the canvas (the processing area)."""
    x0, y0, x1, y1 = RECT
    w, h = x1 - x0, y1 - y0
    pts = [(0.12, 0.3), (0.35, 0.1), (0.7, 0.15), (0.88, 0.55), (0.6, 0.9), (0.2, 0.8)]
    ring = [(x0 + fx * w, y0 + fy * h) for fx, fy in pts]
    return "POLYGON ((" + ", ".join(f"{x} {y}" for x, y in [*ring, ring[0]]) + "))"


def test_polygons_and_a_processing_area_in_the_real_qgis_window(
    plugin_zip: Path, area2_server: TileServer, color_model: Path, tmp_path: Path, artifacts_dir: Path
) -> None:
    out_parent = tmp_path / "runs"
    shots = {
        "polygons": artifacts_dir / "gui_polygons.png",
        "masked": artifacts_dir / "gui_processing_area.png",
    }
    body = f"""
    from qgis.core import (QgsFeature, QgsFillSymbol, QgsGeometry, QgsRasterLayer, QgsSingleSymbolRenderer,
                           QgsVectorLayer)

    win, project = prepare_window()
    imagery = QgsRasterLayer({xyz_source(area2_server.template)!r}, "Kampala imagery", "wms")
    project.addMapLayer(imagery)
    field = QgsVectorLayer("Polygon?crs=EPSG:3857", "field (processing area)", "memory")
    feature = QgsFeature()
    feature.setGeometry(QgsGeometry.fromWkt({_area_wkt()!r}))
    field.dataProvider().addFeatures([feature])
    field.updateExtents()
    field.setRenderer(QgsSingleSymbolRenderer(QgsFillSymbol.createSimple(
        {{"color": "0,0,0,0", "outline_color": "#ff2020", "outline_width": "0.9"}})))
    project.addMapLayer(field)
    show_extent({RECT!r})

    dialog, started = open_segment_dialog({str(color_model)!r}, imagery, {str(out_parent)!r})
    dialog.vectors_check.setChecked(True)
    dialog.heatmaps_check.setChecked(False)
    dialog.min_area_spin.setValue(0.5)
    dialog.simplify_spin.setValue(0.05)
    dialog.area_combo.setLayer(field)
    result["area_items"] = [dialog.area_combo.itemText(i) for i in range(dialog.area_combo.count())]
    task = run_dialog(dialog, started, 180)
    group = task.group
    result["children"] = [n.name() for n in group.children()] if group else []
    nodes = {{n.name(): n for n in group.findLayers()}} if group else {{}}
    polygons = nodes["polygons"].layer()
    result["polygon_legend"] = [c.label() for c in polygons.renderer().categories()]
    result["polygons"] = polygons.featureCount()
    areas = {{}}
    for f in polygons.getFeatures():
        areas[f["class"]] = areas.get(f["class"], 0.0) + f["area_m2"]
    result["polygon_areas"] = areas
    table = nodes["pixel counts"].layer()
    result["table_areas"] = {{f["class"]: float(f["area_m2"]) for f in table.getFeatures()}}
    result["small_polygons"] = sum(f["area_m2"] < 0.5 * 0.99 for f in polygons.getFeatures())
    # Shot 1: the polygons over the imagery, the class raster switched off.
    nodes["classes"].setItemVisibilityChecked(False)
    iface.setActiveLayer(polygons)
    redraw()
    result["shot_polygons"] = screenshot({str(shots["polygons"])!r}, settle=1)
    # Shot 2: the masked class raster inside the field's outline, the polygons off.
    nodes["classes"].setItemVisibilityChecked(True)
    nodes["polygons"].setItemVisibilityChecked(False)
    iface.setActiveLayer(nodes["classes"].layer())
    redraw()
    result["shot_masked"] = screenshot({str(shots["masked"])!r}, settle=1)
    """
    result = run_plugin(body, plugin_zip, tmp_path, timeout=360)
    assert "error" not in result, result["error"]
    assert "field (processing area)" in result["area_items"]
    assert result["tasks"] == 1 and result["task_error"] is None
    assert result["children"] == ["polygons", "classes", "pixel counts"]
    assert result["polygon_legend"] == CLASS_NAMES
    # Under the minimum only a region with nothing but nodata around it (a pixel cut off by the
    # imagery's transparent pixels): the sieve has no neighbour to merge it into.
    assert result["polygons"] > 0 and result["small_polygons"] <= max(1, result["polygons"] // 50)
    for name, area in result["polygon_areas"].items():
        assert area == pytest.approx(result["table_areas"][name], rel=5e-3)
    for shot in shots.values():
        assert shot.stat().st_size > 50_000
    run_dir = next(out_parent.iterdir())
    assert {p.name for p in run_dir.iterdir()} >= {"classes.tif", "classes.gpkg", "pixel_counts.csv"}
