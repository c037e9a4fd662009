"""Polygons per class and clean classes in offscreen QGIS: dialog, task and layer group, Processing."""

from __future__ import annotations

import csv
from datetime import datetime
from pathlib import Path

import pytest
from qgis.core import QgsCategorizedSymbolRenderer, QgsProject, QgsVectorLayer
from test_ui_segment_task import choices, show_on_canvas
from tileserver import TileServer
from ui_helpers import CLASS_COLORS, CLASS_NAMES, tiles_rect_3857, wait_for_task

from satseg_plugin.ui.processing_provider import register_provider
from satseg_plugin.ui.segment_dialog import SegmentDialog
from satseg_plugin.ui.segment_flow import SegmentController

WHEN = datetime(2026, 1, 2, 3, 4, 5)
RECT = tiles_rect_3857(619225.25, 523265.25, 619226.75, 523266.75, 20)
EXTENT = f"{RECT[0]},{RECT[2]},{RECT[1]},{RECT[3]} [EPSG:3857]"


def _areas(layer: QgsVectorLayer) -> dict[str, float]:
    out: dict[str, float] = {}
    for f in layer.getFeatures():
        out[f["class"]] = out.get(f["class"], 0.0) + f["area_m2"]
    return out


def _table(path: Path) -> dict[str, float]:
    with open(path, newline="") as f:
        return {r["class"]: float(r["area_m2"]) for r in csv.DictReader(f)}


def test_dialog_gives_polygons_min_area_and_simplify(qgis_new_project, color_model: Path) -> None:
    dialog = SegmentDialog(QgsProject.instance(), "the visible extent", model_path=str(color_model))
    dialog.url_edit.setText("http://example.org/{z}/{x}/{y}.png")
    dialog.layer_combo.setLayer(None)
    first = dialog.choices()
    assert (first.write_vectors, first.min_area_m2, first.simplify_m) == (False, None, None)
    assert not dialog.simplify_spin.isEnabled()  # simplification is of the polygons
    dialog.vectors_check.setChecked(True)
    assert dialog.simplify_spin.isEnabled()
    dialog.min_area_spin.setValue(12.5)
    dialog.simplify_spin.setValue(0.3)
    chosen = dialog.choices()
    assert (chosen.write_vectors, chosen.min_area_m2, chosen.simplify_m) == (True, 12.5, 0.3)


def test_task_adds_the_polygons_styled_by_class(
    qgis_iface, qgis_new_project, color_model: Path, area2_server: TileServer, tmp_path: Path
) -> None:
    show_on_canvas(qgis_iface, tiles_rect_3857(619226.5, 523265.5, 619227.5, 523266.5, 20))
    controller = SegmentController(qgis_iface)
    task = controller.start(
        choices(
            color_model,
            area2_server.template,
            tmp_path,
            write_heatmaps=False,
            write_vectors=True,
            min_area_m2=2.0,
        ),
        when=WHEN,
    )
    assert task is not None
    wait_for_task(task)
    assert (task.outcome, task.error, task.bug) == ("done", None, None)
    group = task.group
    assert [n.name() for n in group.children()] == ["polygons", "classes", "pixel counts"]
    layer = group.findLayers()[0].layer()
    out = tmp_path / "colors_20260102-030405"
    assert layer.source().split("|")[0] == str(out / "classes.gpkg")
    assert layer.isValid() and layer.featureCount() == task.result.polygons > 0
    renderer = layer.renderer()
    assert isinstance(renderer, QgsCategorizedSymbolRenderer) and renderer.classAttribute() == "class_id"
    cats = [(c.value(), c.label(), c.symbol().color().name(), c.renderState()) for c in renderer.categories()]
    assert cats == [
        (i, n, c, i != 0) for i, (n, c) in enumerate(zip(CLASS_NAMES, CLASS_COLORS, strict=True))
    ]  # background listed, not drawn (as in the class raster)
    table = _table(out / "pixel_counts.csv")
    for name, area in _areas(layer).items():
        assert area == pytest.approx(table[name], rel=5e-3)


def test_processing_writes_polygons_and_cleans(
    qgis_processing, area2_server: TileServer, color_model: Path, tmp_path: Path
) -> None:
    register_provider()
    import processing

    out = tmp_path / "out"
    outputs = processing.run(
        "satseg:segment_extent",
        {
            "MODEL": str(color_model),
            "SOURCE_URL": area2_server.template,
            "EXTENT": EXTENT,
            "WRITE_HEATMAPS": False,
            "WRITE_VECTORS": True,
            "MIN_AREA": 3.0,
            "SIMPLIFY": 0.2,
            "OUTPUT_FOLDER": str(out),
        },
    )
    assert Path(outputs["POLYGONS"]) == out / "classes.gpkg"
    layer = QgsVectorLayer(f"{outputs['POLYGONS']}|layername=classes", "p", "ogr")
    assert layer.isValid() and layer.featureCount() > 0
    assert min(f["area_m2"] for f in layer.getFeatures()) >= 3.0 * 0.99  # the sieve ran
    table = _table(Path(outputs["COUNTS"]))
    for name, area in _areas(layer).items():
        assert area == pytest.approx(table[name], rel=5e-3)
    plain = processing.run(
        "satseg:segment_extent",
        {
            "MODEL": str(color_model),
            "SOURCE_URL": area2_server.template,
            "EXTENT": EXTENT,
            "OUTPUT_FOLDER": str(tmp_path / "p"),
        },
    )
    assert plain["POLYGONS"] is None and not (tmp_path / "p" / "classes.gpkg").exists()
