"""int8 is offered only where it was measured faster on this machine, and the dialog says by how much.

The decision is checked by value on injected timings; one small real measurement checks that
it gives positive figures (no timed assertion: the machine's speed is not this test's subject).
"""

from __future__ import annotations

import json
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import onnxruntime as ort
import pytest
from conftest import ROOT
from inference_helpers import cli
from qgis.core import QgsProject
from ui_helpers import make_color_model, wait_for_task

from satseg_plugin.inference import int8speed
from satseg_plugin.inference.errors import ModelError
from satseg_plugin.inference.int8speed import (
    MIN_SPEEDUP,
    Int8Speed,
    cached_int8_speed,
    decide,
    int8_note,
    int8_twin,
    lookup_int8_speed,
    measure_and_cache,
    measure_int8_speed,
)
from satseg_plugin.ui import int8_offer
from satseg_plugin.ui.segment_dialog import SegmentDialog


def test_the_decision_is_the_median_round_ratio_against_the_threshold() -> None:
    faster = decide([1.0, 1.2, 0.9], [0.8, 1.0, 1.0], windows=2)  # rounds: 1.25, 1.2, 0.9
    assert (faster.ratio, faster.fp32_s, faster.int8_s, faster.rounds) == (pytest.approx(1.2), 0.5, 0.5, 3)
    assert faster.offered and faster.text() == "int8: 1.20x faster on this CPU"
    slower = decide([0.93, 0.93], [1.0, 1.0], windows=1)
    assert not slower.offered and slower.text() == "int8 not offered: 0.93x on this CPU"
    noise = decide([1.03], [1.0], windows=1)
    assert not noise.offered and "1.03x on this CPU (below 1.05x" in noise.text()
    assert decide([MIN_SPEEDUP], [1.0], windows=1).offered
    # one slow round (another process) moves the median, not the decision; a ratio of totals would flip
    assert decide([1.0, 1.0, 9.0], [0.9, 0.9, 20.0], windows=1).offered
    for bad in (([], []), ([1.0], [1.0, 1.0]), ([0.0], [1.0])):
        with pytest.raises(ValueError):
            decide(*bad, windows=1)


def _pair(folder: Path, name: str = "colors") -> tuple[Path, Path]:
    fp32 = make_color_model(folder / f"{name}.onnx")
    int8 = folder / f"{name}-int8.onnx"
    shutil.copyfile(fp32, int8)  # the same graph: what matters here is that both load and run
    return fp32, int8


def test_measurement_interleaves_the_models_and_a_real_run_gives_positive_figures(tmp_path: Path) -> None:
    fp32, int8 = _pair(tmp_path)
    # fp32 takes 2 s and int8 1 s, in the order fp32, int8 | int8, fp32 | fp32, int8
    ticks: Iterator[float] = iter([0, 2, 2, 3, 3, 4, 4, 6, 6, 8, 8, 9])
    speed = measure_int8_speed(fp32, int8, rounds=3, windows=1, clock=lambda: next(ticks))
    assert (speed.ratio, speed.fp32_s, speed.int8_s) == (
        2.0,
        2.0,
        1.0,
    )  # fixed order would give 0.5 in round 2
    shipped = ROOT / "models" / "satseg-buildings.onnx"
    real = measure_int8_speed(shipped, int8_twin(shipped), rounds=1, windows=1)
    assert real.ratio > 0 and real.fp32_s > 0 and real.int8_s > 0 and (real.rounds, real.windows) == (1, 1)
    with pytest.raises(ModelError, match="not a usable ONNX model"):
        (tmp_path / "broken-int8.onnx").write_bytes(b"not a model")
        measure_int8_speed(fp32, tmp_path / "broken-int8.onnx")


def test_the_cache_measures_once_per_files_cpu_and_onnxruntime(tmp_path: Path, monkeypatch) -> None:
    fp32, int8 = _pair(tmp_path)
    cache = tmp_path / "profile" / "int8_speed.json"
    calls: list[tuple[Path, Path]] = []

    def measure(a: Path, b: Path) -> Int8Speed:
        calls.append((a, b))
        return decide([1.2], [1.0], windows=2)

    assert int8_twin(int8) is None and int8_twin(tmp_path / "alone.onnx") is None
    assert lookup_int8_speed(fp32, cache) is None
    first = cached_int8_speed(fp32, cache, measure)
    assert cached_int8_speed(fp32, cache, measure) == first and calls == [(fp32, int8)]
    assert lookup_int8_speed(fp32, cache) == first and first is not None and first.offered
    os.utime(int8, ns=(int8.stat().st_atime_ns, int8.stat().st_mtime_ns + 10**9))  # a new int8 copy
    cached_int8_speed(fp32, cache, measure)
    monkeypatch.setattr(int8speed, "cpu_name", lambda: "another CPU, 64 cores")
    cached_int8_speed(fp32, cache, measure)
    assert len(calls) == 3 and len(json.loads(cache.read_text())) == 3
    cache.write_text("{damaged")
    assert lookup_int8_speed(fp32, cache) is None and cached_int8_speed(fp32, cache, measure) == first
    with pytest.raises(ModelError, match="no int8 copy"):
        measure_and_cache(tmp_path / "alone.onnx", cache, measure)


def test_a_run_given_a_file_says_what_is_known_of_int8_here(tmp_path: Path) -> None:
    cache = tmp_path / "int8_speed.json"
    fast, fast8 = _pair(tmp_path, "fast")
    slow, slow8 = _pair(tmp_path, "slow")
    alone = make_color_model(tmp_path / "alone.onnx")
    # nothing measured yet: the fp32 runs say nothing, an int8 copy says it is unmeasured
    assert int8_note(fast, cache) is None and int8_note(alone, cache) is None
    assert int8_note(fast8, cache).startswith(
        "int8: fast-int8.onnx is an int8 copy whose speed against fast.onnx was not measured on this CPU"
    )
    measure_and_cache(fast, cache, lambda a, b: decide([1.2], [1.0], windows=2))
    measure_and_cache(slow, cache, lambda a, b: decide([0.9], [1.0], windows=2))
    assert int8_note(fast, cache) == "int8: fast-int8.onnx runs 1.20x faster on this CPU"
    assert int8_note(fast8, cache) == "int8: fast-int8.onnx runs 1.20x the speed of fast.onnx on this CPU"
    assert int8_note(slow, cache) is None  # the slower copy is not worth a line
    assert (
        int8_note(slow8, cache)
        == "int8: slow-int8.onnx is not faster on this CPU (0.90x slow.onnx): run slow.onnx"
    )
    orphan = tmp_path / "orphan-int8.onnx"
    shutil.copyfile(fast8, orphan)  # no fp32 model beside it: nothing to compare with
    assert "was not measured" in int8_note(orphan, cache)


@pytest.fixture()
def measured_here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The dialog measures (as outside the tests), into a cache of its own."""
    cache = tmp_path / "int8_speed.json"
    monkeypatch.setattr(int8_offer, "int8_speed_file", lambda: cache)
    monkeypatch.setenv("SATSEG_INT8_MEASURE", "1")
    return cache


def test_the_dialog_offers_int8_only_where_measured_faster_and_says_so(
    qgis_new_project, clean_settings, measured_here: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fast, fast8 = _pair(tmp_path, "fast")
    slow, _ = _pair(tmp_path, "slow")
    alone = make_color_model(tmp_path / "alone.onnx")
    ratios = {fast: ([1.0, 1.1, 1.2], [0.8, 0.8, 0.8]), slow: ([1.0, 1.0, 1.0], [1.1, 1.0, 1.1])}
    measured = threading.Event()  # held until the "measuring" state is seen: the fake takes no time

    def measure(a: Path, _b: Path):
        assert measured.wait(30)
        return decide(*ratios[a], windows=2)

    monkeypatch.setattr(int8_offer, "measure_int8_speed", measure)

    dialog = SegmentDialog(QgsProject.instance(), model_path=str(fast))
    dialog.url_edit.setText("http://example.org/{z}/{x}/{y}.png")
    dialog.layer_combo.setLayer(None)
    check = dialog.int8.check
    assert not check.isHidden() and not check.isEnabled() and "measuring fast-int8.onnx" in check.text()
    measured.set()
    wait_for_task(dialog.int8.task)
    assert check.text() == "int8: 1.38x faster on this CPU (use fast-int8.onnx)" and check.isEnabled()
    assert dialog.choices().model_path == str(fast)  # offered, not imposed
    check.setChecked(True)
    assert dialog.choices().model_path == str(fast8)

    dialog.model_widget.setFilePath(str(slow))
    wait_for_task(dialog.int8.task)
    assert check.text() == "int8 not offered: 0.91x on this CPU" and not check.isEnabled()
    check.setChecked(True)  # a disabled box a script ticks still runs the model itself
    assert dialog.choices().model_path == str(slow)

    dialog.model_widget.setFilePath(str(alone))
    assert check.isHidden() and dialog.choices().model_path == str(alone)

    again = SegmentDialog(QgsProject.instance(), model_path=str(fast))  # cached: no task this time
    assert again.int8.task is None and again.int8.check.text().startswith("int8: 1.38x faster")
    labels = [again.models_combo.itemData(i) for i in range(again.models_combo.count())]
    assert not [p for p in labels if p and p.endswith("-int8.onnx")]  # copies come through the box


def test_a_cold_cache_measures_once_in_the_background_with_two_sessions(
    qgis_new_project, clean_settings, measured_here: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fp32, _ = _pair(tmp_path)
    broken, _ = _pair(tmp_path, "broken")
    (tmp_path / "broken-int8.onnx").write_bytes(b"not a model")
    sessions: list[str] = []
    real = ort.InferenceSession

    class Counted(real):  # type: ignore[misc, valid-type]
        def __init__(self, path: object, *args: object, **kw: object) -> None:
            sessions.append(Path(str(path)).name)
            super().__init__(path, *args, **kw)

    monkeypatch.setattr(ort, "InferenceSession", Counted)
    dialog = SegmentDialog(QgsProject.instance(), model_path=str(fp32))
    wait_for_task(dialog.int8.task)
    speed = dialog.int8.speed
    assert speed is not None and speed.ratio > 0 and speed.text() in dialog.int8.check.text()
    assert sorted(sessions) == ["colors-int8.onnx", "colors.onnx"]
    SegmentDialog(QgsProject.instance(), model_path=str(fp32))
    assert len(sessions) == 2  # measured once on this machine

    dialog.model_widget.setFilePath(str(broken))
    wait_for_task(dialog.int8.task)
    text = dialog.int8.check.text()
    assert text.startswith("int8 not offered: its speed could not be measured (broken-int8.onnx is not")
    assert not dialog.int8.check.isEnabled() and dialog.int8.task is None  # reported, not retried


def test_info_measures_the_int8_copy_on_request(tmp_path: Path) -> None:
    fp32, int8 = _pair(tmp_path)
    out = cli("info", fp32, "--int8-speed")
    assert out.returncode == 0, out.stderr
    last = out.stdout.strip().splitlines()[-1]
    assert "x on this CPU" in last or "x faster on this CPU" in last
    assert last.endswith("ms a window)") and "colors-int8.onnx" in last
    assert not [line for line in cli("info", fp32).stdout.splitlines() if line.startswith("int8")]
    assert "this is an int8 copy" in cli("info", int8, "--int8-speed").stdout
