"""A raster much coarser than the model's resolution: the plugin says so where the user looks.

The task's message bar and the Processing log carry the run's note
(``segment.scale_note``); a raster at the model's scale gets none.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from inference_helpers import make_rgb_model, mosaic, write_geotiff
from qgis.core import Qgis, QgsProcessingFeedback, QgsProject, QgsRasterLayer
from ui_helpers import wait_for_task

from satseg_plugin.ui.processing_provider import register_provider
from satseg_plugin.ui.segment_dialog import SegmentChoices
from satseg_plugin.ui.segment_flow import SegmentController
from satseg_plugin.ui.sources import ImagerySource

NOTE = "the raster's pixels are 1 m on the ground, 3.3 times the model's 0.3 m"


def _raster(path: Path, res: float) -> Path:
    image = mosaic(100, 200, 100, 200, 10)[:96, :96]
    return write_geotiff(path, image, (500000.0, res, 0.0, 5000000.0, 0.0, -res), 32632)


class _Recorder(QgsProcessingFeedback):
    def __init__(self) -> None:
        super().__init__()
        self.warnings: list[str] = []

    def pushWarning(self, warning: str) -> None:  # noqa: N802 (Qt's name)
        self.warnings.append(warning)
        super().pushWarning(warning)


def test_task_message_carries_the_note(qgis_iface, qgis_new_project, tmp_path: Path) -> None:
    bar = qgis_iface.messageBar()
    for level in bar.messages:
        bar.messages[level].clear()
    model = make_rgb_model(tmp_path / "m30.onnx", zoom=None, resolution_cm=30)
    for res, when in ((1.0, datetime(2026, 1, 2, 3, 4, 5)), (0.3, datetime(2026, 1, 2, 3, 4, 6))):
        path = _raster(tmp_path / f"r{res}.tif", res)
        layer = QgsRasterLayer(str(path), f"r{res}")
        QgsProject.instance().addMapLayer(layer)
        chosen = SegmentChoices(
            str(model), ImagerySource(raster_path=str(path)), None, str(tmp_path / "runs"), True, False, True,
            area_layer_id=layer.id(),
        )  # fmt: skip
        task = SegmentController(qgis_iface).start(chosen, when=when)
        assert task is not None, bar.messages
        wait_for_task(task)
        assert (task.outcome, task.error, task.bug) == ("done", None, None)
    warnings = bar.get_messages(Qgis.Warning)
    assert len(warnings) == 1 and NOTE in warnings[0] and "segmented" in warnings[0], bar.messages
    assert len(bar.get_messages(Qgis.Success)) == 1  # the 0.3-m raster: no note


def test_processing_log_carries_the_note(qgis_processing, qgis_new_project, tmp_path: Path) -> None:
    register_provider()
    import processing

    model = make_rgb_model(tmp_path / "m30.onnx", zoom=None, resolution_cm=30)
    layer = QgsRasterLayer(str(_raster(tmp_path / "r1.tif", 1.0)), "r1")
    QgsProject.instance().addMapLayer(layer)
    ext = layer.extent()
    feedback = _Recorder()
    processing.run(
        "satseg:segment_extent",
        {
            "MODEL": str(model),
            "SOURCE_LAYER": layer.id(),
            "EXTENT": f"{ext.xMinimum()},{ext.xMaximum()},{ext.yMinimum()},{ext.yMaximum()} [EPSG:32632]",
            "WRITE_HEATMAPS": False,
            "OUTPUT_FOLDER": str(tmp_path / "out"),
        },
        feedback=feedback,
    )
    assert any(NOTE in w for w in feedback.warnings), feedback.warnings
