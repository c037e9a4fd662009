"""Train on this area in offscreen QGIS: the protocol of a real subprocess, the task, dialog, algorithm.

The subprocess is ``tests/fake_learn_area.py`` copied into a temporary checkout as
``training/learn_area.py``: a real process that prints the CLI's protocol lines,
fails, crashes or ignores SIGTERM on request (faults of a process, caused for
real). The real CLI runs end to end in tests/test_gui_learn_area.py.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT
from qgis.core import (
    QgsApplication,
    QgsCoordinateReferenceSystem,
    QgsFeature,
    QgsGeometry,
    QgsProject,
    QgsRasterLayer,
    QgsRectangle,
    QgsSettings,
    QgsVectorLayer,
)
from qgis.gui import QgsMessageBar
from qgis.PyQt.QtWidgets import QMessageBox
from ui_helpers import make_color_model, projects_left_in_cycles, wait_for_task

from satseg_plugin.inference.errors import Cancelled, SatsegError
from satseg_plugin.ui import learn_inputs, learn_runtime, settings
from satseg_plugin.ui.learn_dialog import LearnDialog
from satseg_plugin.ui.learn_flow import LearnController
from satseg_plugin.ui.learn_process import (
    LearnCrashError,
    LearnProgress,
    LearnRequest,
    format_seconds,
    parse_line,
    run_learn,
)
from satseg_plugin.ui.learn_runtime import TrainingRuntime, check_runtime
from satseg_plugin.ui.learn_task import LearnTask
from satseg_plugin.ui.segment_dialog import SegmentDialog

URL = "http://127.0.0.1:9/{z}/{x}/{y}.png"
SETTING_KEYS = (
    learn_runtime.KEY_CHECKOUT,
    learn_runtime.KEY_PYTHON,
    settings.KEY_MODEL_DIRS,
    settings.KEY_MODEL,
    learn_inputs.KEY_CLASSES,
    learn_inputs.KEY_MINUTES,
    learn_inputs.KEY_OUT_DIR,
)


@pytest.fixture()
def clean_settings(qgis_app):
    for key in SETTING_KEYS:
        QgsSettings().remove(key)
    yield
    for key in SETTING_KEYS:
        QgsSettings().remove(key)


@pytest.fixture()
def checkout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A satseg "checkout" whose training/learn_area.py is the fake CLI; its argv lands in argv.json."""
    root = tmp_path / "checkout"
    (root / "training" / "classes").mkdir(parents=True)
    (root / "training" / "__init__.py").write_text("")
    shutil.copy(ROOT / "tests" / "fake_learn_area.py", root / "training" / "learn_area.py")
    shutil.copy(ROOT / "training" / "classes" / "buildings.json", root / "training" / "classes")
    (root / "models").mkdir()
    monkeypatch.setenv("SATSEG_FAKE_ARGV", str(tmp_path / "argv.json"))
    monkeypatch.setenv("SATSEG_FAKE_MODEL", str(make_color_model(tmp_path / "colors.onnx")))
    monkeypatch.setenv("SATSEG_FAKE_MODE", "ok")
    return root


def runtime_of(checkout: Path) -> TrainingRuntime:
    return TrainingRuntime(str(checkout), sys.executable)  # the test venv: it has torch


def request_for(tmp_path: Path, checkout: Path) -> LearnRequest:
    osm = tmp_path / "labels.geojson"
    osm.write_text('{"type": "FeatureCollection", "features": []}')
    return LearnRequest(
        bbox=(39.24, -6.07, 39.25, -6.06),
        bbox_crs="EPSG:4326",
        osm_path=str(osm),
        out_dir=str(tmp_path / "out" / "area"),
        tiles_url=URL,
        classes_path=str(checkout / "training" / "classes" / "buildings.json"),
        minutes=0.5,
    )


def test_protocol_lines_are_parsed_and_described() -> None:
    step, result = parse_line(
        '{"phase": "train", "fraction": 0.5, "message": "m", "epoch": 3, "val_iou": 0.52, "seconds_left": 95}'
    )
    assert result is None
    assert (step.phase, step.fraction, step.epoch, step.val_iou) == ("train", 0.5, 3, 0.52)
    assert step.describe() == "training, epoch 3, val IoU 52.0 %, 1 min 35 s left"
    step, result = parse_line(
        '{"phase": "done", "fraction": 1, "model": "m.onnx", "report": "r.csv", "card": "c.md"}'
    )
    assert step.describe() == "done" and (result.model, result.report, result.card) == (
        "m.onnx",
        "r.csv",
        "c.md",
    )
    assert result.verdict == ""  # a done line from before the verdict
    _, result = parse_line(
        '{"phase": "done", "fraction": 1, "model": "m.onnx", "report": "r.csv", "card": "c.md", '
        '"verdict": "held-out mIoU 61.0 % (base model 55.0 %, +6.0 points)"}'
    )
    assert result.verdict == "held-out mIoU 61.0 % (base model 55.0 %, +6.0 points)"
    assert parse_line('{"phase": "dataset", "fraction": 7}')[0].fraction == 1.0  # clamped
    for noise in ("", "warning: something", "{not json", '{"phase": "dancing"}', "[1, 2]"):
        assert parse_line(noise) is None
    assert LearnProgress("export").describe() == "exporting the model"
    assert format_seconds(8) == "8 s" and format_seconds(3600) == "60 min 00 s"


def test_request_gives_the_documented_command_line(tmp_path: Path) -> None:
    request = LearnRequest(
        bbox=(1.0, 2.0, 3.0, 4.0),
        bbox_crs="EPSG:3857",
        osm_path="a.osm.pbf",
        out_dir="out",
        raster_path="img.tif",
        classes_path="c.json",
        base="m.pt",
        minutes=0.2,
    )
    assert request.args() == [
        "--bbox", "1.0,2.0,3.0,4.0", "--bbox-crs", "EPSG:3857", "--raster", "img.tif", "--osm", "a.osm.pbf",
        "--classes", "c.json", "--base", "m.pt", "--minutes", "0.2", "--out", "out", "--progress-json",
    ]  # fmt: skip
    scratch = LearnRequest((1, 2, 3, 4), "EPSG:4326", "a.geojson", "out", tiles_url=URL)
    assert scratch.args()[scratch.args().index("--base") + 1] == "none"
    with pytest.raises(SatsegError, match="exactly one"):
        LearnRequest((1, 2, 3, 4), "EPSG:4326", "a", "out").args()
    with pytest.raises(SatsegError, match="empty"):
        LearnRequest((3, 2, 1, 4), "EPSG:4326", "a", "out", tiles_url=URL).args()


def test_run_learn_reads_a_real_process_to_its_done_line(checkout: Path, tmp_path: Path) -> None:
    steps: list[LearnProgress] = []
    logged: list[str] = []
    request = request_for(tmp_path, checkout)
    result = run_learn(runtime_of(checkout), request, progress=steps.append, log=logged.append)
    assert [s.phase for s in steps] == ["dataset", "train", "train", "export", "score", "done"]
    assert steps[2].epoch == 2 and steps[2].val_iou == pytest.approx(0.563)
    assert Path(result.model) == Path(request.out_dir) / "area.onnx" and Path(result.report).is_file()
    assert "a library's warning printed on stdout" in logged
    assert json.loads((tmp_path / "argv.json").read_text()) == request.args()


def test_user_errors_and_crashes_of_the_process(checkout: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("SATSEG_FAKE_MODE", "error")
    with pytest.raises(SatsegError, match=r"^no OpenStreetMap feature of any class in the extent$"):
        run_learn(runtime_of(checkout), request_for(tmp_path, checkout))
    monkeypatch.setenv("SATSEG_FAKE_MODE", "crash")
    with pytest.raises(LearnCrashError, match="exit status 1") as info:
        run_learn(runtime_of(checkout), request_for(tmp_path, checkout))
    assert "RuntimeError: a bug in the training code" in info.value.details
    with pytest.raises(SatsegError, match="cannot start the training Python"):
        run_learn(
            TrainingRuntime(str(checkout), str(tmp_path / "no-python")), request_for(tmp_path, checkout)
        )


@pytest.mark.parametrize("mode", ["slow", "stubborn"])
def test_cancel_sends_sigterm_and_kills_a_process_that_ignores_it(
    checkout: Path, tmp_path: Path, monkeypatch, mode: str
) -> None:
    monkeypatch.setenv("SATSEG_FAKE_MODE", mode)
    request = request_for(tmp_path, checkout)
    steps: list[LearnProgress] = []
    logged: list[str] = []
    with pytest.raises(Cancelled):
        run_learn(
            runtime_of(checkout),
            request,
            progress=steps.append,
            is_cancelled=lambda: bool(steps),
            log=logged.append,
            grace=2,
        )
    assert [s.phase for s in steps] == ["dataset"]
    if mode == "slow":  # the CLI cleaned up on SIGTERM
        assert "stopped cleanly" in logged and not Path(request.out_dir).exists()
    else:  # killed after the grace period: nothing said
        assert "stopped cleanly" not in logged


def test_runtime_check_says_what_is_missing(checkout: Path, tmp_path: Path) -> None:
    assert "no satseg checkout is set" in check_runtime(TrainingRuntime("", sys.executable)).message
    assert "is not a satseg checkout" in check_runtime(TrainingRuntime(str(tmp_path), sys.executable)).message
    missing = check_runtime(TrainingRuntime(str(checkout), str(tmp_path / "python")))
    assert "does not exist" in missing.message
    assert check_runtime(runtime_of(checkout)).ok
    none_set = check_runtime(TrainingRuntime(str(checkout), ""))
    assert not none_set.ok and not none_set.error
    assert "'torch' is not installed in the training Python" in none_set.message


def test_a_python_without_torch_gets_the_offer_to_create_one(
    qgis_iface, checkout: Path, tmp_path: Path, monkeypatch
) -> None:
    bare = tmp_path / "bare"
    import venv

    venv.create(bare, system_site_packages=True, with_pip=False)  # a real Python that lacks torch
    check = check_runtime(TrainingRuntime(str(checkout), str(learn_runtime.venv_python(bare))))
    assert not check.ok and not check.error
    assert any(p.requirement.package == "torch" for p in check.problems)
    asked: list[str] = []
    monkeypatch.setattr(
        QMessageBox, "question", lambda parent, title, text, *a: asked.append(text) or QMessageBox.No
    )
    assert learn_runtime.offer_training_python(qgis_iface, check) is False
    assert len(asked) == 1 and "'torch' is not installed in the training Python" in asked[0]
    assert learn_runtime.VENV_DIR_NAME in asked[0] and "torch>=2.0" in asked[0]
    commands = learn_runtime.create_venv_commands(tmp_path / "v", check.problems, tmp_path / "c.txt")
    assert commands[0][1:] == ["-m", "venv", "--system-site-packages", str(tmp_path / "v")]
    assert commands[1][0] == str(learn_runtime.venv_python(tmp_path / "v")) and "--target" not in commands[1]
    assert "torch>=2.0" in commands[1] and "--constraint" in commands[1]


def _polygons(crs: str = "EPSG:3857") -> QgsVectorLayer:
    layer = QgsVectorLayer(f"Polygon?crs={crs}&field=building:string", "traced", "memory")
    feats = []
    for x0, y0 in ((4368000.0, -676000.0), (4368200.0, -676300.0)):
        f = QgsFeature(layer.fields())
        f.setGeometry(QgsGeometry.fromRect(QgsRectangle(x0, y0, x0 + 50, y0 + 40)))
        f.setAttributes(["yes"])
        feats.append(f)
    layer.dataProvider().addFeatures(feats)
    layer.updateExtents()
    return layer


def test_polygons_extent_and_a_layer_written_as_4326_geojson(qgis_new_project, tmp_path: Path) -> None:
    layer = _polygons()
    QgsProject.instance().addMapLayer(layer)
    everything = learn_inputs.polygons_extent(layer, selected_only=False)
    assert (everything.xMinimum(), everything.yMaximum()) == (4368000.0, -675960.0)
    with pytest.raises(SatsegError, match="is selected"):
        learn_inputs.polygons_extent(layer, selected_only=True)
    layer.selectByIds([next(layer.getFeatures()).id()])
    one = learn_inputs.polygons_extent(layer, selected_only=True)
    assert (one.width(), one.height()) == (50.0, 40.0)
    path = learn_inputs.layer_to_geojson(layer, tmp_path)
    data = json.loads(path.read_text())
    assert len(data["features"]) == 2 and data["features"][0]["properties"] == {"building": "yes"}
    lon, lat = data["features"][0]["geometry"]["coordinates"][0][0]
    assert 39.2 < lon < 39.3 and -6.1 < lat < -6.0  # Zanzibar, in degrees
    empty = QgsVectorLayer("Polygon?crs=EPSG:4326", "empty", "memory")
    with pytest.raises(SatsegError, match="no features"):
        learn_inputs.layer_to_geojson(empty)


def test_dialog_defaults_and_choices(
    qgis_iface, qgis_new_project, clean_settings, checkout: Path, tmp_path
) -> None:
    QgsSettings().setValue(learn_runtime.KEY_CHECKOUT, str(checkout))
    (checkout / "models" / "satseg-landcover.pt").write_bytes(b"")
    imagery = QgsRasterLayer(
        "type=xyz&url=http://127.0.0.1:9/%7Bz%7D/%7Bx%7D/%7By%7D.png&zmax=21&zmin=0", "imagery", "wms"
    )
    traced = _polygons()
    QgsProject.instance().addMapLayers([imagery, traced])
    dialog = LearnDialog(QgsProject.instance(), "1 x 1 in EPSG:3857")
    assert dialog.checkout_widget.filePath() == str(checkout)
    assert dialog.python_widget.filePath() in ("", learn_runtime.default_python(str(checkout)))
    assert dialog.classes_widget.filePath() == str(checkout / "training" / "classes" / "buildings.json")
    assert dialog.base_widget.filePath() == str(checkout / "models" / "satseg-landcover.pt")
    assert dialog.extent_canvas.isChecked() and dialog.osm_layer_radio.isChecked()
    assert dialog.layer_combo.currentLayer() is imagery
    dialog.python_widget.setFilePath(sys.executable)
    dialog.minutes_spin.setValue(0.2)
    choices = dialog.choices()
    assert choices.polygons is None and choices.osm_layer is traced and choices.osm_file is None
    assert choices.source.tiles_url == "http://127.0.0.1:9/{z}/{x}/{y}.png"
    assert choices.minutes == pytest.approx(0.2) and choices.runtime == runtime_of(checkout)
    dialog.extent_polygons.setChecked(True)
    dialog.polygon_combo.setLayer(traced)
    dialog.osm_file_radio.setChecked(True)
    dialog.osm_file.setFilePath(str(tmp_path / "x.osm.pbf"))
    choices = dialog.choices()
    assert choices.polygons is traced and choices.osm_file == str(tmp_path / "x.osm.pbf")
    dialog.accept()
    assert learn_runtime.configured_runtime() == runtime_of(checkout)
    assert learn_inputs.remembered_minutes() == pytest.approx(0.2)


def test_a_dropped_dialog_leaves_the_project_out_of_reference_cycles(
    qgis_iface, qgis_new_project, clean_settings, checkout: Path
) -> None:
    QgsSettings().setValue(learn_runtime.KEY_CHECKOUT, str(checkout))

    def open_and_drop() -> None:
        dialog = LearnDialog(QgsProject.instance(), "1 x 1 in EPSG:3857")
        dialog.osm_file.setFilePath("x.osm.pbf")  # its slots run once
        assert dialog.osm_file_radio.isChecked()

    assert projects_left_in_cycles(open_and_drop) == 0


def test_task_shows_progress_then_the_table_lists_the_model_and_offers_to_segment(
    qgis_iface, qgis_new_project, clean_settings, checkout: Path, tmp_path: Path
) -> None:
    bar = QgsMessageBar()
    opened: list[str] = []
    request = request_for(tmp_path, checkout)
    temp = tmp_path / "osm-temp"
    temp.mkdir()
    task = LearnTask(runtime_of(checkout), request, bar, segment_with=opened.append, cleanup=[str(temp)])
    progress: list[float] = []
    task.progressChanged.connect(progress.append)
    layers_before = len(QgsProject.instance().mapLayers())
    QgsApplication.taskManager().addTask(task)
    wait_for_task(task)
    assert (task.outcome, task.error, task.bug) == ("done", None, None)
    assert "training, epoch 2, val IoU 56.3 %, 8 s left" in [s.describe() for s in task.steps]
    assert progress and max(progress) == pytest.approx(100.0)
    assert not temp.exists()
    model = Path(request.out_dir) / "area.onnx"
    assert str(model.resolve()) in settings.known_models()
    table = task.report_dialog.table
    assert [table.horizontalHeaderItem(c).text() for c in range(table.columnCount())] == [
        "class", "iou_before", "iou_after"
    ]  # fmt: skip
    assert [table.item(1, c).text() for c in range(3)] == ["building", "0.3125", "0.625"]
    verdict = task.report_dialog.verdict.text()  # the done line's summary, above the table
    assert verdict == "<b>Held-out mIoU 76.2 %, below the base model's 80.0 %: the base does better.</b>"
    end = time.monotonic() + 10
    while task.segment_button is None and time.monotonic() < end:  # pushed after QGIS's own message
        QgsApplication.processEvents()
        time.sleep(0.02)
    task.segment_button.click()
    assert opened == [str(model)]
    assert len(QgsProject.instance().mapLayers()) == layers_before
    segment = SegmentDialog(QgsProject.instance(), model_path=str(model))
    assert segment.model_widget.filePath() == str(model)
    assert segment.models_combo.currentData() == str(model.resolve())
    task.report_dialog.close()


def test_cancelled_task_adds_nothing_and_says_so(
    qgis_iface, qgis_new_project, clean_settings, checkout: Path, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setenv("SATSEG_FAKE_MODE", "slow")
    bar = qgis_iface.messageBar()
    for level in bar.messages:
        bar.messages[level].clear()
    request = request_for(tmp_path, checkout)
    task = LearnTask(runtime_of(checkout), request, bar, segment_with=lambda m: None, grace=5)
    task.progressChanged.connect(lambda _p: task.cancel())
    QgsApplication.taskManager().addTask(task)
    wait_for_task(task, timeout=60)
    assert task.outcome == "cancelled" and task.report_dialog is None
    assert not Path(request.out_dir).exists() and QgsProject.instance().mapLayers() == {}
    assert any("cancelled; nothing was added" in m for m in bar.messages[0]), bar.messages
    assert settings.known_models() == [
        str(p.resolve()) for d in settings.bundled_models_dirs() for p in sorted(d.glob("*.onnx"))
    ]


def test_controller_writes_the_osm_layer_and_starts_the_task(
    qgis_iface, qgis_new_project, clean_settings, checkout: Path, tmp_path: Path
) -> None:
    traced = _polygons()
    imagery = QgsRasterLayer(
        "type=xyz&url=http://127.0.0.1:9/%7Bz%7D/%7Bx%7D/%7By%7D.png&zmax=21&zmin=0", "imagery", "wms"
    )
    QgsProject.instance().addMapLayers([imagery, traced])
    QgsSettings().setValue(learn_runtime.KEY_CHECKOUT, str(checkout))
    QgsSettings().setValue(learn_runtime.KEY_PYTHON, sys.executable)
    QgsSettings().setValue(learn_inputs.KEY_OUT_DIR, str(tmp_path / "learn"))
    canvas = qgis_iface.mapCanvas()
    canvas.setDestinationCrs(QgsCoordinateReferenceSystem("EPSG:3857"))
    controller = LearnController(qgis_iface)
    dialog = controller.open_dialog()
    dialog.extent_polygons.setChecked(True)
    dialog.polygon_combo.setLayer(traced)
    dialog.selected_check.setChecked(False)
    task = controller.start(dialog.choices())
    assert task is not None
    wait_for_task(task)
    assert task.outcome == "done", (task.error, task.bug)
    argv = json.loads((tmp_path / "argv.json").read_text())
    opts = dict(zip(argv[::2], argv[1::2], strict=False))
    assert opts["--bbox"] == "4368000.0,-676300.0,4368250.0,-675960.0" and opts["--bbox-crs"] == "EPSG:3857"
    assert opts["--tiles"] == "http://127.0.0.1:9/{z}/{x}/{y}.png" and opts["--base"] == "none"
    assert opts["--osm"].endswith("osm.geojson") and not Path(opts["--osm"]).exists()  # removed after the run
    assert Path(opts["--out"]).parent == tmp_path / "learn"
    task.report_dialog.close()


def test_processing_algorithm_runs_the_cli_with_polygons_and_an_osm_layer(
    qgis_processing, qgis_new_project, clean_settings, checkout: Path, tmp_path: Path
) -> None:
    from satseg_plugin.ui.processing_provider import register_provider

    register_provider()
    import processing

    traced = _polygons()
    QgsProject.instance().addMapLayer(traced)
    out = tmp_path / "processing-out"
    outputs = processing.run(
        "satseg:learn_area",
        {
            "POLYGONS": traced,
            "SOURCE_URL": URL,
            "OSM_LAYER": traced,
            "CLASSES": str(checkout / "training" / "classes" / "buildings.json"),
            "MINUTES": 0.2,
            "CHECKOUT": str(checkout),
            "PYTHON": sys.executable,
            "OUTPUT_FOLDER": str(out),
        },
    )
    assert Path(outputs["MODEL"]) == out / "area.onnx" and Path(outputs["REPORT"]).is_file()
    argv = json.loads((tmp_path / "argv.json").read_text())
    opts = dict(zip(argv[::2], argv[1::2], strict=False))
    assert opts["--bbox"] == "4368000.0,-676300.0,4368250.0,-675960.0" and opts["--minutes"] == "0.2"
    assert str((out).resolve()) in [str(d) for d in settings.model_dirs()]
    from qgis.core import QgsProcessingException

    with pytest.raises(QgsProcessingException, match="give the extent, or polygons"):
        processing.run(
            "satseg:learn_area",
            {"SOURCE_URL": URL, "OSM_FILE": str(tmp_path / "argv.json"), "CHECKOUT": str(checkout),
             "PYTHON": sys.executable, "OUTPUT_FOLDER": str(out)},
        )  # fmt: skip
    with pytest.raises(QgsProcessingException, match="not a satseg checkout"):
        processing.run(
            "satseg:learn_area",
            {"POLYGONS": traced, "SOURCE_URL": URL, "OSM_LAYER": traced, "CHECKOUT": str(tmp_path),
             "PYTHON": sys.executable, "OUTPUT_FOLDER": str(out)},
        )  # fmt: skip
