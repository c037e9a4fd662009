"""The "satseg diagnostics" report: versions, onnxruntime providers, the chosen model."""

from __future__ import annotations

import platform
import sys
from typing import Any

from .dependencies import REQUIREMENTS, check_requirements, installed_version


def diagnostics_report(model_path: str, qgis_version: str = "") -> str:
    """Return a plain-text report a user can read or paste into a bug report (never raises)."""
    lines = [
        f"QGIS {qgis_version}".rstrip(),
        f"Python {sys.version.split()[0]} ({sys.executable}) on {platform.platform()}",
        "",
        "Packages:",
    ]
    problems = {p.requirement.module: p for p in check_requirements()}
    for req in REQUIREMENTS:
        found = installed_version(req.module)
        state = "missing" if found is None else (found or "installed")
        if req.module in problems and found is not None:
            state += f"  (needs {req.spec})"
        lines.append(f"  {req.package:<12} {state}")
    lines.append("")
    try:
        import onnxruntime as ort

        lines.append(f"onnxruntime execution providers available: {', '.join(ort.get_available_providers())}")
    except Exception as exc:  # missing or broken: the report still has to come out
        lines.append(f"onnxruntime unavailable: {exc}")
    lines += ["", f"Model: {model_path or '(none chosen)'}"]
    if model_path:
        lines += _model_lines(model_path)
    return "\n".join(lines) + "\n"


def _model_lines(model_path: str) -> list[str]:
    try:
        from ..inference.model import SegModel

        model = SegModel.load(model_path)
    except Exception as exc:
        return [f"  cannot be used: {exc}"]
    meta = model.metadata
    out = [
        f"  classes: {', '.join(f'{n} ({c})' for n, c in zip(meta.class_names, meta.class_colors, strict=True))}",
        f"  windows: {meta.tile_size} px, overlap {meta.tiles_overlap} %",
        f"  zoom: {meta.zoom}, resolution: {meta.resolution_cm} cm/px",
        f"  normalisation: mean {list(meta.mean)}, std {list(meta.std)}",
        f"  model type: {meta.model_type}, satseg schema: {meta.schema}",
    ]
    session = getattr(model, "session", None)
    if session is not None and hasattr(session, "get_providers"):
        out.append(f"  execution providers in use: {', '.join(session.get_providers())}")
    return out


def show_diagnostics(iface: Any, model_path: str) -> Any:
    """Show the report in a dialog with a copy-friendly text box; return the dialog."""
    from qgis.core import Qgis
    from qgis.PyQt.QtGui import QFont
    from qgis.PyQt.QtWidgets import QDialog, QDialogButtonBox, QPlainTextEdit, QPushButton, QVBoxLayout

    from .dependencies import offer_install

    dialog = QDialog(iface.mainWindow())
    dialog.setObjectName("satsegDiagnostics")
    dialog.setWindowTitle("satseg diagnostics")
    dialog.resize(720, 420)
    text = QPlainTextEdit(diagnostics_report(model_path, Qgis.QGIS_VERSION))
    text.setReadOnly(True)
    text.setFont(QFont("monospace"))
    buttons = QDialogButtonBox(QDialogButtonBox.Close)
    problems = check_requirements()
    if problems:
        install = QPushButton("Install missing packages…")
        install.clicked.connect(lambda: (dialog.accept(), offer_install(iface, problems)))
        buttons.addButton(install, QDialogButtonBox.ActionRole)
    buttons.rejected.connect(dialog.reject)
    layout = QVBoxLayout(dialog)
    layout.addWidget(text)
    layout.addWidget(buttons)
    dialog.show()
    return dialog
