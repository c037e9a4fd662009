"""The Segment extent dialog's int8 option: offered only where it was measured faster on this machine.

A model's int8 copy (``<name>-int8.onnx`` beside it) is faster on some CPUs and slower on
others (``inference.int8speed``), so the dialog shows a check box only for a model that has
one, says the speed measured here ("int8: 1.12x faster on this CPU", "int8 not offered: 0.93x
on this CPU"), and enables it only where int8 was clearly faster. The measurement runs once per
model files, CPU and onnxruntime, in a background task (seconds on a busy 2-core machine: the
dialog stays usable), and its result is kept in ``<profile>/satseg/int8_speed.json``.
``SATSEG_INT8_MEASURE=0`` in the environment measures nothing (the option then says so): for
machines where even a few seconds of background work are unwelcome, and for the tests.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from qgis.core import QgsApplication, QgsTask
from qgis.PyQt.QtWidgets import QCheckBox

from ..inference.int8speed import (
    Int8Speed,
    int8_twin,
    lookup_int8_speed,
    measure_and_cache,
    measure_int8_speed,
)


def int8_speed_file() -> Path:
    """Where the measurements are cached: ``<profile>/satseg/int8_speed.json``."""
    return Path(QgsApplication.qgisSettingsDirPath()) / "satseg" / "int8_speed.json"


class Int8Choice:
    """The check box "use the int8 copy" and what it knows about the current model.

    ``model_changed(path)`` at every change of model; ``model_for_run(path)`` gives the file
    to run (the int8 copy only when offered and ticked). ``measure`` is the measuring function
    (default ``measure_int8_speed``; tests inject timings through it); ``task`` is the running
    measurement, if any.
    """

    def __init__(self, measure: Callable[[Path, Path], Int8Speed] | None = None) -> None:
        self.check = QCheckBox()
        self.check.setObjectName("satsegInt8")
        self.check.setToolTip(
            "Run the model's int8 copy (the shipped ones score within half a point of mIoU of their "
            "models): offered only where a measurement on this machine found it faster"
        )
        self.check.setHidden(True)
        self.measure = measure
        self.path = ""
        self.twin: Path | None = None
        self.speed: Int8Speed | None = None
        self.task: QgsTask | None = None
        self._failed: dict[str, str] = {}  # path -> why it could not be measured (not retried)
        self._speeds: dict[str, Int8Speed] = {}  # measured in this dialog (a read-only profile keeps none)

    def model_changed(self, path: str) -> None:
        """Show the int8 option for ``path``: hidden without a copy, else the cached or a new measurement."""
        self.path, self.speed = path, None
        self.twin = int8_twin(path) if path and Path(path).is_file() else None
        self.check.setChecked(False)
        self.check.setEnabled(False)
        self.check.setHidden(self.twin is None)
        if self.twin is None:
            return
        if path in self._failed:
            self.check.setText(f"int8 not offered: its speed could not be measured ({self._failed[path]})")
            return
        try:
            speed = lookup_int8_speed(path, int8_speed_file()) or self._speeds.get(path)
        except OSError:  # a model file gone meanwhile
            speed = self._speeds.get(path)
        except ImportError as exc:  # no onnxruntime: nothing can run, the model line says what to install
            self.check.setText(f"int8 not offered: {exc.name or exc} is not installed")
            return
        if speed is not None:
            self._show(speed)
            return
        if os.environ.get("SATSEG_INT8_MEASURE", "1") == "0":
            self.check.setText("int8 not offered: not measured on this CPU (SATSEG_INT8_MEASURE=0)")
            return
        self.check.setText(f"int8: measuring {self.twin.name} against the model on this CPU...")
        if self.task is None:  # one measurement at a time; the next model is looked at when it ends
            self._start(path)

    def model_for_run(self, path: str) -> str:
        """The file to run for the chosen ``path``: its int8 copy when offered and ticked."""
        if self.twin is not None and path == self.path and self.check.isEnabled() and self.check.isChecked():
            return str(self.twin)
        return path

    def _show(self, speed: Int8Speed) -> None:
        self.speed = speed
        self.check.setText(speed.text() + (f" (use {self.twin.name})" if speed.offered and self.twin else ""))
        self.check.setEnabled(speed.offered)

    def _start(self, path: str) -> None:
        measure = self.measure or measure_int8_speed

        def run(task: QgsTask, model: str, cache: Path) -> Int8Speed:  # in the task's thread: no Qt here
            return measure_and_cache(model, cache, measure)

        task = QgsTask.fromFunction(
            f"satseg: int8 speed of {Path(path).name} on this CPU",
            run,
            path,
            int8_speed_file(),
            on_finished=self._measured,
        )
        task.measured_path = path  # type: ignore[attr-defined]
        self.task = task
        QgsApplication.taskManager().addTask(task)

    def _measured(self, exception: BaseException | None, result: Any = None) -> None:
        """On the main thread when the measurement ended: show it, or measure the model chosen since."""
        task, self.task = self.task, None
        measured = getattr(task, "measured_path", "")
        if exception is not None:
            first = (
                str(exception).strip().splitlines()[0] if str(exception).strip() else type(exception).__name__
            )
            self._failed[measured] = first[:160]
        elif isinstance(result, Int8Speed):
            self._speeds[measured] = result
        with contextlib.suppress(RuntimeError):  # RuntimeError: the dialog (and its check box) is gone
            self.model_changed(self.path)  # the cached result, the failure, or the next measurement
