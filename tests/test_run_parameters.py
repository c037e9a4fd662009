"""One parameter spec for a segment run (inference/params.py): the CLI, Processing and the dialog agree."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import pytest
from inference_helpers import cli
from qgis.core import QgsProcessingException, QgsProcessingParameterNumber, QgsProject
from tileserver import TileServer
from ui_helpers import tiles_rect_3857

from satseg_plugin.inference.__main__ import build_parser
from satseg_plugin.inference.errors import ParameterError
from satseg_plugin.inference.params import (
    CLI,
    DIALOG,
    PARAMETERS,
    PROCESSING,
    SEGMENT_PARAMETERS,
    check_values,
    offered,
)
from satseg_plugin.inference.segment import SegmentRequest
from satseg_plugin.ui.processing_provider import register_provider
from satseg_plugin.ui.segment_algorithm import SegmentExtentAlgorithm
from satseg_plugin.ui.segment_dialog import SegmentChoices, SegmentDialog
from satseg_plugin.ui.segment_flow import SegmentController
from satseg_plugin.ui.sources import ImagerySource

RECT = tiles_rect_3857(619225.25, 523265.25, 619226.75, 523266.75, 20)
EXTENT = f"{RECT[0]},{RECT[2]},{RECT[1]},{RECT[3]} [EPSG:3857]"
OVERLAP_100 = "overlap must be in [0, 100), not 100"


def _segment_parser() -> argparse.ArgumentParser:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["segment"]


def test_the_request_defaults_are_the_specs() -> None:
    fields = {f.name: f.default for f in dataclasses.fields(SegmentRequest)}
    assert {p.name: fields[p.name] for p in SEGMENT_PARAMETERS} == {
        p.name: p.default for p in SEGMENT_PARAMETERS
    }


def test_the_cli_offers_the_specs_parameters() -> None:
    actions = {a.dest: a for a in _segment_parser()._actions}
    for p in offered(CLI):
        action = actions[p.name]
        assert action.option_strings == [p.flag] and action.default == p.default, p.name
        if p.kind is not bool:
            assert action.type is p.kind and p.range_text() in action.help, p.name
    assert set(PARAMETERS) - {p.name for p in offered(CLI)} == set()  # the CLI has every one


def test_processing_offers_the_specs_parameters(qgis_processing) -> None:
    alg = SegmentExtentAlgorithm()
    alg.initAlgorithm()
    for p in SEGMENT_PARAMETERS:
        definition = alg.parameterDefinition(p.key)
        assert (definition is not None) == (PROCESSING in p.where), p.name
        if definition is None:
            continue
        assert definition.defaultValue() == p.default and definition.help() == p.help, p.name
        assert bool(definition.flags() & definition.FlagOptional) == p.optional, p.name
        if p.kind is not bool:
            assert isinstance(definition, QgsProcessingParameterNumber)
            integer = definition.dataType() == QgsProcessingParameterNumber.Integer
            assert integer == (p.kind is int), p.name
            assert definition.minimum() == p.minimum, p.name
            if p.maximum is not None:
                assert definition.maximum() == p.maximum, p.name


def test_the_dialog_offers_the_specs_parameters(qgis_new_project, clean_settings) -> None:
    dialog = SegmentDialog(QgsProject.instance())
    dialog.layer_combo.setLayer(None)  # a tile URL: the zoom applies
    dialog.url_edit.setText("http://example.org/{z}/{x}/{y}.png")
    assert dialog.choices().run_values() == {p.name: p.default for p in offered(DIALOG)}
    spins = {
        "zoom": dialog.zoom_spin,
        "overlap_percent": dialog.overlap_spin,
        "min_area_m2": dialog.min_area_spin,
        "simplify_m": dialog.simplify_spin,
    }
    assert {p.name for p in offered(DIALOG) if p.kind is not bool} == set(spins)
    for name, spin in spins.items():
        p = PARAMETERS[name]
        lo, hi = p.widget_range()
        step = 1 if p.kind is int else 10.0**-p.decimals
        below = step if p.off is None else 0  # the special value "the model's" sits below the range
        assert spin.minimum() == pytest.approx(lo - below), name
        assert spin.maximum() == pytest.approx(1e9 if hi is None else hi), name
        assert spin.specialValueText().startswith(p.unset) and p.help[1:] in spin.toolTip(), name
    dialog.zoom_spin.setValue(0)  # zoom 0 is a zoom, not "the model's"
    dialog.overlap_spin.setValue(99)
    assert (dialog.choices().zoom, dialog.choices().overlap_percent) == (0, 99.0)


def test_ranges() -> None:
    assert check_values({"zoom": 24, "overlap_percent": 0})["zoom"] == 24
    for values, message in (
        ({"zoom": 25}, "zoom must be between 0 and 24, not 25"),
        ({"zoom": -1}, "zoom must be between 0 and 24, not -1"),
        ({"overlap_percent": 100.0}, OVERLAP_100),
        ({"overlap_percent": float("nan")}, "overlap must be in [0, 100), not nan"),
        ({"batch_size": 0}, "batch size must be between 1 and 1024, not 0"),
        ({"batch_size": 2.5}, "batch size must be between 1 and 1024, not 2.5"),
        ({"min_area_m2": -1.0}, "minimum region area (m²) must be 0 or more, not -1"),
        ({"simplify_m": 1.0}, "simplification applies to the polygons"),
    ):
        with pytest.raises(ParameterError) as err:
            check_values(values)
        assert str(err.value).startswith(message), values
    with pytest.raises(ParameterError, match="a zoom applies to tile sources"):
        check_values({"zoom": 18}, raster=True)


def test_one_bad_value_is_refused_by_all_three_with_one_message(
    qgis_iface, qgis_new_project, qgis_processing, color_model: Path, area2_server: TileServer, tmp_path: Path
) -> None:
    # CLI
    bbox = ",".join(f"{v:.3f}" for v in RECT)
    common = ("segment", "--model", color_model, "--bbox", bbox, "--bbox-crs", "EPSG:3857")
    done = cli(*common, "--tiles", area2_server.template, "--out", tmp_path / "c", "--overlap", "100")
    assert done.returncode == 2 and done.stderr.strip() == f"error: {OVERLAP_100}", done.stderr
    assert not (tmp_path / "c").exists()
    # a zoom for a raster is refused, not silently ignored
    raster = cli(*common, "--raster", tmp_path / "any.tif", "--zoom", "18", "--out", tmp_path / "r")
    assert raster.returncode == 2 and "a zoom applies to tile sources" in raster.stderr, raster.stderr

    # Processing
    register_provider()
    import processing

    with pytest.raises(QgsProcessingException) as err:
        processing.run(
            "satseg:segment_extent",
            {
                "MODEL": str(color_model),
                "SOURCE_URL": area2_server.template,
                "EXTENT": EXTENT,
                "OVERLAP": 100,
                "OUTPUT_FOLDER": str(tmp_path / "p"),
            },
        )
    assert str(err.value).splitlines()[-1] == OVERLAP_100
    assert not (tmp_path / "p").exists()

    # the dialog's run (its spin box stops at 99: a value from elsewhere, a script, is still checked)
    bar = qgis_iface.messageBar()
    for level in bar.messages:
        bar.messages[level].clear()
    choices = SegmentChoices(
        str(color_model), ImagerySource(tiles_url=area2_server.template), None, str(tmp_path / "d"),
        True, True, True, overlap_percent=100.0,
    )  # fmt: skip
    assert SegmentController(qgis_iface).start(choices) is None
    assert [m for ms in bar.messages.values() for m in ms] == [f"satseg:{OVERLAP_100}"]
    assert not (tmp_path / "d").exists()


def test_default_batch_holds_a_fixed_number_of_pixels() -> None:
    from satseg_plugin.inference.params import batch_for

    # 262,144 pixels: four 256-px windows, two of 320 px (204,800), one of 512 px, and never none.
    assert [batch_for(s) for s in (256, 320, 448, 512, 1024)] == [4, 2, 1, 1, 1]
    assert batch_for(512, 3) == 3  # --batch-size sets a count
