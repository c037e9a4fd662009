"""Defaults of the "Segment extent" dialog and what it remembers between sessions."""

from __future__ import annotations

from pathlib import Path

from qgis.core import QgsApplication, QgsSettings

from ..inference.model import DEFAULT_MODEL_DIRS
from ..inference.model import default_model_path as shipped_model_path

KEY_MODEL = "satseg/model"
KEY_OUT_DIR = "satseg/out_dir"
KEY_OUTPUTS = "satseg/outputs"
KEY_MODEL_DIRS = "satseg/model_dirs"  # folders of models made by "Train on this area"


def bundled_models_dirs() -> list[Path]:
    """Folders searched for a default model: the plugin's ``models/``, then a checkout's ``models/``."""
    return list(DEFAULT_MODEL_DIRS)


def default_model_path() -> str:
    """The core's shipped model (``inference.model.default_model_path``), else the first bundled ``.onnx``, else ""."""
    shipped = shipped_model_path()  # by name: the fp32 model, even when an int8 one sorts first
    if shipped is not None:
        return str(shipped)
    for folder in bundled_models_dirs():
        if folder.is_dir():
            models = sorted(folder.glob("*.onnx"))
            if models:
                return str(models[0])
    return ""


def model_dirs() -> list[Path]:
    """Folders the Segment extent dialog lists models from: the bundled ones, then those added."""
    raw = QgsSettings().value(KEY_MODEL_DIRS, []) or []
    added = [Path(p) for p in ([raw] if isinstance(raw, str) else raw) if p]
    return [*bundled_models_dirs(), *added]


def add_model_dir(folder: str | Path) -> None:
    """Add ``folder`` (where a trained model was written) to the folders the dialog lists."""
    raw = QgsSettings().value(KEY_MODEL_DIRS, []) or []
    dirs = [str(p) for p in ([raw] if isinstance(raw, str) else raw) if p]
    folder = str(Path(folder).resolve())
    if folder not in dirs:
        QgsSettings().setValue(KEY_MODEL_DIRS, [*dirs, folder])


def known_models() -> list[str]:
    """Return the ``.onnx`` files of ``model_dirs()`` that exist, each once, in folder order."""
    seen: dict[str, None] = {}
    for folder in model_dirs():
        if folder.is_dir():
            for path in sorted(folder.glob("*.onnx")):
                seen.setdefault(str(path.resolve()), None)
    return list(seen)


def remembered_model_path() -> str:
    """Return the model chosen last time if it still exists, else the bundled default."""
    path = str(QgsSettings().value(KEY_MODEL, "") or "")
    if path and Path(path).is_file():
        return path
    return default_model_path()


def remember_model_path(path: str) -> None:
    QgsSettings().setValue(KEY_MODEL, path)


def default_out_dir() -> str:
    """Return the folder runs are written under by default: ``<profile>/satseg/runs``."""
    return str(Path(QgsApplication.qgisSettingsDirPath()) / "satseg" / "runs")


def remembered_out_dir() -> str:
    return str(QgsSettings().value(KEY_OUT_DIR, "") or "") or default_out_dir()


def remember_out_dir(path: str) -> None:
    QgsSettings().setValue(KEY_OUT_DIR, path)


def remembered_outputs() -> tuple[bool, bool, bool]:
    """Return the (classes, heatmaps, counts) choice of last time; all on by default."""
    raw = str(QgsSettings().value(KEY_OUTPUTS, "111") or "111")
    bits = (raw + "111")[:3]
    return bits[0] == "1", bits[1] == "1", bits[2] == "1"


def remember_outputs(classes: bool, heatmaps: bool, counts: bool) -> None:
    QgsSettings().setValue(KEY_OUTPUTS, "".join("1" if b else "0" for b in (classes, heatmaps, counts)))
