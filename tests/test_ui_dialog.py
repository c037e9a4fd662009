"""The "Segment extent" dialog, layer sources, dependency check and export, in offscreen QGIS."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from osgeo import gdal
from qgis.core import QgsProject, QgsRasterLayer
from ui_helpers import make_color_model

from satseg_plugin.inference.errors import SatsegError, SourceError
from satseg_plugin.ui import settings
from satseg_plugin.ui.dependencies import (
    Requirement,
    check_requirements,
    constraints_text,
    pip_command,
    version_tuple,
)
from satseg_plugin.ui.export import export_geotiff
from satseg_plugin.ui.segment_dialog import SegmentDialog
from satseg_plugin.ui.sources import (
    is_supported_layer,
    redacted,
    source_of_layer,
    source_of_url,
    xyz_url_from_source,
)

XYZ_SOURCE = (
    "type=xyz&url=http://127.0.0.1:8123/%7Bz%7D/%7Bx%7D/%7By%7D.png?access_token%3Dabc&zmax=21&zmin=0"
)


def _geotiff(path: Path, data: np.ndarray) -> Path:
    ds = gdal.GetDriverByName("GTiff").Create(str(path), data.shape[1], data.shape[0], 1, gdal.GDT_Byte)
    ds.SetGeoTransform((3628351.0, 0.15, 0, 39097.5, 0, -0.15))
    ds.SetProjection("EPSG:3857")
    band = ds.GetRasterBand(1)
    band.WriteArray(data)
    table = gdal.ColorTable()
    table.SetColorEntry(1, (51, 160, 44, 255))
    band.SetColorTable(table)
    band.SetCategoryNames(["background", "greenery"])
    band = ds = None
    return path


def test_xyz_source_url_is_decoded_and_gdal_raster_gives_its_path(qgis_new_project, tmp_path: Path) -> None:
    assert xyz_url_from_source(XYZ_SOURCE) == "http://127.0.0.1:8123/{z}/{x}/{y}.png?access_token=abc"
    assert xyz_url_from_source("/data/image.tif") is None
    xyz = QgsRasterLayer(XYZ_SOURCE, "tiles", "wms")
    assert is_supported_layer(xyz)
    assert source_of_layer(xyz).tiles_url == "http://127.0.0.1:8123/{z}/{x}/{y}.png?access_token=abc"
    tif = _geotiff(tmp_path / "image.tif", np.ones((8, 8), np.uint8))
    raster = QgsRasterLayer(str(tif), "image", "gdal")
    assert raster.isValid() and source_of_layer(raster).raster_path == str(tif)
    assert source_of_layer(xyz).label == "http://127.0.0.1:8123/{z}/{x}/{y}.png?access_token=***"
    assert (
        redacted("https://a/t/{z}/{x}/{y}?key=k1&fmt=png&api_key=k2")
        == "https://a/t/{z}/{x}/{y}?key=***&fmt=png&api_key=***"
    )
    with pytest.raises(SourceError, match="tile URL"):
        source_of_url("  ")
    with pytest.raises(SourceError, match="not a URL"):
        source_of_url("tiles/{z}/{x}/{y}.png")


def test_dialog_defaults_pick_the_xyz_layer_and_remember_the_model(
    qgis_new_project, clean_settings, tmp_path: Path
) -> None:
    raster = QgsRasterLayer(str(_geotiff(tmp_path / "image.tif", np.ones((8, 8), np.uint8))), "image")
    xyz = QgsRasterLayer(XYZ_SOURCE, "tiles", "wms")
    QgsProject.instance().addMapLayers([raster, xyz])

    dialog = SegmentDialog(QgsProject.instance(), "the visible extent")
    assert dialog.layer_combo.currentLayer() is xyz  # XYZ first: that is what users segment
    assert not dialog.url_edit.isEnabled()
    assert dialog.out_widget.filePath() == settings.default_out_dir()
    assert dialog.model_widget.filePath() == settings.default_model_path()
    choices = dialog.choices()
    assert choices.source.tiles_url.endswith("{y}.png?access_token=abc")
    assert choices.zoom is None and choices.write_classes and choices.write_heatmaps and choices.write_counts

    model = make_color_model(tmp_path / "colors.onnx", zoom=20)
    dialog.model_widget.setFilePath(str(model))
    assert "greenery" in dialog.model_info.text()
    assert dialog.zoom_spin.specialValueText() == "the model's (20)"
    dialog.heatmaps_check.setChecked(False)
    dialog.layer_combo.setLayer(None)
    assert dialog.url_edit.isEnabled()
    dialog.url_edit.setText("http://example.org/{z}/{x}/{y}.png")
    dialog.zoom_spin.setValue(19)
    choices = dialog.choices()
    assert (choices.source.tiles_url, choices.zoom) == ("http://example.org/{z}/{x}/{y}.png", 19)
    dialog.accept()

    again = SegmentDialog(QgsProject.instance())  # a later session reads QgsSettings back
    assert again.model_widget.filePath() == str(model)
    assert not again.heatmaps_check.isChecked() and again.classes_check.isChecked()


def test_dialog_explains_a_model_that_is_not_one(qgis_new_project, clean_settings, tmp_path: Path) -> None:
    bad = tmp_path / "notes.onnx"
    bad.write_text("not a model")
    dialog = SegmentDialog(QgsProject.instance())
    dialog.model_widget.setFilePath(str(bad))
    assert dialog.model_info.text() and "Traceback" not in dialog.model_info.text()
    dialog.model_widget.setFilePath(str(tmp_path / "missing.onnx"))
    assert "does not exist" in dialog.model_info.text()


def test_dependency_check_names_a_missing_module_and_a_too_old_one() -> None:
    reqs = [
        Requirement("satseg_no_such_module_xyz", "satseg-no-such-package", "1.0"),
        Requirement("numpy", "numpy", "99.0"),
        Requirement("json", "json"),
    ]
    problems = check_requirements(reqs)
    assert [p.requirement.module for p in problems] == ["satseg_no_such_module_xyz", "numpy"]
    assert "'satseg-no-such-package' is not installed" in problems[0].message
    assert "needs numpy>=99.0" in problems[1].message
    assert check_requirements() == []  # this Python has everything satseg needs
    assert version_tuple("1.23.2rc1") == (1, 23, 2)


def test_pip_command_installs_into_the_plugin_folder_and_keeps_numpy_below_2(tmp_path: Path) -> None:
    problems = check_requirements([Requirement("satseg_no_such_module_xyz", "onnxruntime", "1.14")])
    cmd = pip_command(problems, tmp_path / "satseg_deps", tmp_path / "c.txt")
    assert cmd[1:4] == ["-m", "pip", "install"]
    assert cmd[cmd.index("--target") + 1] == str(tmp_path / "satseg_deps")
    assert cmd[-1] == "onnxruntime>=1.14"
    assert "numpy<2" in constraints_text().splitlines()


def test_export_geotiff_keeps_classes_and_writes_atomically(tmp_path: Path) -> None:
    data = np.zeros((64, 64), np.uint8)
    data[10:20, 5:50] = 1
    src = _geotiff(tmp_path / "classes.tif", data)
    out = export_geotiff(src, tmp_path / "export" / "mine")  # the extension is added
    assert out == tmp_path / "export" / "mine.tif"
    ds = gdal.Open(str(out))
    band = ds.GetRasterBand(1)
    assert np.array_equal(band.ReadAsArray(), data)
    # GDAL keeps a GeoTIFF's class names in its .aux.xml sidecar: it travels with the export
    assert "<Category>greenery</Category>" in Path(f"{out}.aux.xml").read_text()
    assert band.GetColorTable().GetColorEntry(1)[:3] == (51, 160, 44)
    assert ds.GetGeoTransform() == gdal.Open(str(src)).GetGeoTransform()
    assert sorted(p.name for p in out.parent.iterdir()) == ["mine.tif", "mine.tif.aux.xml"]
    with pytest.raises(SatsegError, match="could not export"):
        export_geotiff(tmp_path / "missing.tif", tmp_path / "x.tif")
    assert not (tmp_path / "x.tif").exists() and not list(tmp_path.glob(".x.*"))
