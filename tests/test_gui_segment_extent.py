"""The real QGIS desktop: click "Segment extent", fill the dialog, run, find the layers, screenshot."""

from __future__ import annotations

from pathlib import Path

import pytest
from qgis_gui import run_plugin
from tileserver import TileServer
from ui_helpers import CLASS_NAMES, tiles_rect_3857, xyz_source

pytestmark = pytest.mark.gui

# 5.6 x 2.3 zoom-20 tiles inside area2's 6 x 4 block: the whole canvas shows imagery
RECT = tiles_rect_3857(619224.2, 523264.85, 619229.8, 523267.15, 20)


def test_segment_extent_in_the_real_qgis_window(
    plugin_zip: Path, area2_server: TileServer, color_model: Path, tmp_path: Path, artifacts_dir: Path
) -> None:
    out_parent = tmp_path / "runs"
    shots = {
        "layers": artifacts_dir / "gui_segment_extent.png",
        "table": artifacts_dir / "gui_segment_extent_table.png",
    }
    body = f"""
    from qgis.core import QgsRasterLayer

    win, project = prepare_window()
    imagery = QgsRasterLayer({xyz_source(area2_server.template)!r}, "Kampala imagery", "wms")
    result["xyz_valid"] = imagery.isValid()
    project.addMapLayer(imagery)
    show_extent({RECT!r})

    dialog, started = open_segment_dialog({str(color_model)!r}, imagery, {str(out_parent)!r})
    result["model_info"] = dialog.model_info.text()
    result["zoom_text"] = dialog.zoom_spin.specialValueText()
    task = run_dialog(dialog, started, 120)
    group = task.group
    result["group"] = group.name() if group else None
    result["children"] = [n.name() for n in group.children()] if group else []
    layers = {{n.name(): n.layer() for n in group.findLayers()}} if group else {{}}
    classes = layers.get("classes")
    result["class_legend"] = [label for label, _ in classes.renderer().legendSymbologyItems()] if classes else []
    result["table_features"] = layers["pixel counts"].featureCount() if "pixel counts" in layers else 0
    if classes:
        iface.setActiveLayer(classes)
    redraw()
    result["shot_layers"] = screenshot({str(shots["layers"])!r}, settle=1)
    table = iface.showAttributeTable(layers["pixel counts"]) if "pixel counts" in layers else None
    result["shot_table"] = screenshot({str(shots["table"])!r}, settle=2)
    """
    # QGIS's Python is the system one: onnxruntime and mercantile come from the test venv
    result = run_plugin(body, plugin_zip, tmp_path, timeout=300)
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
    result = run_plugin(body, plugin_zip, tmp_path, venv_packages=False)
    assert "error" not in result, result["error"]
    if not result["missing"]:
        pytest.skip("this QGIS's Python has every package satseg needs")
    assert len(result["boxes"]) == 1 and result["dialogs"] == []
    for package in result["missing"]:
        assert f"'{package}' is not installed" in result["boxes"][0]
    assert "satseg_deps" in result["boxes"][0]
