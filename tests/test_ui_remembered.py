"""The Segment extent dialog remembers its newer choices between openings, as it does model and folder.

Polygons, minimum region, simplification, the processing area (and its
selected-only switch) and the band mapping, the last per model.
"""

from __future__ import annotations

from pathlib import Path

from inference_helpers import write_utm_raster
from qgis.core import QgsProject, QgsRasterLayer, QgsVectorLayer
from test_bands import make_4band_model, rgbn

from satseg_plugin.ui import settings
from satseg_plugin.ui.segment_dialog import SegmentDialog


def _project_layers(tmp_path: Path) -> tuple[QgsRasterLayer, QgsVectorLayer]:
    raster = QgsRasterLayer(str(write_utm_raster(tmp_path / "rgbn.tif", rgbn())), "rgbn")
    area = QgsVectorLayer("Polygon?crs=EPSG:32632", "fields", "memory")
    QgsProject.instance().addMapLayers([raster, area])
    return raster, area


def test_dialog_remembers_polygons_cleaning_area_and_bands(
    qgis_new_project, clean_settings, color_model: Path, tmp_path: Path
) -> None:
    raster, area = _project_layers(tmp_path)
    model = str(make_4band_model(tmp_path / "m4.onnx"))
    first = SegmentDialog(QgsProject.instance(), "extent", model_path=model)
    first.layer_combo.setLayer(raster)
    fresh = first.choices()  # nothing remembered yet: the defaults
    assert not fresh.write_vectors and fresh.min_area_m2 is None and fresh.simplify_m is None
    assert fresh.area_layer_id is None and fresh.selected_only and fresh.bands is None
    first.vectors_check.setChecked(True)
    first.min_area_spin.setValue(20)
    first.simplify_spin.setValue(0.5)
    first.area_combo.setLayer(area)
    first.selected_check.setChecked(False)
    first.bands_edit.setText("4,1,2,3")
    first.accept()

    again = SegmentDialog(QgsProject.instance(), "extent", model_path=model)
    again.layer_combo.setLayer(raster)
    chosen = again.choices()
    assert (chosen.write_vectors, chosen.min_area_m2, chosen.simplify_m) == (True, 20.0, 0.5)
    assert (chosen.area_layer_id, chosen.selected_only, chosen.bands) == (area.id(), False, (4, 1, 2, 3))
    assert again.simplify_spin.isEnabled()  # polygons on: their simplification is offered
    # The mapping is the 4-band model's: another model starts from its own default, and back again.
    again.model_widget.setFilePath(str(color_model))
    assert again.bands_edit.text() == ""
    again.model_widget.setFilePath(model)
    assert again.bands_edit.text() == "4,1,2,3"

    # Turning things off is remembered too, and an area layer gone from the project leaves the extent.
    again.vectors_check.setChecked(False)
    again.min_area_spin.setValue(again.min_area_spin.minimum())
    again.bands_edit.setText("")
    again.accept()
    QgsProject.instance().removeMapLayer(area.id())
    third = SegmentDialog(QgsProject.instance(), "extent", model_path=model)
    third.layer_combo.setLayer(raster)
    chosen = third.choices()
    assert (chosen.write_vectors, chosen.min_area_m2, chosen.simplify_m, chosen.bands) == (
        False,
        None,
        None,
        None,
    )
    assert chosen.area_layer_id is None and not chosen.selected_only
    assert settings.remembered_cleaning().area_layer_id is not None  # kept: the layer may come back


def test_remembered_values_survive_odd_settings(qgis_new_project, clean_settings) -> None:
    from qgis.core import QgsSettings

    QgsSettings().setValue(settings.KEY_MIN_AREA, "not a number")
    QgsSettings().setValue(settings.KEY_BANDS, "[1, 2]")  # not the JSON object it writes
    assert settings.remembered_cleaning().min_area_m2 is None
    assert settings.remembered_bands("/any/model.onnx") == ""
    dialog = SegmentDialog(QgsProject.instance(), "extent")
    assert dialog.min_area_spin.value() == dialog.min_area_spin.minimum()  # "keep every region"
