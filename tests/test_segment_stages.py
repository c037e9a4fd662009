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
    final_encoded,
    infer_windows,
    plan_run,
    run_segment,
)
from satseg_plugin.inference.strips import Strip, prefetch_strip
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
            strip = Strip(plan.source, w, j, model.channels)  # fetch, as the windows run
            assert strip.pixels.shape == (w.size, w.span_width, 3) and len(strip.positions) == w.nx
            windows = list(infer_windows(model, strip, 2, on_batch=batches.append))
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


def test_a_strip_is_read_as_its_windows_run_and_in_parts_reads_as_whole(
    color_model: Path, area2_server: TileServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The model starts on a strip's first window before the strip's last columns are read."""
    wide = tiles_rect_3857(619225.25, 523265.25, 619227.75, 523266.75, 20)
    req = SegmentRequest(
        model=color_model, bbox=wide, bbox_crs="EPSG:3857", tiles_url=area2_server.template,
        out_dir=tmp_path / "run", window=256, overlap_percent=25, write_heatmaps=False,
    )  # fmt: skip
    plan = plan_run(req, open_source=True)
    source, model, w = plan.source, plan.model, plan.windows
    assert source is not None and w.nx >= 3 and w.stride < w.size
    events: list[tuple[str, int]] = []
    read, run = source.read, model.run

    def logged_read(
        y: int, h: int, x: int, width: int, keep: tuple[int, int] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        events.append(("read", x + width))
        return read(y, h, x, width, keep)

    monkeypatch.setattr(source, "read", logged_read)
    monkeypatch.setattr(model, "run", lambda batch: events.append(("run", len(batch))) or run(batch))
    try:
        prefetch_strip(source, w, w.y0)
        strip = Strip(source, w, 0, model.channels)
        windows = list(infer_windows(model, strip, 1))
        assert [kind for kind, _ in events[:2]] == ["read", "run"]  # one window's columns, then the model
        assert events[0][1] == w.x0 + w.size < w.x0 + w.span_width
        assert [kind for kind, _ in events] == ["read", "run"] * w.nx
        whole = Strip(source, w, 0, model.channels)
        whole.read_to(w.x0 + w.span_width)
    finally:
        source.close()
    np.testing.assert_array_equal(strip.pixels, whole.pixels)
    np.testing.assert_array_equal(strip.valid, whole.valid)
    assert [(x, y) for x, y, _, _ in windows] == [(x, y) for x, y in whole.positions if whole.has_imagery(x)]
