"""The Processing algorithm satseg:segment_extent: processing.run and the qgis_process CLI."""

from __future__ import annotations

import csv
import json
import os
import shutil
import site
import subprocess
from pathlib import Path

import pytest
from conftest import ROOT
from osgeo import gdal
from qgis.core import QgsProcessingException, QgsProcessingFeedback, QgsProject, QgsRasterLayer
from tileserver import TileServer
from ui_helpers import CLASS_NAMES, tiles_rect_3857, xyz_source

from satseg_plugin.ui.processing_provider import register_provider

RECT = tiles_rect_3857(619225.25, 523265.25, 619226.75, 523266.75, 20)
EXTENT = f"{RECT[0]},{RECT[2]},{RECT[1]},{RECT[3]} [EPSG:3857]"  # xmin,xmax,ymin,ymax as Processing wants


@pytest.fixture(scope="module")
def processing(qgis_processing):
    register_provider()
    import processing

    return processing


def _check_outputs(outputs: dict, out: Path) -> None:
    assert Path(outputs["CLASSES"]) == out / "classes.tif"
    assert gdal.Open(outputs["CLASSES"]).RasterCount == 1
    assert Path(outputs["HEATMAPS"]) == out
    assert sorted(p.name for p in out.glob("heatmap_*.tif")) == sorted(
        f"heatmap_{n.replace(' ', '_')}.tif" for n in CLASS_NAMES
    )
    with open(outputs["COUNTS"], newline="") as f:
        assert [r["class"] for r in csv.DictReader(f)] == CLASS_NAMES
    assert int(outputs["TILES"]) >= 4 and int(outputs["TILES_FAILED"]) == 0


def test_processing_run_with_a_url(
    processing, color_model: Path, area2_server: TileServer, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    outputs = processing.run(
        "satseg:segment_extent",
        {
            "MODEL": str(color_model),
            "SOURCE_URL": area2_server.template,
            "EXTENT": EXTENT,
            "OUTPUT_FOLDER": str(out),
        },
    )
    _check_outputs(outputs, out)


def test_processing_run_with_an_xyz_layer_and_a_4326_extent(
    processing, qgis_new_project, color_model: Path, area2_server: TileServer, tmp_path: Path
) -> None:
    layer = QgsRasterLayer(xyz_source(area2_server.template), "area2", "wms")
    assert layer.isValid()
    QgsProject.instance().addMapLayer(layer)
    out = tmp_path / "out"
    (lon0, lat0), (lon1, lat1) = _to_4326(RECT)
    outputs = processing.run(
        "satseg:segment_extent",
        {
            "MODEL": str(color_model),
            "SOURCE_LAYER": layer,
            "EXTENT": f"{lon0},{lon1},{lat0},{lat1} [EPSG:4326]",
            "WRITE_HEATMAPS": False,
            "OUTPUT_FOLDER": str(out),
        },
    )
    assert Path(outputs["CLASSES"]).is_file() and outputs["HEATMAPS"] is None
    assert not list(out.glob("heatmap_*"))


def _to_4326(rect: tuple[float, float, float, float]) -> tuple[tuple[float, float], tuple[float, float]]:
    import mercantile

    return mercantile.lnglat(rect[0], rect[1]), mercantile.lnglat(rect[2], rect[3])


def test_processing_reports_a_bad_model_as_an_error(
    processing, area2_server: TileServer, tmp_path: Path
) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_text("nope")
    with pytest.raises(QgsProcessingException) as info:
        processing.run(
            "satseg:segment_extent",
            {
                "MODEL": str(bad),
                "SOURCE_URL": area2_server.template,
                "EXTENT": EXTENT,
                "OUTPUT_FOLDER": str(tmp_path / "o"),
            },
        )
    assert "not found" not in str(info.value) and "Traceback" not in str(info.value)
    assert "bad.onnx" in str(info.value) or "model" in str(info.value)


def test_processing_says_what_is_known_of_an_int8_copy_it_is_given(
    processing, color_model: Path, area2_server: TileServer, tmp_path: Path
) -> None:
    shutil.copyfile(color_model, tmp_path / "colors.onnx")
    int8 = tmp_path / "colors-int8.onnx"
    shutil.copyfile(color_model, int8)  # the same graph: the note is this test's subject, not int8 itself
    infos: list[str] = []

    class Feedback(QgsProcessingFeedback):
        def pushInfo(self, info: str) -> None:  # noqa: N802 - Qt's name
            infos.append(info)
            super().pushInfo(info)

    processing.run(
        "satseg:segment_extent",
        {"MODEL": str(int8), "SOURCE_URL": area2_server.template, "EXTENT": EXTENT,
         "WRITE_HEATMAPS": False, "OUTPUT_FOLDER": str(tmp_path / "out")},
        feedback=Feedback(),
    )  # fmt: skip
    assert any(
        i.startswith(
            "int8: colors-int8.onnx is an int8 copy whose speed against colors.onnx was not measured"
        )
        for i in infos
    ), infos


def qgis_process_exe() -> str | None:
    # Debian's qgis_process wrapper passes QGIS_OPTS (--noversioncheck) that qgis_process refuses
    return shutil.which("qgis_process.bin") or shutil.which("qgis_process")


@pytest.mark.skipif(qgis_process_exe() is None, reason="qgis_process is not installed")
def test_qgis_process_cli_runs_the_algorithm(
    color_model: Path, area2_server: TileServer, tmp_path: Path
) -> None:
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "satseg_plugin").symlink_to(ROOT / "satseg_plugin")
    home = tmp_path / "home"
    ini = home / ".local/share/QGIS/QGIS3/profiles/default/QGIS/QGIS3.ini"
    ini.parent.mkdir(parents=True)
    ini.write_text("[PythonPlugins]\nsatseg_plugin=true\n")
    env = dict(
        os.environ,
        HOME=str(home),
        QGIS_PLUGINPATH=str(plugins),
        QT_QPA_PLATFORM="offscreen",
        # QGIS's Python is the system one; the test venv adds onnxruntime and mercantile
        PYTHONPATH=os.pathsep.join([*site.getsitepackages(), str(ROOT)]),
    )
    env.pop("QGIS_CUSTOM_CONFIG_PATH", None)  # pytest-qgis's; qgis_process must read the profile under HOME
    out = tmp_path / "out"
    cmd = [
        qgis_process_exe(),
        "--json",
        "run",
        "satseg:segment_extent",
        f"--MODEL={color_model}",
        f"--SOURCE_URL={area2_server.template}",
        f"--EXTENT={EXTENT}",
        "--WRITE_HEATMAPS=false",
        f"--OUTPUT_FOLDER={out}",
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    results = json.loads(proc.stdout[proc.stdout.index("{") :])["results"]
    assert Path(results["CLASSES"]) == out / "classes.tif" and Path(results["COUNTS"]).is_file()
    assert not list(out.glob("heatmap_*"))
