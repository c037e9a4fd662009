"""What the background tasks of the plugin tell the user: the message bar and the satseg log tab."""

from __future__ import annotations

from typing import Any

from qgis.core import Qgis, QgsMessageLog

LOG_TAG = "satseg"
MESSAGE_SECONDS = 10


def push_unfinished(
    bar: Any,
    action: str,
    cancelled: bool,
    error: str | None,
    bug: str | None,
    seconds: int = MESSAGE_SECONDS,
) -> None:
    """Say in ``bar`` why ``action`` (e.g. "Segment extent") added nothing.

    Cancelled: a short note. Else ``error`` (a user-facing message), shown for
    ``seconds`` (0: until closed). Else a bug: ``bug`` (a traceback) goes to the
    log and the bar points there, for ``seconds`` too.
    """
    if cancelled:
        bar.pushMessage("satseg", f"{action} was cancelled; nothing was added", Qgis.Info, MESSAGE_SECONDS)
    elif error is not None:
        bar.pushMessage("satseg", error, Qgis.Warning, seconds)
    else:
        QgsMessageLog.logMessage(bug or "", LOG_TAG, Qgis.Critical)
        bar.pushMessage(
            "satseg",
            f"{action} failed unexpectedly; the details are in the satseg tab of the Log Messages panel "
            "(please report them)",
            Qgis.Critical,
            seconds,
        )
