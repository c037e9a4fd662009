"""Python packages satseg needs inside QGIS: check them, explain, install them on request.

The checking is plain Python (``check_requirements``, ``pip_command``) so it can be
tested and reused without Qt; the offer to install and the install task are the Qt part.
Packages go into a plugin-owned folder (``<profile>/python/satseg_deps``) put first on
``sys.path``; QGIS's own packages are never replaced and numpy 2 never enters QGIS.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEPS_DIR_NAME = "satseg_deps"


@dataclass(frozen=True)
class Requirement:
    """A module satseg imports, the pip package that provides it and the versions accepted."""

    module: str
    package: str
    minimum: str | None = None
    below: str | None = None  # first version not accepted (numpy 2 breaks QGIS's compiled modules)
    pip_installable: bool = True  # GDAL comes with QGIS; pip cannot provide it

    @property
    def spec(self) -> str:
        """The pip requirement string, e.g. ``onnxruntime>=1.14``."""
        bounds = [f">={self.minimum}"] if self.minimum else []
        bounds += [f"<{self.below}"] if self.below else []
        return self.package + ",".join(bounds)


#: The requirements QGIS's Python and the training Python share (``learn_runtime`` lists these too).
NUMPY = Requirement("numpy", "numpy", "1.20", "2")
GDAL = Requirement("osgeo.gdal", "GDAL", "3.0", pip_installable=False)
ONNXRUNTIME = Requirement("onnxruntime", "onnxruntime", "1.14")
REQUESTS = Requirement("requests", "requests", "2.20")
MERCANTILE = Requirement("mercantile", "mercantile", "1.2")

REQUIREMENTS: tuple[Requirement, ...] = (NUMPY, GDAL, ONNXRUNTIME, REQUESTS, MERCANTILE)


@dataclass(frozen=True)
class Problem:
    """A requirement that is missing (``found`` None) or whose version is not accepted."""

    requirement: Requirement
    found: str | None
    where: str = "QGIS's Python"  # the interpreter checked, for the message

    @property
    def message(self) -> str:
        req = self.requirement
        if self.found is None:
            text = f"the Python package '{req.package}' is not installed in {self.where}"
        else:
            text = f"'{req.package}' {self.found} is installed but satseg needs {req.spec}"
        if not req.pip_installable:
            text += " (it comes with QGIS: reinstall or update QGIS)"
        return text


def version_tuple(version: str) -> tuple[int, ...]:
    """Return the leading numeric parts of a version: ``"1.23.2rc1"`` -> ``(1, 23, 2)``."""
    out = []
    for part in version.split("."):
        m = re.match(r"\d+", part)
        if not m:
            break
        out.append(int(m.group()))
    return tuple(out)


def installed_version(module: str) -> str | None:
    """Import ``module`` and return its version ("" when it has none), or None when it does not import."""
    try:
        mod = importlib.import_module(module)
    except Exception:  # a broken install (wrong ABI, missing DLL) counts as missing
        return None
    version = getattr(mod, "__version__", None)
    if version is None:
        top = module.split(".")[0]
        try:
            version = importlib.metadata.version(top)
        except importlib.metadata.PackageNotFoundError:
            version = ""
    return str(version)


def check_requirements(
    requirements: Sequence[Requirement] = REQUIREMENTS, where: str = "QGIS's Python"
) -> list[Problem]:
    """Return the requirements that are missing or of a version outside their bounds.

    Runs in the Python that imports this module; ``learn_runtime`` runs it inside
    the training Python (a subprocess) to check that one.
    """
    problems = []
    for req in requirements:
        found = installed_version(req.module)
        if found is None:
            problems.append(Problem(req, None, where))
            continue
        v = version_tuple(found)
        too_old = bool(req.minimum and v and v < version_tuple(req.minimum))
        too_new = bool(req.below and v and v >= version_tuple(req.below))
        if too_old or too_new:
            problems.append(Problem(req, found, where))
    return problems


def deps_dir(settings_dir: str | os.PathLike[str]) -> Path:
    """Return the plugin-owned package folder under a QGIS profile folder."""
    return Path(settings_dir) / "python" / DEPS_DIR_NAME


def add_deps_to_path(folder: str | os.PathLike[str]) -> bool:
    """Put ``folder`` first on ``sys.path`` if it exists; return True when it is there."""
    path = str(folder)
    if not Path(path).is_dir():
        return False
    if path in sys.path:
        sys.path.remove(path)
    sys.path.insert(0, path)
    importlib.invalidate_caches()
    return True


def python_executable() -> str:
    """Return the Python interpreter that runs QGIS's Python (``sys.executable`` is QGIS itself there)."""
    exe = Path(sys.executable)
    if exe.name.lower().startswith("python"):
        return str(exe)
    candidates = [
        Path(sys.prefix) / "python.exe",  # Windows (OSGeo4W, standalone installer)
        Path(sys.exec_prefix) / "bin" / "python3",  # macOS bundle, conda
        Path(sys.prefix) / "bin" / f"python{sys.version_info.major}.{sys.version_info.minor}",
    ]
    for c in candidates:
        if c.is_file():
            return str(c)
    return (
        shutil.which(f"python{sys.version_info.major}.{sys.version_info.minor}")
        or shutil.which("python3")
        or "python3"
    )


def constraints_text() -> str:
    """Return the pip constraints: numpy stays below 2, at QGIS's own version when it has one."""
    lines = ["numpy<2"]
    numpy_version = installed_version("numpy")
    if numpy_version and version_tuple(numpy_version) < (2,):
        lines.append(f"numpy=={numpy_version}")
    return "\n".join(lines) + "\n"


def pip_command(
    problems: Sequence[Problem],
    target: str | os.PathLike[str] | None,
    constraints: str | os.PathLike[str],
    python: str | None = None,
) -> list[str]:
    """Return the pip command line installing what ``problems`` lack.

    Into the folder ``target`` (QGIS's own Python: a plugin-owned folder), or, with
    ``target`` None, into the environment of ``python`` itself (a venv made for training).
    """
    specs = [p.requirement.spec for p in problems if p.requirement.pip_installable]
    where = ["--target", str(target)] if target is not None else []
    return [
        python or python_executable(),
        "-m",
        "pip",
        "install",
        "--disable-pip-version-check",
        "--no-input",
        "--upgrade",
        *where,
        "--constraint",
        str(constraints),
        *specs,
    ]


def run_command(cmd: Sequence[str], timeout: float = 1800) -> tuple[bool, str]:
    """Run ``cmd``; return (success, the command and its output). Blocks: call it off the main thread."""
    try:
        proc = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, f"{' '.join(cmd)}\n{exc}"
    return proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stdout}\n{proc.stderr}"


def run_pip(problems: Sequence[Problem], target: Path) -> tuple[bool, str]:
    """Install into ``target``; return (success, pip's output). Blocks: call it off the main thread."""
    target.mkdir(parents=True, exist_ok=True)
    constraints = target / "satseg-constraints.txt"
    constraints.write_text(constraints_text())
    return run_command(pip_command(problems, target, constraints))


# --- Qt part ------------------------------------------------------------------------------


def plugin_deps_dir() -> Path:
    from qgis.core import QgsApplication

    return deps_dir(QgsApplication.qgisSettingsDirPath())


def offer_install(iface: Any, problems: Sequence[Problem]) -> None:
    """Say what is missing in plain words and, when pip can fix it, offer to install it."""
    from qgis.core import Qgis
    from qgis.PyQt.QtWidgets import QMessageBox

    text = "satseg cannot run yet:\n\n" + "\n".join(f"• {p.message}" for p in problems)
    installable = [p for p in problems if p.requirement.pip_installable]
    if not installable:
        iface.messageBar().pushMessage(
            "satseg", text.replace("\n\n", " ").replace("\n", "; "), Qgis.Critical, 0
        )
        return
    names = ", ".join(p.requirement.spec for p in installable)
    answer = QMessageBox.question(
        iface.mainWindow(),
        "satseg: missing Python packages",
        f"{text}\n\nInstall {names} now with pip into {plugin_deps_dir()}?\n"
        "(QGIS's own packages are left alone; this needs an internet connection.)",
        QMessageBox.Yes | QMessageBox.No,
        QMessageBox.Yes,
    )
    if answer == QMessageBox.Yes:
        start_install(iface, installable)


_RUNNING: list[Any] = []  # keeps install tasks' Python wrappers alive


def start_background(
    iface: Any,
    title: str,
    work: Callable[[], tuple[bool, str]],
    done: Callable[[bool], tuple[bool, str]],
) -> Any:
    """Run ``work`` (blocking, returns (ok, log)) in a QgsTask, then ``done(ok)`` on the main thread.

    ``done`` returns (success, message) for the message bar; the log goes to the
    satseg tab of the Log Messages panel. Used for pip installs and for creating
    the training Python.
    """
    from qgis.core import Qgis, QgsApplication, QgsMessageLog, QgsTask

    class InstallTask(QgsTask):
        def __init__(self) -> None:
            super().__init__(title, QgsTask.Flags())
            self.output = ""

        def run(self) -> bool:
            ok, self.output = work()
            return ok

        def finished(self, ok: bool) -> None:
            QgsMessageLog.logMessage(self.output, "satseg", Qgis.Info if ok else Qgis.Critical)
            try:
                success, text = done(ok)
                level = Qgis.Success if success else Qgis.Critical
                iface.messageBar().pushMessage("satseg", text, level, 10 if success else 0)
            finally:
                if self in _RUNNING:
                    _RUNNING.remove(self)

    task = InstallTask()
    _RUNNING.append(task)
    QgsApplication.taskManager().addTask(task)
    return task


def start_install(iface: Any, problems: Sequence[Problem]) -> Any:
    """Run pip in a background QgsTask; report the outcome in the message bar."""
    target = plugin_deps_dir()

    def done(ok: bool) -> tuple[bool, str]:
        add_deps_to_path(target)
        if ok and not check_requirements():
            return True, "the Python packages are installed"
        return False, (
            "installing the Python packages failed; pip's output is in the satseg tab of the "
            "Log Messages panel"
        )

    return start_background(
        iface, "satseg: installing Python packages", lambda: run_pip(problems, target), done
    )
