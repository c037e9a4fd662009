"""Processing area in offscreen QGIS: selected or all polygons of a layer, a raster layer's extent, Processing."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from osgeo import gdal
from qgis.core import (
    QgsFeature,
    QgsGeometry,
    QgsProcessingFeatureSourceDefinition,
    QgsProject,
    QgsRasterLayer,
    QgsVectorFileWriter,
    QgsVectorLayer,
)
from test_ui_segment_task import choices
from tileserver import TileServer
from ui_helpers import tiles_rect_3857, wait_for_task

from satseg_plugin.ui.processing_provider import register_provider
from satseg_plugin.ui.segment_dialog import SegmentDialog
from satseg_plugin.ui.segment_flow import SegmentController

WHEN = datetime(2026, 1, 2, 3, 4, 5)
FOLDER = "colors_20260102-030405"
#: Two polygons inside area2's zoom-20 tiles: a rectangle and, further east, a square.
RECT = tiles_rect_3857(619225.3, 523265.2, 619226.6, 523266.4, 20)
SQUARE = tiles_rect_3857(619227.6, 523265.5, 619228.4, 523266.3, 20)


def _wkt(r: tuple[float, float, float, float]) -> str:
    return f"POLYGON (({r[0]} {r[1]}, {r[2]} {r[1]}, {r[2]} {r[3]}, {r[0]} {r[3]}, {r[0]} {r[1]}))"


def polygons_layer() -> QgsVectorLayer:
    layer = QgsVectorLayer("Polygon?crs=EPSG:3857&field=name:string", "fields", "memory")
    feats = []
    for name, rect in (("rect", RECT), ("square", SQUARE)):
        f = QgsFeature(layer.fields())
        f.setAttributes([name])
        f.setGeometry(QgsGeometry.fromWkt(_wkt(rect)))
        feats.append(f)
    layer.dataProvider().addFeatures(feats)
    layer.updateExtents()
    QgsProject.instance().addMapLayer(layer)
    return layer


def classes(path: Path) -> tuple[np.ndarray, tuple]:
    ds = gdal.Open(str(path))
    out = ds.GetRasterBand(1).ReadAsArray(), ds.GetGeoTransform()
    ds = None
    return out


def inside(gt: tuple, shape: tuple[int, int], *rects: tuple[float, float, float, float]) -> np.ndarray:
    h, w = shape
    x, y = np.meshgrid(gt[0] + (np.arange(w) + 0.5) * gt[1], gt[3] + (np.arange(h) + 0.5) * gt[5])
    out = np.zeros(shape, bool)
    for r in rects:
        out |= (x > r[0]) & (x < r[2]) & (y > r[1]) & (y < r[3])
    return out


def test_dialog_lists_polygon_and_raster_layers_as_areas(qgis_new_project, color_model: Path) -> None:
    layer = polygons_layer()
    dialog = SegmentDialog(QgsProject.instance(), "the visible extent", model_path=str(color_model))
    dialog.url_edit.setText("http://example.org/{z}/{x}/{y}.png")
    dialog.layer_combo.setLayer(None)
    assert dialog.choices().area_layer_id is None  # the visible extent by default
    dialog.area_combo.setLayer(layer)
    chosen = dialog.choices()
    assert chosen.area_layer_id == layer.id() and chosen.selected_only


def test_selected_polygons_then_all_of_them(
    qgis_iface, qgis_new_project, color_model: Path, area2_server: TileServer, tmp_path: Path
) -> None:
    layer = polygons_layer()
    rect_id = next(f.id() for f in layer.getFeatures() if f["name"] == "rect")
    layer.selectByIds([rect_id])
    controller = SegmentController(qgis_iface)
    task = controller.start(
        choices(color_model, area2_server.template, tmp_path / "sel", area_layer_id=layer.id()), when=WHEN
    )
    assert task is not None
    folder = task.area_folder
    assert Path(folder, "area.gpkg").is_file()
    wait_for_task(task)
    assert (task.outcome, task.error, task.bug) == ("done", None, None)
    assert not Path(folder).exists()  # the polygons written for the run are gone with it
    c, gt = classes(tmp_path / "sel" / FOLDER / "classes.tif")
    # The grid is the selected rectangle's box; every pixel inside it is classified.
    assert abs(gt[0] - RECT[0]) <= gt[1] and c.shape[1] * gt[1] == pytest.approx(
        RECT[2] - RECT[0], abs=2 * gt[1]
    )
    want = inside(gt, c.shape, RECT)
    assert (c[want] != 255).mean() > 0.99 and (c[~want] == 255).all()
    assert sum(cc.pixels for cc in task.result.counts) == int((c != 255).sum())

    layer.removeSelection()  # nothing selected: all polygons
    task = controller.start(
        choices(color_model, area2_server.template, tmp_path / "all", area_layer_id=layer.id()), when=WHEN
    )
    wait_for_task(task)
    assert task.outcome == "done", task.error
    c, gt = classes(tmp_path / "all" / FOLDER / "classes.tif")
    want = inside(gt, c.shape, RECT, SQUARE)
    assert c.shape[1] * gt[1] > SQUARE[2] - RECT[0] - 2 * gt[1]
    assert (c[want] != 255).mean() > 0.99 and (c[~want] == 255).all()
    assert 0.2 < want.mean() < 0.8  # between the two polygons: nodata


def test_a_raster_layer_gives_its_whole_extent(
    qgis_iface, qgis_new_project, color_model: Path, area2_server: TileServer, tmp_path: Path
) -> None:
    tif = tmp_path / "footprint.tif"
    ds = gdal.GetDriverByName("GTiff").Create(str(tif), 10, 10, 1, gdal.GDT_Byte)
    ds.SetGeoTransform(
        (SQUARE[0], (SQUARE[2] - SQUARE[0]) / 10, 0, SQUARE[3], 0, -(SQUARE[3] - SQUARE[1]) / 10)
    )
    ds.SetProjection(gdal.Open(str(make_3857(tmp_path))).GetProjection())
    ds = None
    raster = QgsRasterLayer(str(tif), "footprint")
    QgsProject.instance().addMapLayer(raster)
    task = SegmentController(qgis_iface).start(
        choices(color_model, area2_server.template, tmp_path / "r", area_layer_id=raster.id()), when=WHEN
    )
    wait_for_task(task)
    assert task.outcome == "done", task.error
    c, gt = classes(tmp_path / "r" / FOLDER / "classes.tif")
    assert (c != 255).mean() > 0.99  # (area2 has a few transparent pixels)
    assert c.shape[1] * gt[1] == pytest.approx(SQUARE[2] - SQUARE[0], abs=2 * gt[1])


def make_3857(tmp_path: Path) -> Path:
    path = tmp_path / "srs.tif"
    ds = gdal.GetDriverByName("GTiff").Create(str(path), 1, 1, 1, gdal.GDT_Byte)
    ds.SetProjection('PROJCS["WGS 84 / Pseudo-Mercator",GEOGCS["WGS 84",DATUM["WGS_1984",SPHEROID["WGS 84",6378137,298.257223563]],PRIMEM["Greenwich",0],UNIT["degree",0.0174532925199433]],PROJECTION["Mercator_1SP"],PARAMETER["central_meridian",0],PARAMETER["scale_factor",1],PARAMETER["false_easting",0],PARAMETER["false_northing",0],UNIT["metre",1],AXIS["Easting",EAST],AXIS["Northing",NORTH],EXTENSION["PROJ4","+proj=merc +a=6378137 +b=6378137 +lat_ts=0 +lon_0=0 +x_0=0 +y_0=0 +k=1 +units=m +nadgrids=@null +wktext +no_defs"],AUTHORITY["EPSG","3857"]]')  # fmt: skip
    ds = None
    return path


def test_processing_mask_with_selected_features_only(
    qgis_processing, qgis_new_project, color_model: Path, area2_server: TileServer, tmp_path: Path
) -> None:
    register_provider()
    import processing

    layer = polygons_layer()
    gpkg = tmp_path / "fields.gpkg"
    options = QgsVectorFileWriter.SaveVectorOptions()
    options.driverName = "GPKG"
    getattr(QgsVectorFileWriter, "writeAsVectorFormatV3", QgsVectorFileWriter.writeAsVectorFormatV2)(
        layer, str(gpkg), QgsProject.instance().transformContext(), options
    )
    on_disk = QgsVectorLayer(str(gpkg), "fields on disk", "ogr")
    QgsProject.instance().addMapLayer(on_disk)
    on_disk.selectByIds([next(f.id() for f in on_disk.getFeatures() if f["name"] == "square")])
    out = tmp_path / "p"
    outputs = processing.run(
        "satseg:segment_extent",
        {
            "MODEL": str(color_model),
            "SOURCE_URL": area2_server.template,
            "MASK": QgsProcessingFeatureSourceDefinition(on_disk.id(), selectedFeaturesOnly=True),
            "WRITE_HEATMAPS": False,
            "OUTPUT_FOLDER": str(out),
        },
    )
    c, gt = classes(Path(outputs["CLASSES"]))
    assert c.shape[1] * gt[1] == pytest.approx(SQUARE[2] - SQUARE[0], abs=2 * gt[1])  # the square's box
    want = inside(gt, c.shape, SQUARE)
    assert (c[want] != 255).mean() > 0.99 and (c[~want] == 255).all()
    whole = processing.run(
        "satseg:segment_extent",
        {"MODEL": str(color_model), "SOURCE_URL": area2_server.template, "MASK": str(gpkg), "WRITE_HEATMAPS": False,
         "OUTPUT_FOLDER": str(tmp_path / "w")},
    )  # fmt: skip
    c, gt = classes(Path(whole["CLASSES"]))
    want = inside(gt, c.shape, RECT, SQUARE)
    assert (c[want] != 255).mean() > 0.99 and (c[~want] == 255).all()
