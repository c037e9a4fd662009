"""How often the plugin opens a model: the metadata is read from the file, one session per dialog run.

onnxruntime has no metadata-only API, so the dialog created a session to describe the model
(twice on opening) and one per model it listed, and the run created another: with the shipped
models 6 sessions on opening, 7 to a finished run (measured before read_model_info). It reads
the ModelProto's fields itself now; these tests hold it to what onnxruntime reports and count
the sessions of a dialog run: 0 on opening, 1 to a finished run.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import ROOT
from inference_helpers import make_rgb_model, save_model
from onnx import TensorProto, helper
from qgis.core import QgsCoordinateReferenceSystem, QgsRectangle
from tileserver import TileServer
from ui_helpers import make_color_model, tiles_rect_3857, wait_for_task

from satseg_plugin.inference.errors import ModelError
from satseg_plugin.inference.int8speed import decide, measure_and_cache
from satseg_plugin.inference.model import SegModel, read_model_info
from satseg_plugin.ui import int8_offer
from satseg_plugin.ui.segment_flow import SegmentController

SHIPPED = sorted((ROOT / "models").glob("*.onnx"))


def _test_models(folder: Path) -> list[Path]:
    """The kinds of model the tests make: satseg's, Deepness-style literals, 4 bands, fixed sizes."""
    four_band = helper.make_node("Conv", ["image", "w"], ["probabilities"])
    w = helper.make_tensor("w", TensorProto.FLOAT, [2, 4, 1, 1], np.ones(8, np.float32).tolist())
    legacy = onnx.load(str(make_rgb_model(folder / "legacy.onnx")))
    for weight in legacy.graph.initializer:  # weights listed as inputs too (IR 3 wants them so)
        legacy.graph.input.append(helper.make_tensor_value_info(weight.name, weight.data_type, weight.dims))
    onnx.save(legacy, str(folder / "legacy.onnx"))
    deepness = {
        "model_type": "Segmentor",
        "class_names": "{0: 'a', 1: 'b', 2: 'c', 3: 'd'}",
        "resolution": "60",
        "tiles_overlap": "0",
        "ünïcode": "naïve ✓" * 40,
    }
    four_props = {"class_names": '["x", "y"]', "input_bands": "[1, 2, 3, 4]"}
    return [
        folder / "legacy.onnx",
        make_rgb_model(folder / "rgb.onnx"),
        make_rgb_model(folder / "blur.onnx", zoom=None, overlap=25, blur=True, resolution_cm=30),
        make_color_model(folder / "colors.onnx"),
        make_rgb_model(folder / "deepness.onnx", props=deepness),
        save_model(folder / "four.onnx", [four_band], [w], 2, four_props, in_shape=[1, 4, 256, 256]),
    ]


def test_the_metadata_read_from_the_file_is_what_onnxruntime_reports(tmp_path: Path) -> None:
    models = [*SHIPPED, *_test_models(tmp_path)]
    assert len(SHIPPED) >= 4  # both default models and their int8 copies (both ship since 2026-12-08)
    for path in models:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        info = read_model_info(path)
        assert info.props == session.get_modelmeta().custom_metadata_map, path.name
        (inp,), (out,) = session.get_inputs(), session.get_outputs()
        assert (info.input.name, info.input.shape, info.input.type) == (inp.name, inp.shape, inp.type)
        assert (info.output.name, info.output.type, len(info.output.shape)) == (out.name, out.type, 4)
        # onnxruntime infers the output's shape from a fixed input (four.onnx declares N, H, W):
        # the file says less, never something else
        assert all(a == b for a, b in zip(info.output.shape, out.shape, strict=True) if isinstance(a, int)), (
            path.name
        )
        model = SegModel.load(path, allow_generic_names=True)
        assert (info.metadata, info.channels) == (model.metadata, model.channels), path.name


def test_a_file_that_is_not_a_model_is_a_model_error_in_words(tmp_path: Path) -> None:
    for name, data in (("text.onnx", b"not a model at all"), ("empty.onnx", b""), ("cut.onnx", None)):
        path = tmp_path / name
        path.write_bytes(
            data if data is not None else (ROOT / "models" / "satseg-buildings.onnx").read_bytes()[:5000]
        )
        with pytest.raises(ModelError, match=r"is not a usable ONNX model \("):
            read_model_info(path)
    with pytest.raises(ModelError, match="does not exist"):
        read_model_info(tmp_path / "missing.onnx")


def test_dialog_open_to_a_finished_run_creates_one_session(
    qgis_iface, qgis_new_project, clean_settings, area2_server: TileServer, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """Open the dialog on the shipped model (its int8 measurement cached), change nothing, Run.

    The one-off int8 measurement (two sessions in a background task on a cache miss) is
    test_int8_offer's subject: here it is in the cache, as on every later opening.
    """
    shipped = ROOT / "models" / "satseg-buildings.onnx"
    cache = tmp_path / "int8_speed.json"
    monkeypatch.setattr(int8_offer, "int8_speed_file", lambda: cache)
    monkeypatch.setenv("SATSEG_INT8_MEASURE", "1")
    measure_and_cache(shipped, cache, lambda fp32, int8: decide([1.0] * 3, [0.8] * 3, 2))
    canvas = qgis_iface.mapCanvas()
    canvas.setDestinationCrs(QgsCoordinateReferenceSystem("EPSG:3857"))
    canvas.setExtent(QgsRectangle(*tiles_rect_3857(619226.5, 523265.5, 619227.5, 523266.5, 20)))
    sessions: list[str] = []
    real = ort.InferenceSession

    class Counted(real):  # type: ignore[misc, valid-type]
        def __init__(self, path: object, *args: object, **kw: object) -> None:
            sessions.append(str(path))
            super().__init__(path, *args, **kw)

    monkeypatch.setattr(ort, "InferenceSession", Counted)
    controller = SegmentController(qgis_iface)
    dialog = controller.open_dialog(str(shipped))
    assert dialog is not None and "building" in dialog.model_info.text()
    assert dialog.int8.check.text().startswith("int8: 1.25x faster") and dialog.int8.task is None
    opened = len(sessions)
    dialog.layer_combo.setLayer(None)
    dialog.url_edit.setText(area2_server.url + "/tiles.json")
    dialog.zoom_spin.setValue(20)
    dialog.heatmaps_check.setChecked(False)
    dialog.accept()
    (task,) = controller.tasks
    wait_for_task(task)
    assert (task.outcome, task.error, task.bug) == ("done", None, None)
    assert (opened, sessions) == (0, [str(shipped)])
