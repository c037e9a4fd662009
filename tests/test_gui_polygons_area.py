"""The real QGIS desktop: Segment extent with polygons, a minimum region and a processing area; screenshots."""

from __future__ import annotations

import site
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT
from qgis_gui import make_profile, run_qgis, xvfb
from tileserver import TileServer, oam_provider
from ui_helpers import CLASS_NAMES, make_color_model, tiles_rect_3857

pytestmark = pytest.mark.gui

RECT = tiles_rect_3857(619224.2, 523264.85, 619229.8, 523267.15, 20)  # the canvas: area2's imagery


def _area_wkt() -> str:
    """A six-sided field across the middle of the canvas (the processing area)."""
    x0, y0, x1, y1 = RECT
    w, h = x1 - x0, y1 - y0
    pts = [(0.12, 0.3), (0.35, 0.1), (0.7, 0.15), (0.88, 0.55), (0.6, 0.9), (0.2, 0.8)]
    ring = [(x0 + fx * w, y0 + fy * h) for fx, fy in pts]
    return "POLYGON ((" + ", ".join(f"{x} {y}" for x, y in [*ring, ring[0]]) + "))"


@pytest.fixture(scope="module")
def plugin_zip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, str(ROOT / "scripts" / "build_plugin.py"), "--out", str(out)], check=True)
    return next(out.glob("satseg_plugin-*.zip"))


def test_polygons_and_a_processing_area_in_the_real_qgis_window(
    plugin_zip: Path, shared_data: Path, tmp_path: Path, artifacts_dir: Path
) -> None:
    profiles = make_profile(tmp_path, plugin_zip)
    model = make_color_model(tmp_path / "models" / "colors.onnx")
    out_parent = tmp_path / "runs"
    shots = {
        "polygons": artifacts_dir / "gui_polygons.png",
        "masked": artifacts_dir / "gui_processing_area.png",
    }
    with TileServer(oam_provider(shared_data / "oam-osm-buildings" / "area2")) as server:
        source = "type=xyz&url=" + server.template.replace("{", "%7B").replace("}", "%7D") + "&zmax=21&zmin=0"
        body = f"""
        import time
        from qgis.core import (QgsCoordinateReferenceSystem, QgsFeature, QgsFillSymbol, QgsGeometry,
                               QgsProject, QgsRasterLayer, QgsRectangle, QgsSingleSymbolRenderer,
                               QgsVectorLayer, QgsSettings)
        from qgis.PyQt.QtWidgets import QApplication, QDialogButtonBox, QDockWidget

        def spin(seconds, until=lambda: False):
            end = time.monotonic() + seconds
            while time.monotonic() < end and not until():
                QApplication.processEvents()
                time.sleep(0.02)

        win = iface.mainWindow()
        win.move(0, 0)
        win.resize(1600, 1000)
        for dock in win.findChildren(QDockWidget):
            if dock.objectName() == "Browser":
                dock.hide()
        QgsSettings().setValue("qgis/dockAttributeTable", True)
        project = QgsProject.instance()
        project.setCrs(QgsCoordinateReferenceSystem("EPSG:3857"))
        imagery = QgsRasterLayer({source!r}, "Kampala imagery", "wms")
        project.addMapLayer(imagery)
        field = QgsVectorLayer("Polygon?crs=EPSG:3857", "field (processing area)", "memory")
        feature = QgsFeature()
        feature.setGeometry(QgsGeometry.fromWkt({_area_wkt()!r}))
        field.dataProvider().addFeatures([feature])
        field.updateExtents()
        field.setRenderer(QgsSingleSymbolRenderer(QgsFillSymbol.createSimple(
            {{"color": "0,0,0,0", "outline_color": "#ff2020", "outline_width": "0.9"}})))
        project.addMapLayer(field)
        canvas = iface.mapCanvas()
        canvas.setDestinationCrs(QgsCoordinateReferenceSystem("EPSG:3857"))
        spin(1)
        canvas.setExtent(QgsRectangle(*{RECT!r}))
        canvas.refresh()
        spin(10, lambda: not canvas.isDrawing())

        plugin = qgis.utils.plugins["satseg_plugin"]
        # The controller forgets a task once it ends (a short run may end within the waits
        # below), so the test keeps the tasks it starts.
        started = []
        start = plugin.controller.start
        plugin.controller.start = lambda *a, **k: started.append(start(*a, **k)) or started[-1]
        plugin.segment_action.trigger()
        spin(0.5)
        dialog = [w for w in QApplication.topLevelWidgets()
                  if w.objectName() == "satsegSegmentDialog" and w.isVisible()][0]
        dialog.model_widget.setFilePath({str(model)!r})
        dialog.layer_combo.setLayer(imagery)
        dialog.out_widget.setFilePath({str(out_parent)!r})
        dialog.vectors_check.setChecked(True)
        dialog.heatmaps_check.setChecked(False)
        dialog.min_area_spin.setValue(0.5)
        dialog.simplify_spin.setValue(0.05)
        dialog.area_combo.setLayer(field)
        result["area_items"] = [dialog.area_combo.itemText(i) for i in range(dialog.area_combo.count())]
        spin(0.3)
        dialog.buttons.button(QDialogButtonBox.Ok).click()
        spin(0.5)
        tasks = [t for t in started if t is not None]
        result["tasks"] = len(tasks)
        task = tasks[0]
        spin(180, lambda: task.ended)
        spin(0.5)
        result["task_error"] = task.error or task.bug
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
        canvas.refreshAllLayers()
        spin(2)
        spin(15, lambda: not canvas.isDrawing())
        spin(1)
        result["shot_polygons"] = win.screen().grabWindow(0).save({str(shots["polygons"])!r})
        # Shot 2: the masked class raster inside the field's outline, the polygons off.
        nodes["classes"].setItemVisibilityChecked(True)
        nodes["polygons"].setItemVisibilityChecked(False)
        iface.setActiveLayer(nodes["classes"].layer())
        canvas.refreshAllLayers()
        spin(2)
        spin(15, lambda: not canvas.isDrawing())
        spin(1)
        result["shot_masked"] = win.screen().grabWindow(0).save({str(shots["masked"])!r})
        """
        with xvfb() as display:
            result = run_qgis(
                body,
                profiles,
                display,
                tmp_path,
                timeout=360,
                extra_env={"PYTHONPATH": ":".join(site.getsitepackages())},
            )
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
