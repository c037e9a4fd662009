"""The real QGIS desktop: click "Segment extent", fill the dialog, run, find the layers, screenshot."""

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

# 5.6 x 2.3 zoom-20 tiles inside area2's 6 x 4 block: the whole canvas shows imagery
RECT = tiles_rect_3857(619224.2, 523264.85, 619229.8, 523267.15, 20)


@pytest.fixture(scope="module")
def plugin_zip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "build_plugin.py"), "--out", str(out)],
        check=True,
    )
    return next(out.glob("satseg_plugin-*.zip"))


def test_segment_extent_in_the_real_qgis_window(
    plugin_zip: Path, shared_data: Path, tmp_path: Path, artifacts_dir: Path
) -> None:
    profiles = make_profile(tmp_path, plugin_zip)
    model = make_color_model(tmp_path / "models" / "colors.onnx")
    out_parent = tmp_path / "runs"
    shots = {
        "layers": artifacts_dir / "gui_segment_extent.png",
        "table": artifacts_dir / "gui_segment_extent_table.png",
    }
    with TileServer(oam_provider(shared_data / "oam-osm-buildings" / "area2")) as server:
        source = "type=xyz&url=" + server.template.replace("{", "%7B").replace("}", "%7D") + "&zmax=21&zmin=0"
        body = f"""
        import time
        from qgis.core import (QgsApplication, QgsCoordinateReferenceSystem, QgsProject, QgsRasterLayer,
                               QgsRectangle)
        from qgis.PyQt.QtWidgets import QApplication, QDialogButtonBox

        def spin(seconds, until=lambda: False):
            end = time.monotonic() + seconds
            while time.monotonic() < end and not until():
                QApplication.processEvents()
                time.sleep(0.02)

        from qgis.core import QgsSettings
        from qgis.PyQt.QtWidgets import QDockWidget

        win = iface.mainWindow()
        win.move(0, 0)  # Xvfb has no window manager to maximise it
        win.resize(1600, 1000)
        for dock in win.findChildren(QDockWidget):
            if dock.objectName() == "Browser":
                dock.hide()  # the Layers panel gets the height for the legend
        QgsSettings().setValue("qgis/dockAttributeTable", True)  # docked: no window manager needed
        project = QgsProject.instance()
        project.setCrs(QgsCoordinateReferenceSystem("EPSG:3857"))
        imagery = QgsRasterLayer({source!r}, "Kampala imagery", "wms")
        result["xyz_valid"] = imagery.isValid()
        project.addMapLayer(imagery)
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
        result["model_info"] = dialog.model_info.text()
        result["zoom_text"] = dialog.zoom_spin.specialValueText()
        spin(0.3)
        dialog.buttons.button(QDialogButtonBox.Ok).click()
        spin(0.5)
        tasks = [t for t in started if t is not None]
        result["tasks"] = len(tasks)
        task = tasks[0]
        spin(120, lambda: task.ended)
        spin(0.5)
        result["task_error"] = task.error or task.bug
        group = task.group
        result["group"] = group.name() if group else None
        result["children"] = [n.name() for n in group.children()] if group else []
        layers = {{n.name(): n.layer() for n in group.findLayers()}} if group else {{}}
        classes = layers.get("classes")
        result["class_legend"] = [label for label, _ in classes.renderer().legendSymbologyItems()] if classes else []
        result["table_features"] = layers["pixel counts"].featureCount() if "pixel counts" in layers else 0
        if classes:
            iface.setActiveLayer(classes)
        canvas.refreshAllLayers()
        spin(2)
        spin(15, lambda: not canvas.isDrawing())
        spin(1)
        result["shot_layers"] = win.screen().grabWindow(0).save({str(shots["layers"])!r})
        table = iface.showAttributeTable(layers["pixel counts"]) if "pixel counts" in layers else None
        spin(2)
        result["shot_table"] = win.screen().grabWindow(0).save({str(shots["table"])!r})
        """
        with xvfb() as display:
            result = run_qgis(
                body,
                profiles,
                display,
                tmp_path,
                timeout=300,
                # QGIS's Python is the system one: onnxruntime and mercantile come from the test venv
                extra_env={"PYTHONPATH": ":".join(site.getsitepackages())},
            )
    assert "error" not in result, result["error"]
    assert result["xyz_valid"]
    assert "greenery" in result["model_info"] and result["zoom_text"] == "the model's (20)"
    assert result["tasks"] == 1
    assert result["task_error"] is None
    assert result["group"] and result["group"].startswith("colors ")
    assert result["children"] == ["classes", *(f"p({n})" for n in CLASS_NAMES), "pixel counts"]
    assert result["class_legend"] == CLASS_NAMES
    assert result["table_features"] == len(CLASS_NAMES)
    for shot in shots.values():
        assert shot.stat().st_size > 50_000
    run_dirs = [p for p in out_parent.iterdir()]
    assert len(run_dirs) == 1 and (run_dirs[0] / "classes.tif").is_file()


def test_without_onnxruntime_qgis_says_so_and_offers_pip(plugin_zip: Path, tmp_path: Path) -> None:
    """QGIS's own Python (no test venv on its path) may lack onnxruntime: the click must explain it."""
    profiles = make_profile(tmp_path, plugin_zip)
    body = """
    from qgis.PyQt.QtCore import QTimer
    from qgis.PyQt.QtWidgets import QApplication, QMessageBox
    from satseg_plugin.ui.dependencies import check_requirements

    result["missing"] = [p.requirement.package for p in check_requirements()]
    seen = result["boxes"] = []

    def answer_no():
        for w in QApplication.topLevelWidgets():
            if isinstance(w, QMessageBox) and w.isVisible():
                seen.append(w.text())
                w.button(QMessageBox.No).click()

    QTimer.singleShot(1500, answer_no)
    qgis.utils.plugins["satseg_plugin"].segment_action.trigger()  # modal question until answered
    result["dialogs"] = [w.objectName() for w in QApplication.topLevelWidgets()
                         if w.objectName() == "satsegSegmentDialog" and w.isVisible()]
    """
    with xvfb() as display:
        result = run_qgis(body, profiles, display, tmp_path)
    assert "error" not in result, result["error"]
    if not result["missing"]:
        pytest.skip("this QGIS's Python has every package satseg needs")
    assert len(result["boxes"]) == 1 and result["dialogs"] == []
    for package in result["missing"]:
        assert f"'{package}' is not installed" in result["boxes"][0]
    assert "satseg_deps" in result["boxes"][0]
