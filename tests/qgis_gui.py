"""Drive the real QGIS desktop under Xvfb: fresh profile, plugin zip, startup script.

A GUI test writes a script body that runs inside QGIS (``qgis --code``) with
``iface`` available; the body fills the dict ``result`` and may save
screenshots. The wrapper catches any exception into ``result["error"]``,
writes ``result`` as JSON and exits QGIS, so a test reads one JSON file back.

The body can call the helpers of ``_HELPERS`` (``spin``, ``visible``,
``prepare_window``, ``show_extent``, ``redraw``, ``screenshot``, ``keep_started``,
``wait_ended``, ``click_ok``, ``open_segment_dialog``, ``run_dialog``): the steps
the GUI tests share.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import site
import subprocess
import sys
import textwrap
import zipfile
from collections.abc import Iterator
from pathlib import Path

#: What a body may call inside QGIS (plain text: no ``str.format`` braces here).
_HELPERS = """
import time
from qgis.core import QgsCoordinateReferenceSystem, QgsProject, QgsRectangle, QgsSettings
from qgis.PyQt.QtWidgets import QApplication, QDialogButtonBox, QDockWidget


def spin(seconds, until=lambda: False):
    # Process events for ``seconds``, or until ``until()`` is true.
    end = time.monotonic() + seconds
    while time.monotonic() < end and not until():
        QApplication.processEvents()
        time.sleep(0.02)


def visible(name):
    # The visible top-level widget whose objectName is ``name``, else None.
    found = [w for w in QApplication.topLevelWidgets() if w.objectName() == name and w.isVisible()]
    return found[0] if found else None


def prepare_window():
    # Place the main window for screenshots; return it and the project, in EPSG:3857.
    win = iface.mainWindow()
    win.move(0, 0)  # Xvfb has no window manager to maximise it
    win.resize(1600, 1000)
    for dock in win.findChildren(QDockWidget):
        if dock.objectName() == "Browser":
            dock.hide()  # the Layers panel gets the height for the legend
    QgsSettings().setValue("qgis/dockAttributeTable", True)  # docked: no window manager needed
    project = QgsProject.instance()
    project.setCrs(QgsCoordinateReferenceSystem("EPSG:3857"))
    return win, project


def show_extent(rect):
    # Show ``rect`` (minx, miny, maxx, maxy in EPSG:3857) on the map canvas, drawn; return the canvas.
    canvas = iface.mapCanvas()
    canvas.setDestinationCrs(QgsCoordinateReferenceSystem("EPSG:3857"))
    spin(1)
    canvas.setExtent(QgsRectangle(*rect))
    canvas.refresh()
    spin(10, lambda: not canvas.isDrawing())
    return canvas


def redraw():
    # Redraw every layer of the canvas and wait until it is drawn.
    canvas = iface.mapCanvas()
    canvas.refreshAllLayers()
    spin(2)
    spin(15, lambda: not canvas.isDrawing())


def screenshot(path, settle=0.5):
    # Let the window settle for ``settle`` seconds, save the screen to ``path``; True when saved.
    spin(settle)
    return iface.mainWindow().screen().grabWindow(0).save(path)


def keep_started(controller):
    # Return the list that gets every task ``controller.start`` starts from now on. The
    # controller forgets a task once it ends (a short run may end within a test's waits),
    # so a test keeps the tasks it starts.
    started = []
    start = controller.start

    def start_and_keep(*args, **kwargs):
        task = start(*args, **kwargs)
        if task is not None:
            started.append(task)
        return task

    controller.start = start_and_keep
    return started


def wait_ended(task, seconds, settle=0.5):
    # Wait up to ``seconds`` for ``task`` to end (its ``finished`` has run), then ``settle`` more.
    spin(seconds, lambda: task.ended)
    spin(settle)


def click_ok(dialog):
    dialog.buttons.button(QDialogButtonBox.Ok).click()


def open_segment_dialog(model, layer, out_parent):
    # Click Segment extent; return its dialog, with the model, the imagery layer and the
    # output folder chosen, and the list of the tasks it starts (keep_started).
    plugin = qgis.utils.plugins["satseg_plugin"]
    started = keep_started(plugin.controller)
    plugin.segment_action.trigger()
    spin(0.5)
    dialog = visible("satsegSegmentDialog")
    dialog.model_widget.setFilePath(model)
    dialog.layer_combo.setLayer(layer)
    dialog.out_widget.setFilePath(out_parent)
    return dialog, started


def run_dialog(dialog, started, seconds):
    # Click the dialog's OK and wait up to ``seconds`` for the task it started to end; return
    # the task. Notes result["tasks"] (how many started) and result["task_error"].
    spin(0.3)
    click_ok(dialog)
    spin(0.5)
    result["tasks"] = len(started)
    task = started[0]
    wait_ended(task, seconds)
    result["task_error"] = task.error or task.bug
    return task
"""

_WRAPPER = """
import json, os, sys, traceback
from qgis.PyQt.QtCore import QTimer
from qgis.utils import iface
import qgis.utils

RESULT_PATH = {result_path!r}
result = {{}}
{helpers}


def _finish():
    with open(RESULT_PATH + ".part", "w") as f:
        json.dump(result, f)
    os.replace(RESULT_PATH + ".part", RESULT_PATH)
    sys.stdout.flush()
    os._exit(0)  # a plain quit can hang on a modal dialog the test left open


def _run():
    try:
{body}
    except Exception:
        result["error"] = traceback.format_exc()
    _finish()


QTimer.singleShot({delay_ms}, _run)
"""


@contextlib.contextmanager
def xvfb() -> Iterator[str]:
    """Start Xvfb on a free display; yield the DISPLAY value (``:N``)."""
    if shutil.which("Xvfb") is None:
        raise RuntimeError("Xvfb is not installed (run scripts/setup.sh)")
    read_fd, write_fd = os.pipe()
    proc = subprocess.Popen(
        ["Xvfb", "-displayfd", str(write_fd), "-screen", "0", "1600x1000x24", "-nolisten", "tcp"],
        pass_fds=(write_fd,),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    os.close(write_fd)
    try:
        with os.fdopen(read_fd) as f:
            number = f.readline().strip()
        if not number:
            raise RuntimeError("Xvfb did not start")
        yield f":{number}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def make_profile(root: Path, plugin_zip: Path, enable: bool = True) -> Path:
    """Make a fresh QGIS profiles folder with ``plugin_zip`` installed (and enabled).

    Returns the folder to pass as ``--profiles-path`` (QGIS adds ``profiles/``).
    """
    profile = root / "profiles" / "default"
    plugins = profile / "python" / "plugins"
    plugins.mkdir(parents=True)
    with zipfile.ZipFile(plugin_zip) as zf:
        zf.extractall(plugins)
    ini = profile / "QGIS" / "QGIS3.ini"
    ini.parent.mkdir(parents=True)
    ini.write_text(
        "[PythonPlugins]\n"
        f"satseg_plugin={'true' if enable else 'false'}\n"
        "[qgis]\n"
        "checkVersion=false\n"
        "showTips=false\n"
        "allowVersionCheck=false\n"
        "[core]\n"
        "NewsFeed\\httpsfeedqgisorg\\disabled=true\n"
    )
    return root


def run_qgis(
    body: str,
    profiles: Path,
    display: str,
    workdir: Path,
    timeout: float = 240,
    delay_ms: int = 3000,
    extra_env: dict[str, str] | None = None,
) -> dict:
    """Run ``body`` inside a real QGIS window; return the ``result`` dict it filled.

    ``body`` is Python at function level (it is indented here). ``extra_env``
    is added to QGIS's environment (e.g. a ``PYTHONPATH``). Raises
    ``RuntimeError`` with QGIS's output when no result came back.
    """
    result_path = workdir / "qgis_result.json"
    script = workdir / "qgis_script.py"
    script.write_text(
        _WRAPPER.format(
            result_path=str(result_path),
            helpers=_HELPERS,
            body=textwrap.indent(textwrap.dedent(body), " " * 8),
            delay_ms=delay_ms,
        )
    )
    env = dict(os.environ, DISPLAY=display, QT_QPA_PLATFORM="xcb", HOME=str(workdir))
    env.pop("QGIS_PREFIX_PATH", None)
    env.update(extra_env or {})
    cmd = ["qgis", "--nologo", "--noversioncheck", "--profiles-path", str(profiles), "--code", str(script)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    if not result_path.is_file():
        raise RuntimeError(
            f"QGIS gave no result (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
    return json.loads(result_path.read_text())


def build_plugin_zip(out: Path) -> Path:
    """Build the plugin zip into ``out`` exactly as scripts/build_plugin.py makes it for users."""
    root = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, str(root / "scripts" / "build_plugin.py"), "--out", str(out)], check=True)
    return next(out.glob("satseg_plugin-*.zip"))


def run_plugin(
    body: str, plugin_zip: Path, workdir: Path, timeout: float = 240, venv_packages: bool = True
) -> dict:
    """Run ``body`` in a real QGIS window, under a fresh Xvfb, with ``plugin_zip`` installed in a fresh profile.

    The profiles folder is ``workdir``. With ``venv_packages``, QGIS's Python (the system
    one) also sees the test venv's packages (onnxruntime, mercantile) through ``PYTHONPATH``.
    """
    profiles = make_profile(workdir, plugin_zip)
    extra_env = {"PYTHONPATH": ":".join(site.getsitepackages())} if venv_packages else None
    with xvfb() as display:
        return run_qgis(body, profiles, display, workdir, timeout=timeout, extra_env=extra_env)
