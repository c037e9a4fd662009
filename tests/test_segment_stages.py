"""run_segment's stages one by one (plan, fetch, infer, blend, write, count), and what a dialog run costs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from osgeo import gdal
from qgis.core import QgsCoordinateReferenceSystem, QgsRectangle
from tileserver import TileServer
from ui_helpers import tiles_rect_3857, wait_for_task

from satseg_plugin.inference.blend import BandBlender
from satseg_plugin.inference.counts import CountAccumulator
from satseg_plugin.inference.model import SegModel
from satseg_plugin.inference.outputs import CLASS_NODATA, EncodedRows, most_probable
from satseg_plugin.inference.segment import (
    SegmentRequest,
    blend_windows,
    fetch_strip,
    final_encoded,
    infer_windows,
    plan_run,
    run_segment,
)
from satseg_plugin.inference.tileplan import plan_stripes
from satseg_plugin.ui.segment_dialog import SegmentChoices
from satseg_plugin.ui.segment_flow import SegmentController
from satseg_plugin.ui.sources import ImagerySource

# Two by one and a half zoom-20 tiles of area2, off the tile grid: windows overlap and reach past the edges.
RECT = tiles_rect_3857(619225.25, 523265.25, 619226.75, 523266.75, 20)


def argmax_classes(probs: np.ndarray, ok: np.ndarray) -> EncodedRows:
    """RunOutputs.encode's class indices, worked out apart (no heatmaps)."""
    part = probs.argmax(axis=0).astype(np.uint8)
    part[~ok] = CLASS_NODATA
    return EncodedRows(part, ())


def test_the_stages_by_hand_give_what_run_segment_writes(
    color_model: Path, area2_server: TileServer, tmp_path: Path
) -> None:
    req = SegmentRequest(
        model=color_model, bbox=RECT, bbox_crs="EPSG:3857", tiles_url=area2_server.template,
        out_dir=tmp_path / "run", overlap_percent=25, write_heatmaps=False,
    )  # fmt: skip
    result = run_segment(req)
    written = gdal.Open(result.classes_path).ReadAsArray()

    plan = plan_run(req, open_source=True)  # plan
    assert plan.source is not None and plan.overlap > 0
    grid, model = plan.grid, plan.model
    classes = np.full((grid.height, grid.width), 255, np.uint8)
    counter = CountAccumulator(grid, model.metadata.num_classes)
    batches: list[int] = []
    try:
        (stripe,) = plan_stripes(grid.width, plan.windows, 4096)
        w = stripe.windows
        blender = BandBlender(model.metadata.num_classes, w.size, plan.overlap, w.x0, w.span_width, w.y0)
        next_row = 0
        for j in range(w.ny):
            pixels, valid, positions, _ = fetch_strip(plan.source, w, j, model.channels)  # fetch
            assert pixels.shape == (w.size, w.span_width, 3) and len(positions) == w.nx
            windows = list(infer_windows(model, pixels, valid, positions, w.x0, 2, on_batch=batches.append))
            assert [p.shape for _, _, p, _ in windows] == [
                (model.metadata.num_classes, w.size, w.size)
            ] * w.nx
            blend_windows(blender, windows)  # blend
            rows = final_encoded(blender, stripe, j, next_row, grid.height, argmax_classes)  # encode
            if rows is None:
                continue
            encoded, y = rows
            part = encoded.classes  # write: RunOutputs.write_encoded's class raster rows
            classes[y : y + part.shape[0]] = part
            counter.add(part, y)  # count
            next_row = y + part.shape[0]
    finally:
        plan.source.close()
    assert next_row == grid.height and sum(batches) == w.count
    np.testing.assert_array_equal(classes, written)
    names, colors = list(model.metadata.class_names), list(model.metadata.class_colors)
    assert counter.table(names, colors) == result.counts


def test_a_dialog_run_loads_the_model_once_and_fetches_tilejson_once(
    qgis_iface, qgis_new_project, color_model: Path, area2_server: TileServer, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    canvas = qgis_iface.mapCanvas()
    canvas.setDestinationCrs(QgsCoordinateReferenceSystem("EPSG:3857"))
    canvas.setExtent(QgsRectangle(*tiles_rect_3857(619226.5, 523265.5, 619227.5, 523266.5, 20)))
    loads: list[str] = []
    load = SegModel.load.__func__  # type: ignore[attr-defined]

    def counted(cls: type, path: object, *args: object, **kw: object) -> SegModel:
        loads.append(str(path))
        return load(cls, path, *args, **kw)

    monkeypatch.setattr(SegModel, "load", classmethod(counted))
    before = sum(1 for line in area2_server.lines if line.startswith("/tiles.json"))
    choices = SegmentChoices(
        str(color_model), ImagerySource(tiles_url=area2_server.url + "/tiles.json"), None,
        str(tmp_path), True, False, True,
    )  # fmt: skip
    task = SegmentController(qgis_iface).start(choices)
    assert task is not None
    wait_for_task(task)
    assert (task.outcome, task.error, task.bug) == ("done", None, None)
    assert loads == [str(color_model)]
    assert sum(1 for line in area2_server.lines if line.startswith("/tiles.json")) - before == 1


@pytest.mark.parametrize("classes", [1, 2, 6])
def test_most_probable_is_argmax_with_the_first_class_winning_ties(classes: int) -> None:
    rng = np.random.default_rng(classes)
    probs = rng.integers(0, 4, (classes, 40, 60)).astype(np.float32) / 4  # many ties
    got = most_probable(probs)
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, probs.argmax(axis=0))
