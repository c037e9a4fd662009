"""Faults of the output folder and of interruption (issue 13: output folders and interruption).

Caused for real: read-only and full tmpfs mounts (skipped, saying so, where
mounting is not allowed), paths that are files, SIGKILL and SIGTERM sent to real
command-line runs (and to real processes inside ``atomic_path``), a second run
into a folder a live run holds, a reused folder, a cancelled Processing run, a
server that trickles a byte a second, models that output NaN or values outside
0..1, class names of 300 characters. Each case asserts the outcome (the one-line
error and exit status, the files left, nothing half-written) and adds to
test_faults' tally, which is printed again after this module.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT
from inference_helpers import COLORS, make_rgb_model, pattern_provider, save_model, write_geotiff
from onnx import helper, numpy_helper
from osgeo import gdal
from test_faults import (  # noqa: F401 - the tally fixture prints the suite's count after this module too
    TILES,
    Z,
    assert_segment_outcome,
    build,
    cli,
    dataset,
    extent,
    record,
    segment,
    skipped,
    tally,
)
from tileserver import TileServer

from satseg_plugin.inference.__main__ import main as segment_main
from satseg_plugin.inference.imageio import read_image, write_png
from satseg_plugin.inference.metadata import ModelMetadata, build_metadata
from satseg_plugin.inference.runfolder import LOCK_NAME, FolderLock
from training.dataset.__main__ import main as dataset_main

LONG = ["background", "r" * 300, "r" * 300 + "x", "blue " * 60]  # the two long red ones start alike
BBOX = ",".join(map(str, extent()))


# --- real faults: mounts, files, processes -----------------------------------------------------
@pytest.fixture
def mount(tmp_path: Path) -> Iterator[Callable[..., Path]]:
    """``mount(name, options)``: a real tmpfs at ``tmp_path/name``; skips where mounting is not allowed."""
    made: list[Path] = []

    def do(name: str, options: str) -> Path:
        path = tmp_path / name
        path.mkdir(exist_ok=True)
        if shutil.which("mount") is None or os.geteuid() != 0:
            pytest.skip(
                "mounting a tmpfs needs root and mount(8): the read-only and full-disk cases are skipped"
            )
        got = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True, text=True
        )
        if got.returncode != 0:
            pytest.skip(f"this machine does not allow mounting a tmpfs ({got.stderr.strip()}): case skipped")
        made.append(path)
        return path

    yield do
    for path in reversed(made):
        subprocess.run(["umount", "-l", str(path)], check=False)


def read_only(mount: Callable[..., Path], setup: Callable[[Path], None] | None = None) -> Path:
    """A read-only tmpfs; ``setup(root)`` writes into it first (then it is remounted read-only)."""
    root = mount("ro", "size=2m")
    if setup is not None:
        setup(root)
    subprocess.run(["mount", "-o", "remount,ro", str(root)], check=True)
    with pytest.raises(OSError, match="Read-only"):
        (root / "probe").write_bytes(b"x")
    return root


def full(mount: Callable[..., Path], setup: Callable[[Path], None] | None = None, free: int = 8192) -> Path:
    """A tmpfs with ``free`` bytes left after ``setup(root)``: it fills up at the first real write."""
    root = mount("full", "size=4m")
    if setup is not None:
        setup(root)
    st = os.statvfs(root)
    (root / "filler").write_bytes(bytes(max(0, st.f_bavail * st.f_frsize - free)))
    return root


def a_file(tmp_path: Path) -> Path:
    path = tmp_path / "afile"
    path.write_text("a file, not a folder\n")
    return path


#: A progress bar's line on stderr (``tiles [####....] 2/4 43.8/s eta 0s``).
_BAR = re.compile(r"^[\w ./-]+ \[[#.]+\] ")


def assert_one_line_error(rc: int, err: str, *words: str) -> None:
    """Exit status 2 and exactly one line on stderr besides progress bars, ``error: ...`` with
    ``words``; no traceback."""
    lines = [line for line in err.strip().splitlines() if not _BAR.match(line)]
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for w in words:
        assert w in lines[0], err


def pngs(folder: Path) -> list[Path]:
    """The images of a folder (pathlib's glob also matches hidden temporary files)."""
    return sorted(p for p in folder.glob("*.png") if not p.name.startswith(".")) if folder.is_dir() else []


def parts(folder: Path) -> list[str]:
    """Temporary files, staging folders and locks under ``folder``: what must never stay."""
    if not folder.exists():
        return []
    return sorted(str(p) for p in folder.rglob("*") if ".part" in p.name or p.name == LOCK_NAME)


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "QT_QPA_PLATFORM": "offscreen", "PYTHONUNBUFFERED": "1"}


def start(*args: object) -> subprocess.Popen:
    """``python -m ...`` as a real process, as a user or a scheduler starts it."""
    return subprocess.Popen(
        [sys.executable, "-m", *map(str, args)], cwd=ROOT, env=env(), text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip


def wait_for(what: Callable[[], object], proc: subprocess.Popen | None = None, seconds: float = 60) -> None:
    end = time.monotonic() + seconds
    while not what():
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"the process ended first: {proc.communicate()}")
        assert time.monotonic() < end, "timed out waiting"
        time.sleep(0.02)


def killed_writer(path: Path, kill: bool = True) -> tuple[subprocess.Popen, Path]:
    """A real process inside ``atomic_path(path)``, SIGKILLed there (``kill``) or left running:
    the ``.part`` file a build, a merge or a training killed mid-write leaves."""
    code = (
        "import sys, time\nfrom satseg_plugin.inference.atomic import atomic_path\n"
        "with atomic_path(sys.argv[1]) as tmp:\n    tmp.write_bytes(b'half a file')\n"
        "    print(tmp, flush=True)\n    time.sleep(120)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(path)], cwd=ROOT, env=env(), stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    tmp = Path(proc.stdout.readline().strip())
    assert tmp.is_file() and f".{proc.pid}." in tmp.name
    if kill:
        stop(proc)
    return proc, tmp


def stop(proc: subprocess.Popen) -> None:
    """SIGKILL ``proc`` and reap it (a zombie's pid still looks alive)."""
    proc.kill()
    proc.communicate()


# --- models ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_rgb_model(tmp_path_factory.mktemp("m") / "rgb.onnx")


@pytest.fixture(scope="module")
def long_names(tmp_path_factory: pytest.TempPathFactory) -> Path:
    meta = build_metadata(ModelMetadata(LONG, COLORS, 256, 0, None, zoom=Z))
    return make_rgb_model(tmp_path_factory.mktemp("m") / "long.onnx", props=meta)


def broken_model(path: Path, fault: str) -> Path:
    """``nan``: every output NaN (log of -1); ``range``: softmax plus the red channel above 1 std,
    so windows without red are probabilities and red ones reach 1.8."""
    w = np.zeros((4, 3, 1, 1), np.float32)
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.zeros(4, np.float32), "b")]
    nodes = [helper.make_node("Conv", ["image", "w", "b"], ["logits"]),
             helper.make_node("Softmax", ["logits"], ["soft"], axis=1)]  # fmt: skip
    pick = np.zeros((1, 3, 1, 1), np.float32)
    pick[0, 0] = 1.0
    inits += [
        numpy_helper.from_array(pick, "pick"),
        numpy_helper.from_array(np.array([-1.0], np.float32), "minus"),
    ]
    nodes.append(helper.make_node("Conv", ["image", "pick", "minus"], ["red"]))
    if fault == "nan":
        nodes += [helper.make_node("Mul", ["red", "zero"], ["m1"]), helper.make_node("Add", ["m1", "minus"], ["m2"]),
                  helper.make_node("Log", ["m2"], ["bad"])]  # fmt: skip
        inits.append(numpy_helper.from_array(np.array([0.0], np.float32), "zero"))
    else:
        nodes.append(helper.make_node("Relu", ["red"], ["bad"]))
    nodes.append(helper.make_node("Add", ["soft", "bad"], ["probabilities"]))
    meta = build_metadata(ModelMetadata(["background", "red", "green", "blue"], COLORS, 256, 0, None, zoom=Z))
    return save_model(path, nodes, inits, 4, meta)


def segment_cli(
    capsys: pytest.CaptureFixture[str], model: Path, out: Path, url: str, *extra: object
) -> tuple[int, str, str]:
    return cli(capsys, segment_main, "segment", "--model", model, "--bbox", BBOX, "--bbox-crs", "EPSG:3857",
               "--tiles", url, "--out", out, "--quiet", *extra)  # fmt: skip


# --- 1. read-only, a file, full: one line -----------------------------------------------------
@pytest.mark.parametrize("fault", ["read-only", "read-only, existing", "a file", "under a file", "full"])
def test_segment_into_a_folder_it_cannot_write(
    model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], mount, fault: str
) -> None:
    words = {
        "read-only": ("cannot create the output folder", "Read-only file system"),
        "read-only, existing": ("cannot write into", "Read-only file system"),
        "a file": ("is a file, not a folder",),
        "under a file": ("cannot create the output folder", "a part of the path is a file"),
        "full": ("cannot write into", "No space left on device"),
    }[fault]
    out = {
        "read-only": lambda: read_only(mount) / "out",
        "read-only, existing": lambda: read_only(mount),
        "a file": lambda: a_file(tmp_path),
        "under a file": lambda: a_file(tmp_path) / "out",
        "full": lambda: full(mount) / "out",
    }[fault]()
    with TileServer(pattern_provider) as s:
        rc, _, err = segment_cli(capsys, model, out, s.template)
    assert_one_line_error(rc, err, str(out), *words)
    if fault == "full":
        assert sorted(p.name for p in out.parent.iterdir()) == [
            "filler"
        ]  # no temporary file, no empty folder
    record(f"segment into a {fault} folder", clear_error=True)


@pytest.mark.parametrize("fault", ["read-only", "a file", "full"])
def test_dataset_build_into_a_folder_it_cannot_write(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], mount, fault: str
) -> None:
    tiles = [(Z, x, y) for _, x, y in TILES]
    if fault == "read-only":
        data = read_only(mount, lambda root: dataset(root / "data", tiles)) / "data"
    elif fault == "full":
        data = full(mount, lambda root: dataset(root / "data", tiles), free=4096) / "data"
    else:
        data = a_file(tmp_path)
    before = (data / "manifest.json").read_bytes() if data.is_dir() else None
    with TileServer(pattern_provider) as s:
        rc, err = build(capsys, data, s.template)
    words = {"read-only": "Read-only file system", "full": "No space left on device", "a file": "is a file"}[
        fault
    ]
    assert_one_line_error(rc, err, str(data), words)
    if fault == "read-only":
        assert (data / "manifest.json").read_bytes() == before
    if before is not None:
        assert json.loads((data / "manifest.json").read_text())["classes"] and parts(data) == []
        for image in pngs(data / "images"):
            read_image(image)  # whatever was stored is whole
    record(f"dataset build into a {fault} folder", clear_error=True)


def masks_source(root: Path) -> Path:
    """One scene of one 64x64 image with a mask of Dubai colours."""
    img = np.zeros((64, 64, 3), np.uint8) + 90
    mask = np.zeros((64, 64, 3), np.uint8)
    mask[:32] = (0x3C, 0x10, 0x98)  # building
    write_png(root / "scene" / "images" / "a.png", img)
    write_png(root / "scene" / "masks" / "a.png", mask)
    return root


def test_import_masks_and_merge_into_folders_they_cannot_write(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], mount
) -> None:
    src = masks_source(tmp_path / "src")
    colors = ROOT / "training" / "classes" / "dubai.json"
    rc, _, err = cli(capsys, dataset_main, "import-masks", src, "--colors", colors, "--tile", 32,
                     "--out", read_only(mount) / "data")  # fmt: skip
    assert_one_line_error(rc, err, "Read-only file system")
    record("import-masks into a read-only folder", clear_error=True)
    rc, _, err = cli(
        capsys, dataset_main, "import-masks", src, "--colors", colors, "--tile", 32, "--out", tmp_path / "in"
    )
    assert rc == 0, err
    out = full(mount, free=4096) / "merged"
    rc, _, err = cli(capsys, dataset_main, "merge", tmp_path / "in", "--out", out)
    assert_one_line_error(rc, err, str(out), "No space left on device")
    assert parts(out) == []
    record("merge into a full folder", clear_error=True)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from test_training_recipe import make_tiny_dataset

    return make_tiny_dataset(tmp_path_factory.mktemp("tiny") / "data")


TRAIN = ("--width", "0.125", "--batch-size", "2", "--validation", "0.4", "--no-augment", "--seed", "1")


@pytest.mark.parametrize("fault", ["read-only", "a file", "full"])
def test_train_into_a_folder_it_cannot_write(
    tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], mount, fault: str
) -> None:
    from training import train

    out = {"read-only": lambda: read_only(mount) / "run", "a file": lambda: a_file(tmp_path),
           "full": lambda: full(mount, free=64 * 1024) / "run"}[fault]()  # fmt: skip
    rc, _, err = cli(capsys, train.main, "--data", tiny_data, "--out", out, "--epochs", "1", *TRAIN)
    words = {"read-only": "Read-only file system", "full": "No space left on device", "a file": "is a file"}[
        fault
    ]
    assert_one_line_error(rc, err, str(out), words)
    assert parts(out) == []  # no half checkpoint
    record(f"train into a {fault} folder", clear_error=True)


@pytest.mark.parametrize("fault", ["read-only", "a file", "full"])
def test_feed_forward_into_a_folder_it_cannot_write(
    model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], mount, fault: str
) -> None:
    from training import feed_forward

    image = tmp_path / "image.png"
    write_png(image, np.zeros((300, 300, 3), np.uint8) + 128)
    out = {"read-only": lambda: read_only(mount) / "ff", "a file": lambda: a_file(tmp_path),
           "full": lambda: full(mount, free=4096) / "ff"}[fault]()  # fmt: skip
    rc, _, err = cli(capsys, feed_forward.main, model, image, out)
    words = {"read-only": "Read-only file system", "full": "No space left on device", "a file": "is a file"}[
        fault
    ]
    assert_one_line_error(rc, err, str(out), words)
    assert parts(out) == []
    record(f"feed_forward into a {fault} folder", clear_error=True)


# --- 2. reusing a folder: one run's files, one run at a time --------------------------------
def test_a_reused_folder_holds_one_runs_files_only(
    model: Path, long_names: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("the user's own file\n")
    with TileServer(pattern_provider) as s:
        rc, _, err = segment_cli(capsys, model, out, s.template)
        assert rc == 0, err
        first = sorted(p.name for p in out.iterdir())
        assert "pixel_counts.csv" in first and "heatmap_red.tif" in first
        # Other classes (names of 300 characters among them), no table: nothing of the first run stays.
        rc, _, err = segment_cli(capsys, long_names, out, s.template, "--no-counts")
        assert rc == 0, err
        second = sorted(p.name for p in out.iterdir())
        heatmaps = [n for n in second if n.startswith("heatmap_") and n.endswith(".tif")]
        assert len(heatmaps) == len(set(heatmaps)) == len(LONG)  # distinct files, one per class
        assert all(len(n.encode()) < 120 for n in heatmaps)
        for name in heatmaps:  # the full class name is in the file itself
            ds = gdal.Open(str(out / name))
            assert ds.GetRasterBand(1).GetDescription().removeprefix("probability of ") in LONG
            ds = None
        assert set(second) == {"notes.txt", "classes.tif", "classes.tif.aux.xml", *heatmaps}
        classes = gdal.Open(str(out / "classes.tif"))
        classes.GetRasterBand(1).GetDescription()  # GDAL 3.6 reads the side file's names only after this
        assert classes.GetRasterBand(1).GetRasterCategoryNames()[: len(LONG)] == LONG
        classes = None
        rc, _, err = segment_cli(capsys, model, out, s.template, "--no-heatmaps", "--no-classes")
        assert rc == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt", "pixel_counts.csv"]
    record("segment: stale heatmaps and table of an earlier run", nothing_lost=True)
    record("segment: class names of 300 characters", nothing_lost=True)


def test_the_processing_algorithm_stages_like_the_dialog(
    qgis_processing, model: Path, tmp_path: Path
) -> None:
    """All or nothing into a folder the user gives: a cancelled run leaves the earlier results
    byte for byte, a busy folder is refused, a finished run replaces the earlier run's set."""
    from qgis.core import QgsProcessingException, QgsProcessingFeedback

    from satseg_plugin.ui.processing_provider import register_provider

    register_provider()
    import processing

    left, bottom, right, top = extent()
    out = tmp_path / "out"
    with TileServer(pattern_provider) as s:
        params = {"MODEL": str(model), "SOURCE_URL": s.template, "OUTPUT_FOLDER": str(out),
                  "EXTENT": f"{left},{right},{bottom},{top} [EPSG:3857]"}  # fmt: skip
        processing.run("satseg:segment_extent", params)
        (out / "heatmap_roof.tif").write_bytes(b"an earlier model's class")
        before = {p.name: p.read_bytes() for p in out.iterdir()}
        feedback = QgsProcessingFeedback()
        feedback.progressChanged.connect(lambda _progress: feedback.cancel())
        with pytest.raises(QgsProcessingException, match="cancelled"):
            processing.run("satseg:segment_extent", {**params, "WRITE_COUNTS": False}, feedback=feedback)
        assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # untouched, nothing half-written
        lock = FolderLock(out).acquire()
        try:
            with pytest.raises(QgsProcessingException, match="another satseg run"):
                processing.run("satseg:segment_extent", params)
        finally:
            lock.release()
        got = processing.run("satseg:segment_extent", {**params, "WRITE_COUNTS": False})
    assert got["COUNTS"] is None and Path(got["CLASSES"]) == out / "classes.tif"
    heatmaps = {f"heatmap_{n}.tif" for n in ("background", "red", "green", "blue")}
    assert {p.name for p in out.iterdir()} == {"classes.tif", "classes.tif.aux.xml", *heatmaps}
    record("Processing: cancelled, busy and reused folders", nothing_lost=True)


def segment_process(model: Path, out: Path, url: str) -> subprocess.Popen:
    return start("satseg_plugin.inference", "segment", "--model", model, "--bbox", BBOX, "--bbox-crs", "EPSG:3857",
                 "--tiles", url, "--out", out, "--workers", "1", "--quiet")  # fmt: skip


def test_two_runs_into_one_folder_cannot_interleave_and_a_dead_runs_lock_is_taken_over(
    model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    with TileServer(pattern_provider, delay=0.3) as s:
        proc = segment_process(model, out, s.template)
        wait_for(lambda: (out / LOCK_NAME).is_file() and (out / LOCK_NAME).read_text().strip(), proc)
        rc, _, err = segment_cli(capsys, model, out, s.template)
        assert_one_line_error(
            rc, err, f"another satseg run (pid {proc.pid}, started", f"is writing into {out}"
        )
        _, err1 = proc.communicate(timeout=120)
        assert proc.returncode == 0, err1
        written = sorted(p.name for p in out.iterdir())
        assert "classes.tif" in written and parts(out) == []  # the first run ended well, alone
        record("segment: a second run into a busy folder", clear_error=True)

        # SIGKILL: the lock file (naming a dead pid) and the staging folder with its half-written
        # GeoTIFFs stay behind; the next run takes the lock over and removes them.
        proc = segment_process(model, out, s.template)

        def staged() -> list[Path]:
            return [p for p in out.glob(".segment.*.part") if any(p.glob(".classes.*.part.tif"))]

        wait_for(staged, proc)
        stop(proc)
        assert (out / LOCK_NAME).read_text().split()[0] == str(proc.pid) and staged()
        s.delay = 0.0
        rc, _, err = segment_cli(capsys, model, out, s.template)
    assert rc == 0, err
    assert parts(out) == [] and sorted(p.name for p in out.iterdir()) == written
    record("segment: SIGKILL leaves a lock and .part files, the next run clears them", nothing_lost=True)


def test_sigterm_ends_segment_like_ctrl_c(model: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    with TileServer(pattern_provider, delay=0.3) as s:
        proc = segment_process(model, out, s.template)
        wait_for(lambda: any(out.glob(".segment.*.part/.classes.*.part.tif")), proc)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and err.strip().splitlines() == ["terminated (SIGTERM)"], err
    assert not out.exists()  # the run had made it: nothing half-written, no lock, no empty folder
    record("segment: SIGTERM", nothing_lost=True)


def test_dataset_sigterm_and_the_parts_killed_writers_left(tmp_path: Path) -> None:
    tiles = [(Z, x, y) for _, x, y in TILES]
    data = dataset(tmp_path / "data", tiles)
    with TileServer(pattern_provider, delay=0.3) as s:
        proc = start("training.dataset", "build", "--out", data, "--imagery", s.template, "--workers", "1",
                     "--preview-tiles", "0")  # fmt: skip
        wait_for(lambda: pngs(data / "images"), proc)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
        assert (
            proc.returncode == 130 and err.strip().endswith("terminated (SIGTERM)") and "Traceback" not in err
        ), err
        assert parts(data) == []
        for image in pngs(data / "images"):
            read_image(image)  # every stored image is whole
        record("dataset build: SIGTERM", nothing_lost=True)

        # What a SIGKILL mid-write leaves, and a live writer's file beside it (another process).
        _, dead = killed_writer(data / "images" / "19-1-1.png")
        _, dead_label = killed_writer(data / "labels" / "color" / "19-1-1.png")
        live, alive = killed_writer(data / "images" / "19-2-2.png", kill=False)
        try:
            s.delay = 0.0
            rc = subprocess.run([sys.executable, "-m", "training.dataset", "build", "--out", str(data), "--imagery",
                                 s.template, "--preview-tiles", "0", "--quiet"], cwd=ROOT, env=env()).returncode  # fmt: skip
            assert rc == 0
            assert not dead.exists() and not dead_label.exists() and alive.exists()
        finally:
            stop(live)
    assert len(pngs(data / "images")) == len(tiles)
    record("dataset: .part files of killed writers removed, a live one's kept", nothing_lost=True)


# --- 3./4. training: the log and last.pt, the cache ------------------------------------------
def log_epochs(run: Path) -> list[int]:
    lines = (
        (run / "training_log.csv").read_text().splitlines()[1:] if (run / "training_log.csv").exists() else []
    )
    return [int(line.split(",", 1)[0]) for line in lines]


def assert_pair(run: Path) -> int:
    """The log lists epochs 1..k once each, and last.pt holds at least epoch k (never fewer)."""
    from training.checkpoint import load_checkpoint

    epochs = log_epochs(run)
    last = int(load_checkpoint(run / "last.pt")["epoch"])
    assert epochs == list(range(1, len(epochs) + 1)) and len(epochs) <= last, (epochs, last)
    return last


def test_training_log_and_checkpoint_stay_a_pair_under_sigkill_and_sigterm(
    tiny_data: Path, tmp_path: Path
) -> None:
    from training import train

    run = tmp_path / "run"
    proc = start("training.train", "--data", tiny_data, "--out", run, "--epochs", "50", *TRAIN)
    wait_for(lambda: log_epochs(run), proc)
    stop(proc)
    last = assert_pair(run)
    # --resume: the log is rewritten from the one last.pt carries, then goes on.
    assert (
        train.main(
            ["--data", str(tiny_data), "--out", str(run), "--epochs", str(last + 1), "--resume", *TRAIN]
        )
        == 0
    )
    assert log_epochs(run) == list(range(1, last + 2)) and assert_pair(run) == last + 1
    assert parts(run) == []  # the dead run's lock (and any half checkpoint) went at this start
    record("train: SIGKILL", nothing_lost=True)

    proc = start("training.train", "--data", tiny_data, "--out", run, "--epochs", "50", "--resume", *TRAIN)
    wait_for(lambda: len(log_epochs(run)) >= last + 2, proc)  # in the middle of training
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "interrupted: saved" in err and "Traceback" not in err, err
    assert assert_pair(run) >= last + 1 and parts(run) == []
    record("train: SIGTERM", nothing_lost=True)


def test_training_cache_notices_replaced_images_and_dead_writers(tmp_path: Path) -> None:
    from test_training_recipe import XYZ_IDS, make_tiny_dataset

    from training.data import load_dataset, read_tiles

    data = make_tiny_dataset(tmp_path / "data")
    ds = load_dataset(data)
    before, _ = read_tiles(ds.cache, [0])
    # The same id, other pixels (a re-import, a tile fetched again): the cache must not serve the old ones.
    new = np.zeros((32, 32, 3), np.uint8) + 77
    write_png(data / "images" / f"{XYZ_IDS[0]}.png", new)
    _, dead = killed_writer(data / "training.hdf5")  # a cache build killed mid-write
    ds = load_dataset(data)
    after, _ = read_tiles(ds.cache, [0])
    assert not np.array_equal(before[0], new) and np.array_equal(after[0], new)
    assert not dead.exists()
    record("training cache: image replaced under the same id", nothing_lost=True)


# --- 5. a trickling server, a build where every tile fails, a broken model ------------------
def test_a_trickling_server_cannot_hold_a_worker_past_the_timeout(
    model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tile = TILES[2]
    with TileServer(pattern_provider) as s:
        s.faults[tile] = "trickle"  # a byte a second: every read in time for the 2 s timeout, the tile never
        result = segment(model, s.template, tmp_path / "out", timeout=2.0, retries=0)
        data = dataset(tmp_path / "data", [tile, TILES[0]])
        rc, err = build(capsys, data, s.template, "--timeout", "2", "--retries", "0")
        sent = dict(s.trickled)
    assert_segment_outcome(result, {tile: "too slow: "})
    assert "bytes in the 2 s allowed" in dict(result.tiles_failed)[f"{tile[0]}/{tile[1]}/{tile[2]}"]
    # Cut off at its deadline: a few bytes each time, not the tile's thousands at a byte a second.
    assert 0 < sent[tile] <= 2 * 6, sent
    assert rc == 0, err
    assert skipped(data)[f"{tile[0]}-{tile[1]}-{tile[2]}"].startswith("too slow: ")
    record("segment: server trickling a byte a second", nothing_lost=True)
    record("dataset: server trickling a byte a second", nothing_lost=True)


def test_a_dataset_build_where_every_tile_fails_exits_non_zero(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tiles = [(Z, x, y) for _, x, y in TILES]
    data = dataset(tmp_path / "data", tiles)
    with TileServer(lambda z, x, y: None) as s:  # every tile 404
        rc, err = build(capsys, data, s.template)
    assert_one_line_error(rc, err.strip().splitlines()[-1], "no imagery tile could be had (6 tiles failed: "
                          "not found (HTTP 404))", str(data / "skipped.csv"))  # fmt: skip
    assert len(skipped(data)) == len(tiles)
    assert json.loads((data / "manifest.json").read_text())["counts"]["images"] == 0
    record("dataset build: every tile fails", clear_error=True)


def test_a_model_that_outputs_nan_or_values_outside_0_1_is_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from training import feed_forward

    nan = broken_model(tmp_path / "nan.onnx", "nan")
    with TileServer(pattern_provider) as s:
        rc, _, err = segment_cli(capsys, nan, tmp_path / "a", s.template)
    assert_one_line_error(rc, err, "nan.onnx output", "NaN or infinite values", "cannot be used")
    assert not (tmp_path / "a").exists()
    image = tmp_path / "image.png"
    write_png(image, np.zeros((256, 256, 3), np.uint8) + 128)
    rc, _, err = cli(capsys, feed_forward.main, nan, image, tmp_path / "ff")
    assert_one_line_error(rc, err.strip().splitlines()[-1], "NaN or infinite values")
    assert not (tmp_path / "ff").exists()
    record("segment and feed_forward: model outputs NaN", clear_error=True)

    # Out of range: the first (black) window gives probabilities, the next (red) one values up to 1.8.
    rgb = np.zeros((256, 512, 3), np.uint8)
    rgb[:, 256:, 0] = 230
    raster = write_geotiff(tmp_path / "half.tif", rgb, (1000.0, 1.0, 0.0, 2000.0, 0.0, -1.0))
    rc, _, err = cli(capsys, segment_main, "segment", "--model", broken_model(tmp_path / "range.onnx", "range"),
                     "--raster", raster, "--bbox", "1000,1744,1512,2000", "--bbox-crs", "EPSG:3857",
                     "--batch-size", "1", "--out", tmp_path / "b", "--quiet")  # fmt: skip
    assert_one_line_error(rc, err, "range.onnx output values from", "outside 0..1")
    assert not (tmp_path / "b").exists()
    record("segment: model outputs values outside 0..1", clear_error=True)


# --- 6. smaller --------------------------------------------------------------------------------
def test_feed_forward_with_class_names_of_300_characters(long_names: Path, tmp_path: Path, capsys) -> None:
    from training import feed_forward

    image = tmp_path / "image.png"
    write_png(image, np.zeros((256, 256, 3), np.uint8) + 128)
    rc, _, err = cli(capsys, feed_forward.main, long_names, image, tmp_path / "ff")
    assert rc == 0, err
    heatmaps = sorted(p.name for p in (tmp_path / "ff").glob("heatmap_*.png"))
    assert len(heatmaps) == len(LONG) and all(len(n) < 120 for n in heatmaps)
    record("feed_forward: class names of 300 characters", nothing_lost=True)


def test_segment_bbox_of_a_leading_minus_and_point_parses(
    model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with TileServer(pattern_provider) as s:
        rc, out, err = cli(capsys, segment_main, "segment", "--model", model, "--bbox", "-.001,-.05,0,-.049",
                           "--tiles", s.template, "--out", tmp_path / "out", "--dry-run")  # fmt: skip
    assert rc == 0 and "pixels at zoom 18" in out, err
    record("segment --bbox -.001,...", clear_error=True)


def test_a_lock_held_in_this_process_refuses_a_second_run(model: Path, tmp_path: Path, capsys) -> None:
    """QGIS runs tasks in threads of one process: the lock refuses a second run there too."""
    out = tmp_path / "out"
    out.mkdir()
    lock = FolderLock(out).acquire()
    try:
        with TileServer(pattern_provider) as s:
            rc, _, err = segment_cli(capsys, model, out, s.template)
    finally:
        lock.release()
    assert_one_line_error(rc, err, f"another satseg run (pid {os.getpid()}")
    assert list(out.iterdir()) == []
    record("segment: a second run in the same process", clear_error=True)
