"""The QgsTask that runs ``training.learn_area`` in the training Python and reports in the task bar."""

from __future__ import annotations

import shutil
import traceback
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from qgis.core import Qgis, QgsMessageLog, QgsTask
from qgis.PyQt.QtCore import QTimer

from ..inference.errors import Cancelled, SatsegError
from . import settings
from .learn_process import LearnCrashError, LearnProgress, LearnRequest, LearnResult, run_learn
from .learn_runtime import TrainingRuntime
from .messages import LOG_TAG, MESSAGE_SECONDS, push_unfinished

TITLE = "satseg: train on this area"
LOG_LINES = 200
DONE_MESSAGE_DELAY_MS = 300


class LearnTask(QgsTask):
    """Train on one area in a subprocess; on success list the model, show the table, offer to segment.

    The task bar shows the phase, epoch, validation IoU and time left (the
    description) and the overall fraction (the progress). Cancelling sends
    SIGTERM (kill after a grace period); the CLI removes what it had half-written
    and the task adds nothing. ``cleanup`` (temporary folders, e.g. an OSM layer
    written as GeoJSON) is removed whatever the outcome.

    Plain attributes readable after QGIS deleted the C++ task: ``outcome``
    ("done", "cancelled", "error" or "bug"), ``result``, ``error``, ``bug``,
    ``steps`` (every progress line), ``report_dialog``, ``segment_button``.
    """

    def __init__(
        self,
        runtime: TrainingRuntime,
        request: LearnRequest,
        message_bar: Any,
        segment_with: Callable[[str], None] | None = None,
        parent_widget: Any = None,
        cleanup: list[str] | None = None,
        grace: float | None = None,
    ) -> None:
        super().__init__(TITLE, QgsTask.CanCancel)
        self.runtime = runtime
        self.request = request
        self.message_bar = message_bar
        self.segment_with = segment_with
        self.parent_widget = parent_widget
        self.cleanup = list(cleanup or [])
        self.grace = grace
        self.result: LearnResult | None = None
        self.error: str | None = None
        self.bug: str | None = None
        self.outcome: str | None = None
        self.steps: list[LearnProgress] = []
        self.log_lines: deque[str] = deque(maxlen=LOG_LINES)
        self.report_dialog: Any = None
        self.segment_button: Any = None
        self.ended = False

    # --- worker thread -------------------------------------------------------------------
    def _progress(self, step: LearnProgress) -> None:
        self.steps.append(step)
        self.setDescription(f"{TITLE}: {step.describe()}")
        self.setProgress(100.0 * step.fraction)

    def run(self) -> bool:
        """Run the CLI to its end; never touches widgets or the project (worker thread)."""
        kwargs = {} if self.grace is None else {"grace": self.grace}
        try:
            self.result = run_learn(
                self.runtime,
                self.request,
                progress=self._progress,
                is_cancelled=self.isCanceled,
                log=self.log_lines.append,
                **kwargs,
            )
            self.outcome = "done"
            return True
        except Cancelled:
            self.outcome = "cancelled"
        except SatsegError as exc:
            self.error, self.outcome = str(exc), "error"
        except LearnCrashError as exc:
            self.bug, self.outcome = f"{exc}\n{exc.details}", "bug"
        except Exception:
            self.bug, self.outcome = traceback.format_exc(), "bug"
        finally:
            for folder in self.cleanup:
                shutil.rmtree(folder, ignore_errors=True)
        return False

    # --- main thread ---------------------------------------------------------------------
    def finished(self, ok: bool) -> None:
        try:
            self._report(ok)
        except Exception:  # an exception escaping a Qt virtual aborts QGIS: log it instead
            QgsMessageLog.logMessage(traceback.format_exc(), LOG_TAG, Qgis.Critical)
        finally:
            self.ended = True

    def _report(self, ok: bool) -> None:
        from .learn_results import ReportDialog, push_done_message

        bar = self.message_bar
        if self.log_lines:
            QgsMessageLog.logMessage("\n".join(self.log_lines), LOG_TAG, Qgis.Info)
        if ok and self.result is not None:
            settings.add_model_dir(Path(self.result.model).parent)
            try:
                self.report_dialog = ReportDialog(self.result, self.parent_widget)
                self.report_dialog.show()
            except (OSError, SatsegError) as exc:
                bar.pushMessage("satseg", f"the report cannot be shown: {exc}", Qgis.Warning, MESSAGE_SECONDS)
            if self.segment_with is not None:
                result, segment_with = self.result, self.segment_with

                def push() -> None:
                    self.segment_button = push_done_message(bar, result, segment_with)

                # after QGIS's own "Task complete" message, or that one hides the button
                QTimer.singleShot(DONE_MESSAGE_DELAY_MS, push)
            else:
                bar.pushMessage(
                    "satseg", f"the new model is {self.result.model}", Qgis.Success, MESSAGE_SECONDS
                )
        else:
            push_unfinished(
                bar,
                "Train on this area",
                cancelled=self.outcome == "cancelled" or self.isCanceled(),
                error=None if self.error is None else f"cannot train: {self.error}",
                bug=self.bug,
                seconds=0,  # a failed training run (minutes of work) stays until read
            )
