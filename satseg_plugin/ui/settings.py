"""Defaults of the "Segment extent" dialog and what it remembers between sessions."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from qgis.core import QgsApplication, QgsSettings

from ..inference.model import DEFAULT_MODEL_DIRS
from ..inference.model import default_model_path as shipped_model_path

KEY_MODEL = "satseg/model"
KEY_OUT_DIR = "satseg/out_dir"
KEY_OUTPUTS = "satseg/outputs"
KEY_MODEL_DIRS = "satseg/model_dirs"  # folders of models made by "Train on this area"
KEY_VECTORS = "satseg/vectors"
KEY_MIN_AREA = "satseg/min_area_m2"
KEY_SIMPLIFY = "satseg/simplify_m"
KEY_AREA_LAYER = "satseg/area_layer"
KEY_SELECTED_ONLY = "satseg/selected_only"
KEY_BANDS = "satseg/bands"  # JSON: model path -> the band mapping typed for it
#: Every choice the Segment extent dialog remembers (tests clear them all).
REMEMBERED_KEYS = (
    KEY_MODEL, KEY_OUT_DIR, KEY_OUTPUTS, KEY_VECTORS, KEY_MIN_AREA, KEY_SIMPLIFY, KEY_AREA_LAYER,
    KEY_SELECTED_ONLY, KEY_BANDS,
)  # fmt: skip


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


@dataclass(frozen=True)
class CleaningChoice:
    """The dialog's polygons, cleaning and processing-area choices, as last accepted.

    ``min_area_m2`` and ``simplify_m`` None: off. ``area_layer_id`` None: the visible extent;
    a layer id, kept with the project, so the same project reopens on the same area layer.
    """

    vectors: bool = False
    min_area_m2: float | None = None
    simplify_m: float | None = None
    area_layer_id: str | None = None
    selected_only: bool = True


def _text(key: str) -> str:
    return str(QgsSettings().value(key, "") or "")


def _number(key: str) -> float | None:
    """A remembered number; None when none was stored or it does not read as one."""
    try:
        return float(_text(key)) if _text(key) else None
    except ValueError:
        return None


def remembered_cleaning() -> CleaningChoice:
    """The choice of last time; the defaults (no polygons, no cleaning, the visible extent) at first.

    Stored as text ("1"/"0", numbers, ""), which every QSettings back end gives back as it was.
    """
    return CleaningChoice(
        vectors=_text(KEY_VECTORS) == "1",
        min_area_m2=_number(KEY_MIN_AREA),
        simplify_m=_number(KEY_SIMPLIFY),
        area_layer_id=_text(KEY_AREA_LAYER) or None,
        selected_only=_text(KEY_SELECTED_ONLY) != "0",
    )


def remember_cleaning(choice: CleaningChoice) -> None:
    settings = QgsSettings()
    settings.setValue(KEY_VECTORS, "1" if choice.vectors else "0")
    settings.setValue(KEY_MIN_AREA, "" if choice.min_area_m2 is None else repr(float(choice.min_area_m2)))
    settings.setValue(KEY_SIMPLIFY, "" if choice.simplify_m is None else repr(float(choice.simplify_m)))
    settings.setValue(KEY_AREA_LAYER, choice.area_layer_id or "")
    settings.setValue(KEY_SELECTED_ONLY, "1" if choice.selected_only else "0")


def _bands_by_model() -> dict[str, str]:
    try:
        stored = json.loads(_text(KEY_BANDS) or "{}")
    except json.JSONDecodeError:
        return {}
    return {str(k): str(v) for k, v in stored.items()} if isinstance(stored, dict) else {}


def remembered_bands(model_path: str) -> str:
    """The band mapping last typed for ``model_path`` ("" for none: the model's own default).

    Kept per model: a mapping is the order of one model's input bands, and another model's
    (an RGB one after an RGB + near-infrared one) would refuse it.
    """
    return _bands_by_model().get(str(Path(model_path).resolve()) if model_path else "", "")


def remember_bands(model_path: str, text: str) -> None:
    if not model_path:
        return
    stored = _bands_by_model()
    key = str(Path(model_path).resolve())
    if text.strip():
        stored[key] = text.strip()
    else:
        stored.pop(key, None)
    QgsSettings().setValue(KEY_BANDS, json.dumps(stored))
