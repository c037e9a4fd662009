"""The real QGIS desktop: Train on this area end to end, then Segment extent with the new model.

The real CLI (``training.learn_area`` of this checkout, in the test venv's
Python) trains for 0.2 minutes from scratch on OpenAerialMap area1 served on
127.0.0.1, with its OSM buildings added to the project as a vector layer (the
plugin writes it out as GeoJSON). Screenshots: artifacts/gui_learn_area*.png.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import ROOT
from qgis_gui import run_plugin
from tileserver import TileServer, oam_provider
from ui_helpers import tiles_rect_3857, xyz_source

pytestmark = [
    pytest.mark.gui,
    pytest.mark.slow,
    pytest.mark.skipif(
        not (ROOT / "training" / "learn_area.py").is_file(),
        reason="training/learn_area.py is not in this checkout",
    ),
]

# about 5 x 3 zoom-19 tiles inside area1's 8 x 4 block (x 319292..319299, y 270960..270963)
RECT = tiles_rect_3857(319293.2, 270960.4, 319298.2, 270963.6, 19)
VENV_PYTHON = ROOT / ".venv" / "bin" / "python"


def test_train_on_this_area_then_segment_with_it(
    plugin_zip: Path, shared_data: Path, tmp_path: Path, artifacts_dir: Path
) -> None:
    area1 = shared_data / "oam-osm-buildings" / "area1"
    learn_parent = tmp_path / "learn"
    segment_parent = tmp_path / "segment"
    shots = {
        name: artifacts_dir / f"gui_learn_area{suffix}.png"
        for name, suffix in (
            ("dialog", "_dialog"),
            ("running", "_running"),
            ("done", ""),
            ("segmented", "_segmented"),
        )
    }
    with TileServer(oam_provider(area1)) as server:
        body = f"""
        import os
        from qgis.core import QgsRasterLayer, QgsVectorLayer

        win, project = prepare_window()
        imagery = QgsRasterLayer({xyz_source(server.template)!r}, "Zanzibar imagery", "wms")
        buildings = QgsVectorLayer({str(area1 / "labels.geojson")!r}, "OSM buildings", "ogr")
        result["inputs_valid"] = [imagery.isValid(), buildings.isValid()]
        project.addMapLayers([imagery, buildings])
        show_extent({RECT!r})

        from qgis.core import Qgis, QgsApplication
        logged = result["satseg_log"] = []
        QgsApplication.messageLog().messageReceived.connect(
            lambda text, tag, level: tag == "satseg" and level == Qgis.Critical and logged.append(text)
        )
        plugin = qgis.utils.plugins["satseg_plugin"]
        result["toolbar"] = [a.text() for a in plugin.toolbar.actions()]
        started = keep_started(plugin.learn_controller)
        segmented = keep_started(plugin.controller)
        plugin.learn_action.trigger()
        spin(0.5)
        dialog = visible("satsegLearnDialog")
        dialog.move(820, 120)
        result["default_checkout"] = dialog.checkout_widget.filePath()  # the zip holds no training/
        dialog.checkout_widget.setFilePath({str(ROOT)!r})  # fills the Python and the class config
        result["python"] = dialog.python_widget.filePath()
        result["classes"] = dialog.classes_widget.filePath()
        result["base"] = dialog.base_widget.filePath()
        dialog.layer_combo.setLayer(imagery)
        dialog.osm_layer_radio.setChecked(True)
        dialog.osm_layer.setLayer(buildings)
        dialog.minutes_spin.setValue(0.2)
        dialog.out_widget.setFilePath({str(learn_parent)!r})
        result["shot_dialog"] = screenshot({str(shots["dialog"])!r})
        click_ok(dialog)
        spin(1)
        result["tasks"] = len(started)
        task = started[0]
        spin(240, lambda: task.ended or any(s.phase == "train" and s.epoch for s in task.steps))
        result["description_while_training"] = [s.describe() for s in task.steps if s.phase == "train"][-1:]
        result["shot_running"] = screenshot({str(shots["running"])!r})
        wait_ended(task, 300, settle=1)
        result["outcome"] = task.outcome
        result["task_error"] = task.error or task.bug
        result["phases"] = sorted({{s.phase for s in task.steps}})
        result["model"] = task.result.model if task.result else None
        result["report"] = task.result.report if task.result else None
        report = task.report_dialog
        if report is not None:
            report.move(820, 420)
            table = report.table
            result["report_header"] = [table.horizontalHeaderItem(c).text() for c in range(table.columnCount())]
            result["report_classes"] = [table.item(r, 0).text() for r in range(table.rowCount())]
        from satseg_plugin.ui import settings
        result["known_models"] = settings.known_models()
        result["layers_after_training"] = sorted(lyr.name() for lyr in project.mapLayers().values())
        spin(10, lambda: task.segment_button is not None)  # the message with the button comes last
        result["bar_button_visible"] = task.segment_button is not None and task.segment_button.isVisible()
        result["shot_done"] = screenshot({str(shots["done"])!r})
        if report is not None:
            report.close()

        spin(10, lambda: task.segment_button is not None)
        if task.segment_button is None:
            raise RuntimeError(f"training did not finish: {{task.outcome}}: {{task.error or task.bug}}; "
                               f"args {{task.request.args()}}")
        task.segment_button.click()
        spin(0.5)
        segment = visible("satsegSegmentDialog")
        result["segment_model"] = segment.model_widget.filePath()
        result["segment_layer"] = segment.layer_combo.currentLayer().name() if segment.layer_combo.currentLayer() else None
        segment.out_widget.setFilePath({str(segment_parent)!r})
        click_ok(segment)
        spin(0.5)
        seg_task = segmented[0]
        wait_ended(seg_task, 180)
        result["segment_error"] = seg_task.error or seg_task.bug
        group = seg_task.group
        result["segment_children"] = [n.name() for n in group.children()] if group else []
        redraw()
        result["shot_segmented"] = screenshot({str(shots["segmented"])!r})
        result["torch_in_qgis"] = "torch" in sys.modules
        result["training_in_qgis"] = any(m == "training" or m.startswith("training.") for m in sys.modules)
        """
        # QGIS's Python is the system one: onnxruntime comes from the test venv (torch is on that
        # path too, which is what makes "QGIS never imports torch" a real check)
        result = run_plugin(body, plugin_zip, tmp_path, timeout=900)
    assert "error" not in result, result["error"]
    assert result["inputs_valid"] == [True, True]
    assert "Train on this area…" in result["toolbar"]
    assert result["default_checkout"] == ""
    assert result["python"] == str(VENV_PYTHON)
    assert result["classes"] == str(ROOT / "training" / "classes" / "buildings.json")
    assert result["tasks"] == 1
    assert (result["outcome"], result["task_error"]) == ("done", None)
    assert result["phases"] == sorted(["dataset", "train", "export", "score", "done"])
    assert "epoch" in result["description_while_training"][0], result["description_while_training"]
    model = Path(result["model"])
    assert model.is_file() and model.parent.parent == learn_parent
    assert str(model.resolve()) in result["known_models"]
    assert result["report_header"][0] == "class" and "building" in result["report_classes"]
    assert result["layers_after_training"] == ["OSM buildings", "Zanzibar imagery"]
    assert result["bar_button_visible"]
    assert result["segment_model"] == str(model) and result["segment_layer"] == "Zanzibar imagery"
    assert result["segment_error"] is None
    assert result["segment_children"][0] == "classes" and "p(building)" in result["segment_children"]
    assert result["torch_in_qgis"] is False and result["training_in_qgis"] is False
    for path in shots.values():
        assert path.stat().st_size > 50_000
