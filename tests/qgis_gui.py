"""Drive the real QGIS desktop under Xvfb: fresh profile, plugin zip, startup script.

A GUI test writes a script body that runs inside QGIS (``qgis --code``) with
``iface`` available; the body fills the dict ``result`` and may save
screenshots. The wrapper catches any exception into ``result["error"]``,
writes ``result`` as JSON and exits QGIS, so a test reads one JSON file back.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import textwrap
import zipfile
from collections.abc import Iterator
from pathlib import Path

_WRAPPER = """
import json, os, sys, traceback
from qgis.PyQt.QtCore import QTimer
from qgis.utils import iface
import qgis.utils

RESULT_PATH = {result_path!r}
result = {{}}


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
