"""Shared pieces of the QGIS-side tests: a colour-following ONNX model, the tile grid, task waits."""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from pathlib import Path

import mercantile
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from satseg_plugin.inference.metadata import ModelMetadata, build_metadata

CLASS_NAMES = ["background", "greenery", "blue roof"]
CLASS_COLORS = ["#000000", "#33a02c", "#1f78b4"]
ZOOM = 20
#: area2 (Kampala) has every zoom-20 tile of x 619224..619229, y 523264..523267.
AREA2_Z20 = (619224, 523264, 619229, 523267)
GAIN = 20.0  # sharp softmax: the class is the channel that is largest after normalisation


def make_color_model(path: Path, zoom: int | None = ZOOM, names: list[str] | None = None) -> Path:
    """Write a 1x1-conv + softmax model whose class is the dominant normalised RGB channel.

    Class i follows channel i of ``(rgb / 255 - MEAN) / STD``, so the expected class of
    every pixel is computable from the imagery alone.
    """
    names = names or CLASS_NAMES
    weight = np.zeros((len(names), 3, 1, 1), np.float32)
    for i in range(len(names)):
        weight[i, i % 3, 0, 0] = GAIN
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["image", "w"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
        ],
        "color_model",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", len(names), "H", "W"])],
        initializer=[numpy_helper.from_array(weight, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    meta = ModelMetadata(
        class_names=list(names),
        class_colors=[CLASS_COLORS[i % len(CLASS_COLORS)] for i in range(len(names))],
        tile_size=256,
        tiles_overlap=0,
        zoom=zoom,
        resolution_cm=14.9 if zoom == ZOOM else None,
    )
    helper.set_model_props(model, build_metadata(meta))
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def tiles_rect_3857(x0: float, y0: float, x1: float, y1: float, z: int) -> tuple[float, float, float, float]:
    """Return (minx, miny, maxx, maxy) in EPSG:3857 of tile coordinates x0..x1, y0..y1 (fractions ok)."""
    left, top = mercantile.xy(*mercantile.ul(int(x0), int(y0), z))
    size = 2 * 20037508.342789244 / 2**z
    left += (x0 - int(x0)) * size
    top -= (y0 - int(y0)) * size
    return left, top - (y1 - y0) * size, left + (x1 - x0) * size, top


def xyz_source(template: str) -> str:
    """The QGIS data source of an XYZ layer of the tiles at ``template`` (zoom 0 to 21)."""
    return "type=xyz&url=" + template.replace("{", "%7B").replace("}", "%7D") + "&zmax=21&zmin=0"


def wait_for_task(task: object, timeout: float = 120.0) -> None:
    """Spin the event loop until ``task`` completed or terminated (its finished() has run)."""
    from qgis.core import QgsApplication, QgsTask

    def running() -> bool:
        try:
            return task.status() not in (QgsTask.Complete, QgsTask.Terminated)  # type: ignore[attr-defined]
        except RuntimeError:  # QGIS deletes a task once it has ended
            return False

    end = time.monotonic() + timeout
    while running():
        if time.monotonic() > end:
            raise TimeoutError(f"task still running after {timeout} s")
        QgsApplication.processEvents()
        time.sleep(0.01)
    for _ in range(5):  # finished() and the completion signals are queued on the main thread
        QgsApplication.processEvents()


def projects_left_in_cycles(action: Callable[[], None]) -> int:
    """How many QgsProject wrappers ``action`` leaves in reference cycles (garbage only the cyclic GC frees).

    When the cyclic GC clears a QgsProject's Python wrapper, PyQt drops every Python callable
    connected to that project's signals: other plugins' slots, and pytest-qgis's
    ``legendLayersAdded -> processEvents``, whose disconnect then fails at the session's end.
    So what the plugin leaves behind must not hold the project in a cycle. Automatic
    collection is off while ``action`` runs: its garbage is all still there to be counted.
    """
    from qgis.core import QgsProject

    gc.collect()  # earlier tests' garbage is not this action's
    gc.disable()
    try:
        action()
        gc.set_debug(gc.DEBUG_SAVEALL)  # keep the garbage in gc.garbage instead of clearing it
        gc.collect()
    finally:
        gc.set_debug(0)
        gc.enable()
    found = sum(isinstance(obj, QgsProject) for obj in gc.garbage)
    gc.garbage.clear()
    return found
