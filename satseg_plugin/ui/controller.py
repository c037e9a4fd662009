"""What the Segment extent and Train on this area controllers share: warnings, the dialog's run, task upkeep."""

from __future__ import annotations

from typing import Any

from qgis.core import Qgis, QgsApplication

from ..inference.errors import SatsegError
from .messages import MESSAGE_SECONDS


class TaskController:
    """Starts background tasks from a dialog and keeps their Python wrappers alive until they end.

    A subclass opens its dialog (connecting ``run_requested`` to ``_dialog_run``)
    and implements ``start(choices)``, handing each task it makes to ``_keep``.
    """

    def __init__(self, iface: Any) -> None:
        self.iface = iface
        self.tasks: list[Any] = []
        self.dialog: Any = None

    def start(self, choices: Any) -> Any:
        raise NotImplementedError

    def _warn(self, text: str) -> None:
        self.iface.messageBar().pushMessage("satseg", text, Qgis.Warning, MESSAGE_SECONDS)

    def _dialog_run(self, dialog: Any) -> None:
        try:
            choices = dialog.choices()
        except SatsegError as exc:
            self._warn(str(exc))
            return
        self.start(choices)

    def _keep(self, task: Any) -> None:
        """Keep ``task`` until it ends, and hand it to QGIS's task manager."""
        self.tasks.append(task)
        # QGIS owns the C++ task, but Python must keep its wrapper until the task ends. A bound
        # method (PyQt holds it weakly), not a lambda holding the task: an ended task must not
        # be a reference cycle (see SegmentTask.finished).
        task.taskCompleted.connect(self._forget_ended)
        task.taskTerminated.connect(self._forget_ended)
        QgsApplication.taskManager().addTask(task)

    def _release(self, task: Any) -> None:
        """Free what was made for ``task`` besides the task itself, once it has ended (nothing here)."""

    def _forget_ended(self) -> None:
        """Let go of the tasks that have ended (their ``finished`` has run)."""
        for task in [t for t in self.tasks if t.ended]:
            self._release(task)
            self.tasks.remove(task)
