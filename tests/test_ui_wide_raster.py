"""A 16-bit raster layer in QGIS: the plugin segments it and says how it read the values.

The task's message bar carries the run's stretch note (``stretch.stretch_note``);
the class layer it adds covers the raster.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import numpy as np
from inference_helpers import make_rgb_model, mosaic, write_raster
from osgeo import gdal
from qgis.core import Qgis, QgsProject, QgsRasterLayer
from ui_helpers import wait_for_task

from satseg_plugin.ui.segment_dialog import SegmentChoices
from satseg_plugin.ui.segment_flow import SegmentController
from satseg_plugin.ui.sources import ImagerySource


def _uint16_raster(path: Path) -> Path:
    image = mosaic(100, 200, 100, 200, 10)[:96, :128].astype(np.uint16) * 16 + 100  # 12-bit counts
    return write_raster(path, image.transpose(2, 0, 1), gdal.GDT_UInt16)


def test_a_16_bit_layer_segments_and_the_message_gives_the_stretch(
    qgis_iface, qgis_new_project, tmp_path: Path
) -> None:
    bar = qgis_iface.messageBar()
    for level in bar.messages:
        bar.messages[level].clear()
    model = make_rgb_model(tmp_path / "m.onnx", zoom=None)
    path = _uint16_raster(tmp_path / "u16.tif")
    layer = QgsRasterLayer(str(path), "u16")
    assert layer.isValid() and layer.dataProvider().dataType(1) == Qgis.UInt16
    QgsProject.instance().addMapLayer(layer)
    chosen = SegmentChoices(
        str(model), ImagerySource(raster_path=str(path)), None, str(tmp_path / "runs"), True, False, True,
        area_layer_id=layer.id(),
    )  # fmt: skip
    task = SegmentController(qgis_iface).start(chosen, when=datetime(2026, 1, 2, 3, 4, 5))
    assert task is not None, bar.messages
    wait_for_task(task)
    assert (task.outcome, task.error, task.bug) == ("done", None, None)
    warnings = bar.get_messages(Qgis.Warning)
    assert len(warnings) == 1 and "segmented" in warnings[0], bar.messages
    assert "UInt16" in warnings[0] and "0.5 % and 99.5 %" in warnings[0]
    classes = [lyr for lyr in QgsProject.instance().mapLayers().values() if lyr.name() == "classes"]
    assert len(classes) == 1, [lyr.name() for lyr in QgsProject.instance().mapLayers().values()]
    ds = gdal.Open(classes[0].source())
    values = ds.ReadAsArray()
    ds = None
    assert values.shape == (96, 128) and len(set(np.unique(values).tolist()) - {255}) >= 2
