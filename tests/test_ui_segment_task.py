"""Segment extent end to end in offscreen QGIS: task, layer group, renderers, table, cancel, errors."""

from __future__ import annotations

import csv
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from osgeo import gdal
from qgis.core import (
    Qgis,
    QgsCoordinateReferenceSystem,
    QgsPalettedRasterRenderer,
    QgsPointXY,
    QgsProject,
    QgsRectangle,
    QgsSingleBandPseudoColorRenderer,
)
from tileserver import TileServer, oam_provider
from ui_helpers import (
    CLASS_COLORS,
    CLASS_NAMES,
    projects_left_in_cycles,
    tiles_rect_3857,
    wait_for_task,
)

from satseg_plugin.ui.segment_dialog import SegmentChoices
from satseg_plugin.ui.segment_flow import SegmentController
from satseg_plugin.ui.sources import ImagerySource

WHEN = datetime(2026, 1, 2, 3, 4, 5)
GROUP = "colors 2026-01-02 03:04:05"
RUN_FOLDER = "colors_20260102-030405"


@pytest.fixture()
def bar(qgis_iface):
    """The (mock) message bar, emptied."""
    mock = qgis_iface.messageBar()
    for level in mock.messages:
        mock.messages[level].clear()
    return mock


def show_on_canvas(iface, rect: tuple[float, float, float, float], crs: str = "EPSG:3857") -> None:
    canvas = iface.mapCanvas()
    canvas.setDestinationCrs(QgsCoordinateReferenceSystem(crs))
    canvas.setExtent(QgsRectangle(*rect))
    canvas.refresh()


def choices(model: Path, url: str, out: Path, **kw: object) -> SegmentChoices:
    values = {"write_classes": True, "write_heatmaps": True, "write_counts": True, **kw}
    return SegmentChoices(str(model), ImagerySource(tiles_url=url), None, str(out), **values)  # type: ignore[arg-type]


def test_task_adds_a_group_with_paletted_classes_heatmaps_and_the_table(
    qgis_iface, qgis_new_project, bar, color_model: Path, area2_server: TileServer, tmp_path: Path
) -> None:
    # One zoom-20 tile's height in the middle of the area; the offscreen canvas is wide (about
    # 3.5 : 1), so the visible extent is about 3.5 x 1 tiles, still all inside the imagery.
    show_on_canvas(qgis_iface, tiles_rect_3857(619226.5, 523265.5, 619227.5, 523266.5, 20))
    controller = SegmentController(qgis_iface)
    task = controller.start(choices(color_model, area2_server.template, tmp_path), when=WHEN)
    assert task is not None, bar.messages
    progress: list[float] = []
    task.progressChanged.connect(progress.append)
    wait_for_task(task)
    assert (task.outcome, task.error, task.bug) == ("done", None, None)
    assert progress and max(progress) == pytest.approx(100.0)
    assert any("segmented" in m for m in bar.get_messages(Qgis.Success)), bar.messages

    group = QgsProject.instance().layerTreeRoot().findGroup(GROUP)
    assert group is not None and group is task.group
    names = [node.name() for node in group.children()]
    assert names == ["classes", *(f"p({n})" for n in CLASS_NAMES), "pixel counts"]
    layers = {node.name(): node.layer() for node in group.findLayers()}
    out = tmp_path / RUN_FOLDER
    assert sorted(p.name for p in tmp_path.iterdir()) == [RUN_FOLDER]  # no staging folder left

    classes = layers["classes"]
    assert Path(classes.source()) == out / "classes.tif"
    renderer = classes.renderer()
    assert isinstance(renderer, QgsPalettedRasterRenderer)
    assert [(c.value, c.label, c.color.name()) for c in renderer.classes()] == [
        (i, n, c) for i, (n, c) in enumerate(zip(CLASS_NAMES, CLASS_COLORS, strict=True))
    ]
    legend = [label for label, _ in renderer.legendSymbologyItems()]
    assert legend == CLASS_NAMES
    values = np.unique(gdal.Open(classes.source()).ReadAsArray())
    assert set(values.tolist()) <= {0, 1, 2, 255} and len(set(values.tolist()) - {255}) >= 2

    for name in CLASS_NAMES:
        heat = layers[f"p({name})"]
        assert Path(heat.source()).parent == out
        r = heat.renderer()
        assert isinstance(r, QgsSingleBandPseudoColorRenderer)
        assert (r.classificationMin(), r.classificationMax()) == (0.0, 1.0)
        items = r.shader().rasterShaderFunction().colorRampItemList()
        assert items[0].value == pytest.approx(0.0) and items[-1].value == pytest.approx(1.0)
        assert not group.findLayer(heat.id()).isVisible()  # off at first: the classes are on top
        # The file holds bytes with a scale of 1/254; QGIS reads probabilities 0..1 from it.
        provider = heat.dataProvider()
        assert provider.dataType(1) == Qgis.Float32
        raw = gdal.Open(heat.source()).ReadAsArray()
        row, col = np.argwhere((raw > 0) & (raw < 255))[0]
        gt = gdal.Open(heat.source()).GetGeoTransform()
        point = QgsPointXY(gt[0] + (col + 0.5) * gt[1], gt[3] + (row + 0.5) * gt[5])
        value, ok = provider.sample(point, 1)
        assert ok and value == pytest.approx(raw[row, col] / 254)
        stats = provider.bandStatistics(1)
        assert stats.minimumValue >= 0.0 and stats.maximumValue <= 1.0

    table = layers["pixel counts"]
    assert table.isValid() and not table.isSpatial()
    assert [f.name() for f in table.fields()] == ["class", "pixels", "share", "area_m2", "area_ha"]
    with open(out / "pixel_counts.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    features = [f.attributes() for f in table.getFeatures()]
    assert [a[0] for a in features] == [r["class"] for r in rows] == CLASS_NAMES
    assert [int(a[1]) for a in features] == [int(r["pixels"]) for r in rows]
    assert [float(a[2]) for a in features] == pytest.approx([float(r["share"]) for r in rows])
    assert [float(a[3]) for a in features] == pytest.approx([float(r["area_m2"]) for r in rows])


def test_cancel_mid_run_adds_no_layer_and_leaves_no_file(
    qgis_iface, qgis_new_project, bar, color_model: Path, shared_data: Path, tmp_path: Path
) -> None:
    show_on_canvas(qgis_iface, tiles_rect_3857(619224, 523264, 619230, 523268, 20))
    with TileServer(oam_provider(shared_data / "oam-osm-buildings" / "area2"), delay=0.25) as slow:
        controller = SegmentController(qgis_iface)
        controller.confirm = lambda parent, tiles: True
        task = controller.start(choices(color_model, slow.template, tmp_path), when=WHEN)
        assert task is not None, bar.messages
        task.progressChanged.connect(lambda p: task.cancel() if p > 0 else None)
        wait_for_task(task)
    assert task.outcome == "cancelled" and task.result is None
    assert QgsProject.instance().layerTreeRoot().children() == []
    assert QgsProject.instance().mapLayers() == {}
    assert list(tmp_path.rglob("*")) == []  # not even an empty folder
    assert any("cancelled" in m for m in bar.get_messages(Qgis.Info)), bar.messages


@pytest.mark.parametrize("fault", ["wrong model", "wrong token", "bad URL"])
def test_user_errors_go_to_the_message_bar_in_plain_words(
    fault: str, qgis_iface, qgis_new_project, bar, color_model: Path, shared_data: Path, tmp_path: Path
) -> None:
    show_on_canvas(qgis_iface, tiles_rect_3857(619225.25, 523265.25, 619225.75, 523265.75, 20))
    model = color_model
    with TileServer(oam_provider(shared_data / "oam-osm-buildings" / "area2"), token="s3cret") as server:
        url = server.template + "?access_token=s3cret"
        if fault == "wrong model":
            model = tmp_path / "photo.onnx"
            model.write_bytes(b"\x89PNG\r\n\x1a\n not a model at all")
        elif fault == "wrong token":
            url = server.template + "?access_token=wrong-token-123"
        else:
            url = server.url + "/tiles/{z}/{x}.png"  # no {y}: not a tile template
        task = SegmentController(qgis_iface).start(choices(model, url, tmp_path / "out"), when=WHEN)
        if task is not None:
            wait_for_task(task)
            assert task.bug is None, task.bug
    warnings = bar.get_messages(Qgis.Warning)
    assert len(warnings) == 1, bar.messages
    assert "Traceback" not in warnings[0] and "wrong-token-123" not in warnings[0]
    assert not bar.get_messages(Qgis.Critical)
    if fault != "wrong token":  # a 401 on every tile may also end as an all-nodata run
        assert QgsProject.instance().mapLayers() == {}
    print(f"{fault}: {warnings[0]}")


def test_ended_tasks_leave_the_project_out_of_reference_cycles(
    qgis_iface, qgis_new_project, bar, color_model: Path, area2_server: TileServer, tmp_path: Path
) -> None:
    """A task that added its layers, and one cancelled mid-run, are garbage without holding the project."""
    show_on_canvas(qgis_iface, tiles_rect_3857(619226.5, 523265.5, 619227.5, 523266.5, 20))
    ends: list[object] = []

    def run_two() -> None:
        controller = SegmentController(qgis_iface)
        done = controller.start(choices(color_model, area2_server.template, tmp_path / "a"), when=WHEN)
        wait_for_task(done)
        cancelled = controller.start(choices(color_model, area2_server.template, tmp_path / "b"), when=WHEN)
        cancelled.cancel()
        wait_for_task(cancelled)
        ends.extend([done.outcome, cancelled.ended])
        assert controller.tasks == []  # both forgotten once they ended

    assert projects_left_in_cycles(run_two) == 0
    assert ends == ["done", True]
