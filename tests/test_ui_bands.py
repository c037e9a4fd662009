"""Band layout in offscreen QGIS: the dialog's bands, a task over a 4-band raster layer, Processing's BANDS."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from inference_helpers import write_utm_raster
from qgis.core import QgsProject, QgsRasterLayer
from test_bands import expected4, make_4band_model, rgbn
from ui_helpers import wait_for_task

from satseg_plugin.inference.errors import SatsegError
from satseg_plugin.ui.processing_provider import register_provider
from satseg_plugin.ui.segment_dialog import SegmentChoices, SegmentDialog
from satseg_plugin.ui.segment_flow import SegmentController
from satseg_plugin.ui.sources import ImagerySource, parse_bands

XYZ = "type=xyz&url=http://127.0.0.1:9/%7Bz%7D/%7Bx%7D/%7By%7D.png&zmax=21&zmin=0"


def classes(path: Path) -> np.ndarray:
    from osgeo import gdal

    ds = gdal.Open(str(path))
    out = ds.GetRasterBand(1).ReadAsArray()
    ds = None
    return out


def test_parse_bands() -> None:
    assert parse_bands(" 4, 1,2,3 ") == (4, 1, 2, 3) and parse_bands("") is None
    with pytest.raises(SatsegError, match="numbers separated by commas"):
        parse_bands("red,nir")
    with pytest.raises(SatsegError, match="numbered from 1"):
        parse_bands("0,1")


def test_dialog_bands_for_raster_layers_only(qgis_new_project, tmp_path: Path) -> None:
    raster = QgsRasterLayer(str(write_utm_raster(tmp_path / "rgbn.tif", rgbn())), "rgbn")
    xyz = QgsRasterLayer(XYZ, "tiles", "wms")
    QgsProject.instance().addMapLayers([raster, xyz])
    model = make_4band_model(tmp_path / "m4.onnx")
    dialog = SegmentDialog(QgsProject.instance(), "extent", model_path=str(model))
    assert "4 input bands" in dialog.model_info.text()
    dialog.layer_combo.setLayer(raster)
    assert dialog.bands_edit.isEnabled()
    dialog.bands_edit.setText("4,1,2,3")
    assert dialog.choices().bands == (4, 1, 2, 3)
    dialog.bands_edit.setText("nir")
    with pytest.raises(SatsegError):
        dialog.choices()
    dialog.layer_combo.setLayer(xyz)
    assert not dialog.bands_edit.isEnabled() and dialog.choices().bands is None


def test_task_over_a_4_band_raster_layer(qgis_iface, qgis_new_project, tmp_path: Path) -> None:
    data = rgbn()
    path = write_utm_raster(tmp_path / "rgbn.tif", data)
    layer = QgsRasterLayer(str(path), "rgbn")
    QgsProject.instance().addMapLayer(layer)
    model = make_4band_model(tmp_path / "m4.onnx")
    chosen = SegmentChoices(
        str(model), ImagerySource(raster_path=str(path)), None, str(tmp_path / "runs"), True, False, True,
        area_layer_id=layer.id(), bands=(4, 1, 2, 3),
    )  # fmt: skip
    task = SegmentController(qgis_iface).start(chosen, when=datetime(2026, 1, 2, 3, 4, 5))
    assert task is not None
    wait_for_task(task)
    assert (task.outcome, task.error, task.bug) == ("done", None, None)
    got = classes(tmp_path / "runs" / "m4_20260102-030405" / "classes.tif")
    np.testing.assert_array_equal(got, expected4(data[[3, 0, 1, 2]]))  # the whole raster layer, remapped


def test_processing_bands(qgis_processing, qgis_new_project, tmp_path: Path) -> None:
    register_provider()
    import processing

    data = rgbn()
    path = write_utm_raster(tmp_path / "rgbn.tif", data)
    model = make_4band_model(tmp_path / "m4.onnx")
    layer = QgsRasterLayer(str(path), "rgbn")
    QgsProject.instance().addMapLayer(layer)
    ext = layer.extent()
    outputs = processing.run(
        "satseg:segment_extent",
        {
            "MODEL": str(model),
            "SOURCE_LAYER": layer.id(),
            "EXTENT": f"{ext.xMinimum()},{ext.xMaximum()},{ext.yMinimum()},{ext.yMaximum()} [EPSG:32632]",
            "BANDS": "4,1,2,3",
            "WRITE_HEATMAPS": False,
            "OUTPUT_FOLDER": str(tmp_path / "out"),
        },
    )
    np.testing.assert_array_equal(classes(Path(outputs["CLASSES"])), expected4(data[[3, 0, 1, 2]]))
