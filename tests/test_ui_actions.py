"""The plugin's other actions in offscreen QGIS: missing packages, diagnostics, export of a layer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime
from osgeo import gdal
from qgis.core import Qgis, QgsProject, QgsRasterLayer
from qgis.PyQt.QtWidgets import QFileDialog, QMessageBox
from ui_helpers import CLASS_COLORS, CLASS_NAMES, make_color_model

from satseg_plugin.ui import dependencies, segment_flow
from satseg_plugin.ui.dependencies import Requirement, check_requirements
from satseg_plugin.ui.diagnostics import diagnostics_report
from satseg_plugin.ui.export import export_active_layer
from satseg_plugin.ui.layers import add_result_layers


def _bar(iface):
    bar = iface.messageBar()
    for level in bar.messages:
        bar.messages[level].clear()
    return bar


def test_segment_extent_says_which_package_is_missing_and_offers_pip(qgis_iface, monkeypatch) -> None:
    missing = check_requirements([Requirement("satseg_no_such_module_xyz", "onnxruntime", "1.14")])
    monkeypatch.setattr(segment_flow, "check_requirements", lambda: missing)
    asked: list[str] = []

    def answer(parent, title, text, *args):
        asked.append(text)
        return QMessageBox.No  # the user declines: nothing is installed

    monkeypatch.setattr(QMessageBox, "question", answer)
    installs: list[object] = []
    monkeypatch.setattr(dependencies, "start_install", lambda *a: installs.append(a))
    assert segment_flow.SegmentController(qgis_iface).open_dialog() is None
    assert len(asked) == 1 and "'onnxruntime' is not installed" in asked[0]
    assert "Install onnxruntime>=1.14" in asked[0] and "satseg_deps" in asked[0]
    assert installs == []


def test_diagnostics_report_versions_providers_and_the_model(tmp_path: Path) -> None:
    model = make_color_model(tmp_path / "colors.onnx", zoom=20)
    text = diagnostics_report(str(model), Qgis.QGIS_VERSION)
    assert f"onnxruntime  {onnxruntime.__version__}" in text
    assert "CPUExecutionProvider" in text
    assert "greenery (#33a02c)" in text and "zoom: 20" in text
    broken = tmp_path / "broken.onnx"
    broken.write_text("nope")
    assert "cannot be used" in diagnostics_report(str(broken))


def test_export_action_writes_the_selected_class_layer(
    qgis_iface, qgis_new_project, tmp_path: Path, monkeypatch
) -> None:
    src = tmp_path / "run" / "classes.tif"
    src.parent.mkdir()
    data = (np.arange(32 * 32).reshape(32, 32) % 3).astype(np.uint8)
    ds = gdal.GetDriverByName("GTiff").Create(str(src), 32, 32, 1, gdal.GDT_Byte)
    ds.SetGeoTransform((3628351.0, 0.15, 0, 39097.5, 0, -0.15))
    ds.SetProjection("EPSG:3857")
    ds.GetRasterBand(1).WriteArray(data)
    ds = None
    group = add_result_layers(QgsProject.instance(), "run", CLASS_NAMES, CLASS_COLORS, classes_path=str(src))
    bar = _bar(qgis_iface)

    plain = QgsRasterLayer(str(src), "someone else's raster")
    QgsProject.instance().addMapLayer(plain)
    qgis_iface.setActiveLayer(plain)
    assert export_active_layer(qgis_iface) is None
    assert "select a satseg class raster" in bar.get_messages(Qgis.Warning)[0]

    target = tmp_path / "exported" / "kampala.tif"
    monkeypatch.setattr(QFileDialog, "getSaveFileName", lambda *a, **k: (str(target), "GeoTIFF"))
    qgis_iface.setActiveLayer(group.findLayers()[0].layer())
    assert export_active_layer(qgis_iface) == target
    assert np.array_equal(gdal.Open(str(target)).ReadAsArray(), data)
    assert any(str(target) in m for m in bar.get_messages(Qgis.Success))
