"""The separate Python that trains for "Train on this area": where it is, whether it has torch, making one.

QGIS's own Python never imports torch or ``training``: training runs as
``<python> -m training.learn_area`` with the working directory set to a satseg
checkout (the plugin zip does not ship ``training/``). Two plugin settings say
which:

- ``satseg/training_checkout``: the checkout folder (holds ``training/learn_area.py``);
  default: the folder above the plugin when the plugin runs from a checkout.
- ``satseg/training_python``: its Python; default: the checkout's ``.venv``, else
  the one the plugin made (``<profile>/python/satseg_training_venv``).

The module imports no Qt at import time: its check, ``TRAINING_REQUIREMENTS``, is
also run inside the training Python by ``probe_python`` (a subprocess).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .dependencies import (
    GDAL,
    MERCANTILE,
    NUMPY,
    ONNXRUNTIME,
    REQUESTS,
    Problem,
    Requirement,
    constraints_text,
    pip_command,
    python_executable,
    run_command,
)

PLUGIN_DIR = Path(__file__).resolve().parents[1]
KEY_CHECKOUT = "satseg/training_checkout"
KEY_PYTHON = "satseg/training_python"
VENV_DIR_NAME = "satseg_training_venv"
CLI_MODULE = "training.learn_area"
WHERE = "the training Python"
PROBE_TIMEOUT = 180.0  # importing torch on a busy 2-core laptop takes a while

#: What ``python -m training.learn_area`` imports (GDAL comes from the system, as for QGIS).
TRAINING_REQUIREMENTS: tuple[Requirement, ...] = (
    NUMPY,
    GDAL,
    Requirement("torch", "torch", "2.0"),
    Requirement("onnx", "onnx", "1.14"),
    Requirement("onnxscript", "onnxscript"),
    ONNXRUNTIME,
    MERCANTILE,
    REQUESTS,
    Requirement("h5py", "h5py", "3.0"),
)


@dataclass(frozen=True)
class TrainingRuntime:
    """A checkout folder and the Python that runs its ``training`` package."""

    checkout: str
    python: str

    def command(self, args: Sequence[str]) -> list[str]:
        """Return ``<python> -m training.learn_area <args>`` (run it with ``cwd=checkout``)."""
        return [self.python, "-m", CLI_MODULE, *args]

    def env(self) -> dict[str, str]:
        """The subprocess environment: QGIS's own Python paths removed, output unbuffered."""
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
        env["PYTHONUNBUFFERED"] = "1"
        return env


def is_checkout(folder: str | os.PathLike[str]) -> bool:
    """Return True when ``folder`` holds the ``training`` package with the learn_area CLI."""
    return bool(str(folder)) and (Path(folder) / "training" / "learn_area.py").is_file()


def default_checkout() -> str:
    """Return the checkout the plugin runs from (``satseg_plugin/`` inside it), else ""."""
    folder = PLUGIN_DIR.parent
    return str(folder) if (folder / "training").is_dir() else ""


def venv_python(venv: str | os.PathLike[str]) -> Path:
    """Return the interpreter of a venv folder (``bin/python`` or ``Scripts\\python.exe``)."""
    if sys.platform == "win32":
        return Path(venv) / "Scripts" / "python.exe"
    return Path(venv) / "bin" / "python"


def plugin_venv_dir() -> Path:
    """Return the folder of the training Python the plugin creates: ``<profile>/python/satseg_training_venv``."""
    from qgis.core import QgsApplication

    return Path(QgsApplication.qgisSettingsDirPath()) / "python" / VENV_DIR_NAME


def default_python(checkout: str) -> str:
    """Return the checkout's ``.venv`` Python, else the plugin-made one, else ""."""
    candidates = [venv_python(Path(checkout) / ".venv")] if checkout else []
    candidates.append(venv_python(plugin_venv_dir()))
    for c in candidates:
        if c.is_file():
            return str(c)
    return ""


def configured_runtime() -> TrainingRuntime:
    """Return the runtime of the settings, their defaults filling what is unset."""
    from qgis.core import QgsSettings

    checkout = str(QgsSettings().value(KEY_CHECKOUT, "") or "") or default_checkout()
    python = str(QgsSettings().value(KEY_PYTHON, "") or "") or default_python(checkout)
    return TrainingRuntime(checkout, python)


def remember_runtime(checkout: str, python: str) -> None:
    """Store the two settings; an empty value means "use the default"."""
    from qgis.core import QgsSettings

    QgsSettings().setValue(KEY_CHECKOUT, checkout)
    QgsSettings().setValue(KEY_PYTHON, python)


# --- checking the training Python ---------------------------------------------------------

_PROBE = (
    "import json, sys\n"
    "sys.path.insert(0, sys.argv[1])\n"
    "from satseg_plugin.ui.learn_runtime import TRAINING_REQUIREMENTS, WHERE\n"
    "from satseg_plugin.ui.dependencies import check_requirements\n"
    "print(json.dumps([[p.requirement.module, p.found] for p in "
    "check_requirements(TRAINING_REQUIREMENTS, WHERE)]))\n"
)
_PROBED: dict[tuple[str, float], list[Problem]] = {}


@dataclass(frozen=True)
class RuntimeCheck:
    """The outcome of ``check_runtime``: ``problems`` pip can fix, or an ``error`` it cannot."""

    runtime: TrainingRuntime
    problems: tuple[Problem, ...] = ()
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and not self.problems

    @property
    def message(self) -> str:
        """The plain-words reason training cannot start ("" when it can)."""
        if self.error:
            return self.error
        return "; ".join(p.message for p in self.problems)


def probe_python(python: str) -> list[Problem]:
    """Run the requirement check inside ``python``; return its problems (cached per interpreter file).

    Raises ``OSError`` when the interpreter cannot run the check at all.
    """
    key = (python, Path(python).stat().st_mtime)
    if key in _PROBED:
        return _PROBED[key]
    proc = subprocess.run(
        [python, "-c", _PROBE, str(PLUGIN_DIR.parent)],
        capture_output=True,
        text=True,
        timeout=PROBE_TIMEOUT,
        check=False,
        env=TrainingRuntime("", python).env(),
    )
    if proc.returncode != 0:
        raise OSError(f"{python} could not run the check: {proc.stderr.strip().splitlines()[-1:]}")
    found = dict(json.loads(proc.stdout.strip().splitlines()[-1]))
    problems = [Problem(r, found[r.module], WHERE) for r in TRAINING_REQUIREMENTS if r.module in found]
    _PROBED[key] = problems
    return problems


def check_runtime(runtime: TrainingRuntime) -> RuntimeCheck:
    """Say whether ``runtime`` can train: a checkout with ``training/``, a Python with torch."""
    if not runtime.checkout:
        return RuntimeCheck(
            runtime,
            error="no satseg checkout is set: training needs a clone of the satseg repository "
            "(its training/ folder); set it under 'satseg checkout'",
        )
    if not is_checkout(runtime.checkout):
        return RuntimeCheck(
            runtime,
            error=f"{runtime.checkout} is not a satseg checkout (there is no training/learn_area.py in it)",
        )
    if not runtime.python:
        return RuntimeCheck(runtime, problems=tuple(Problem(r, None, WHERE) for r in TRAINING_REQUIREMENTS))
    if not Path(runtime.python).is_file():
        return RuntimeCheck(runtime, error=f"the training Python {runtime.python} does not exist")
    try:
        problems = probe_python(runtime.python)
    except (OSError, ValueError, subprocess.TimeoutExpired) as exc:
        return RuntimeCheck(runtime, error=f"the training Python {runtime.python} does not work: {exc}")
    # even GDAL missing is fixable: the venv offered sees the system's packages, GDAL included
    return RuntimeCheck(runtime, problems=tuple(problems))


# --- making a training Python -------------------------------------------------------------


def create_venv_commands(venv: Path, problems: Sequence[Problem], constraints: Path) -> list[list[str]]:
    """Return the commands that make ``venv`` (seeing the system's GDAL) and pip-install what is missing."""
    return [
        [python_executable(), "-m", "venv", "--system-site-packages", str(venv)],
        pip_command(problems, None, constraints, python=str(venv_python(venv))),
    ]


def create_venv(venv: Path, problems: Sequence[Problem]) -> tuple[bool, str]:
    """Make the training venv; return (success, log). Blocks for minutes (torch is large)."""
    venv.parent.mkdir(parents=True, exist_ok=True)
    constraints = venv.parent / "satseg-training-constraints.txt"
    constraints.write_text(constraints_text())
    logs = []
    for cmd in create_venv_commands(venv, problems, constraints):
        ok, log = run_command(cmd, timeout=3600)
        logs.append(log)
        if not ok:
            return False, "\n".join(logs)
    return True, "\n".join(logs)


def offer_training_python(iface: Any, check: RuntimeCheck) -> bool:
    """Explain why training cannot start and, when pip can fix it, offer to make a training Python.

    Returns True when an install was started.
    """
    from qgis.core import Qgis
    from qgis.PyQt.QtWidgets import QMessageBox

    from .dependencies import start_background

    if check.error or not check.problems:
        iface.messageBar().pushMessage("satseg", f"cannot train yet: {check.message}", Qgis.Critical, 0)
        return False
    venv = plugin_venv_dir()
    names = ", ".join(p.requirement.spec for p in check.problems if p.requirement.pip_installable)
    where = check.runtime.python or "(none is set)"
    answer = QMessageBox.question(
        iface.mainWindow(),
        "satseg: no Python for training",
        "Training runs in a separate Python that has torch (QGIS's own Python never loads it).\n\n"
        f"The training Python {where} cannot train:\n"
        + "\n".join(f"• {p.message}" for p in check.problems)
        + f"\n\nCreate one at {venv} and install {names} with pip?\n"
        "(About 1 GB to download; QGIS's own packages are left alone.)",
        QMessageBox.Yes | QMessageBox.No,
        QMessageBox.Yes,
    )
    if answer != QMessageBox.Yes:
        return False
    checkout = check.runtime.checkout

    def done(ok: bool) -> tuple[bool, str]:
        python = str(venv_python(venv))
        _PROBED.clear()
        after = check_runtime(TrainingRuntime(checkout, python))
        if ok and after.ok:
            remember_runtime(checkout, python)
            return True, f"the training Python is ready ({python}); click Train on this area again"
        return False, (
            "creating the training Python failed; pip's output is in the satseg tab of the Log Messages panel"
        )

    start_background(
        iface,
        "satseg: creating the training Python",
        lambda: create_venv(venv, check.problems),
        done,
    )
    return True
