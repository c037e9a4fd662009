"""A one-line description of a model file for the dialog and the diagnostics."""

from __future__ import annotations

from pathlib import Path


def describe_model(path: str) -> tuple[str, int | None]:
    """Return ``(summary, zoom)`` for the model at ``path``; never raises.

    The summary names the classes, tile size and zoom, or says in plain words
    why the file cannot be used (missing, not a segmentation model...). ``zoom``
    is the model's XYZ zoom or None. Read from the file (``read_model_info``), not
    through an onnxruntime session: the dialog calls this on opening and at every
    change of model, and the run creates the one session it needs.
    """
    if not path:
        return "no model chosen: pick an .onnx segmentation model", None
    if not Path(path).is_file():
        return f"{path} does not exist", None
    try:
        from ..inference.errors import SatsegError
        from ..inference.model import read_model_info
    except ImportError as exc:
        if (exc.name or "").startswith("satseg_plugin"):  # a broken install, not a missing package
            return f"cannot read models: {exc}", None
        return f"cannot read models yet: {exc.name or exc} is not installed (see Plugins > satseg)", None
    try:
        model = read_model_info(path)
    except SatsegError as exc:
        return str(exc), None
    meta = model.metadata
    parts = [", ".join(meta.class_names), f"windows {meta.tile_size} px"]
    if model.channels != 3:  # an RGB model is the normal case; others need a raster of those bands
        bands = f" (raster bands {', '.join(map(str, meta.input_bands))})" if meta.input_bands else ""
        parts.append(f"{model.channels} input bands{bands}")
    if meta.zoom is not None:
        parts.append(f"zoom {meta.zoom}")
    if meta.resolution_cm:
        parts.append(f"{meta.resolution_cm:g} cm/px")
    summary = "classes: " + "; ".join(parts)
    if meta.description:
        summary = f"{meta.description}\n{summary}"
    return summary, meta.zoom


def model_label(path: str) -> str:
    """``name: description`` for a list of models (the file name alone when it has none).

    From the file's metadata (``read_model_info``): a session per listed model made the
    dialog open slowly and held their memory for nothing.
    """
    name = Path(path).stem
    try:
        from ..inference.model import read_model_info

        description = read_model_info(path, allow_generic_names=True).metadata.description
    except Exception:  # a label must never break the list; the summary explains
        description = None
    if not description:
        return f"{name}  ({Path(path).parent})"
    first = description.split(";")[0].strip()
    return f"{name}: {first}"
