"""What a finished "Train on this area" shows: the before/after table and "Segment with it"."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from qgis.core import Qgis
from qgis.gui import QgsMessageBar
from qgis.PyQt.QtCore import Qt
from qgis.PyQt.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QHeaderView,
    QLabel,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from .learn_process import LearnResult, read_report

SEGMENT_BUTTON_NAME = "satsegSegmentWithIt"


class ReportDialog(QDialog):
    """The report.csv of a run as a table (columns as the file names them), with the model's paths."""

    def __init__(self, result: LearnResult, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("satsegLearnReport")
        self.setWindowTitle(f"Train on this area: {Path(result.model).stem}, before and after")
        self.setMinimumWidth(560)
        header, rows = read_report(result.report)
        self.table = QTableWidget(len(rows), len(header))
        self.table.setObjectName("satsegLearnReportTable")
        self.table.setHorizontalHeaderLabels(header)
        for r, row in enumerate(rows):
            for c, value in enumerate(row[: len(header)]):
                item = QTableWidgetItem(_pretty(value))
                item.setToolTip(value)
                self.table.setItem(r, c, item)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.Stretch)
        self.table.setEditTriggers(QTableWidget.NoEditTriggers)
        self.verdict = QLabel(
            f"<b>{result.verdict[:1].upper()}{result.verdict[1:]}.</b>" if result.verdict else ""
        )
        self.verdict.setObjectName("satsegLearnVerdict")
        self.verdict.setWordWrap(True)
        info = QLabel(
            f"Held-out IoU per class of the base model and of the new one.<br>Model: {result.model}<br>"
            f"Model card: {result.card}<br>Report: {result.report}"
        )
        info.setWordWrap(True)
        info.setTextInteractionFlags(Qt.TextSelectableByMouse)  # the paths can be copied
        buttons = QDialogButtonBox(QDialogButtonBox.Close)
        buttons.rejected.connect(self.close)
        layout = QVBoxLayout(self)
        if result.verdict:
            layout.addWidget(self.verdict)
        layout.addWidget(self.table)
        layout.addWidget(info)
        layout.addWidget(buttons)


def _pretty(value: str) -> str:
    """Numbers with four decimals or fewer; everything else as written."""
    try:
        number = float(value)
    except ValueError:
        return value
    return value if value.lstrip("-").isdigit() else f"{number:.4f}".rstrip("0").rstrip(".")


def push_done_message(bar: Any, result: LearnResult, segment_with: Callable[[str], None]) -> QPushButton:
    """Say the model is ready, with a "Segment with it" button; return the button.

    A message bar that cannot hold widgets (pytest-qgis's stand-in) gets the text
    only; the button is made all the same.
    """
    text = f"the new model {Path(result.model).name} is ready"
    widget = QgsMessageBar.createMessage("satseg", text)
    button = QPushButton("Segment with it")
    button.setObjectName(SEGMENT_BUTTON_NAME)
    button.clicked.connect(lambda: segment_with(result.model))
    widget.layout().addWidget(button)
    if hasattr(bar, "pushWidget"):
        bar.pushWidget(widget, Qgis.Success, 0)
    else:
        bar.pushMessage("satseg", text, Qgis.Success, 0)
    return button
