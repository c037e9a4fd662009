"""The metadata an ONNX segmentation model carries, shared by export and inference.

Keys follow the Deepness QGIS plugin (``model_type``, ``class_names``,
``resolution``, ``tile_size``, ``tiles_overlap``, ``standardization_mean``,
``standardization_std``) so models move between the two; satseg adds
``class_colors``, ``zoom``, ``satseg_schema`` and, optionally, ``description``
(a line of text for people: what the model is, where and when it was trained).
Every value is stored as a JSON string in the model's ``metadata_props``; keys a
reader does not know are kept in ``ModelMetadata.extra``.
"""

from __future__ import annotations

import ast
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from .errors import ModelError

SCHEMA_VERSION = 1
MODEL_TYPE = "Segmentor"
#: Per-channel RGB normalisation: ``x = (uint8 / 255 - MEAN) / STD``.
MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
DEFAULT_TILE_SIZE = 256
#: Window overlap (percent of the window) of satseg's models, and of models that name none:
#: 13 % of 256 px is 32 px (plan_windows keeps it even), 12.5 %. Measured (benchmarks/bench_segment,
#: section 2): no seam from 6.25 % up, and the classes within 0.3 points of accuracy of the 25 %
#: used before, for 0.73 of its windows on large extents ((192 / 224) ** 2). An integer, as Deepness reads it.
DEFAULT_OVERLAP_PERCENT = 13

#: Display colours for classes that come without one (index 0 is background).
DEFAULT_PALETTE: tuple[str, ...] = (
    "#000000",
    "#e31a1c",
    "#1f78b4",
    "#33a02c",
    "#ff7f00",
    "#6a3d9a",
    "#b15928",
    "#a6cee3",
    "#b2df8a",
    "#fb9a99",
    "#fdbf6f",
    "#cab2d6",
    "#ffff99",
    "#8dd3c7",
    "#bebada",
    "#80b1d3",
)


def default_color(index: int) -> str:
    """Return a display colour for class ``index`` from ``DEFAULT_PALETTE``."""
    return DEFAULT_PALETTE[index % len(DEFAULT_PALETTE)]


def parse_hex_color(value: str) -> tuple[int, int, int]:
    """Return the ``(r, g, b)`` of a ``#rrggbb`` string; ``ValueError`` otherwise."""
    text = value.strip()
    if len(text) != 7 or text[0] != "#":
        raise ValueError(f"not a #rrggbb colour: {value!r}")
    return int(text[1:3], 16), int(text[3:5], 16), int(text[5:7], 16)


@dataclass(frozen=True)
class ModelMetadata:
    """What inference needs to know about a segmentation model."""

    class_names: list[str]
    class_colors: list[str]
    tile_size: int = DEFAULT_TILE_SIZE
    tiles_overlap: int = DEFAULT_OVERLAP_PERCENT
    resolution_cm: float | None = None
    mean: tuple[float, ...] = MEAN
    std: tuple[float, ...] = STD
    zoom: int | None = None
    model_type: str = MODEL_TYPE
    schema: int | None = SCHEMA_VERSION
    extra: dict[str, str] = field(default_factory=dict)
    description: str | None = None  # optional; older models have none
    input_bands: tuple[int, ...] | None = None  # optional: raster bands (1-based) feeding the channels

    @property
    def band_count(self) -> int | None:
        """Input channels the standardisation (or ``input_bands``) implies; None when it does not say."""
        if self.input_bands:
            return len(self.input_bands)
        n = max(len(self.mean), len(self.std))
        return n if n > 1 else None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def build_metadata(meta: ModelMetadata) -> dict[str, str]:
    """Return the ``metadata_props`` entries (all JSON strings) for ``meta``."""
    if len(meta.class_colors) != len(meta.class_names):
        raise ValueError("class_colors and class_names differ in length")
    props = {
        "model_type": meta.model_type,
        "class_names": {str(i): n for i, n in enumerate(meta.class_names)},
        "class_colors": {str(i): c for i, c in enumerate(meta.class_colors)},
        "resolution": meta.resolution_cm,
        "tile_size": meta.tile_size,
        "tiles_size": meta.tile_size,  # the spelling Deepness reads
        "tiles_overlap": meta.tiles_overlap,
        "standardization_mean": list(meta.mean),
        "standardization_std": list(meta.std),
        "zoom": meta.zoom,
        "satseg_schema": SCHEMA_VERSION,
    }
    if meta.description:
        props["description"] = meta.description
    if meta.input_bands:
        props["input_bands"] = list(meta.input_bands)
    out = {k: json.dumps(v) for k, v in props.items()}
    out.update(meta.extra)
    return out


def _loads(props: Mapping[str, str], key: str) -> object:
    raw = props[key]
    try:
        return json.loads(raw)
    except (TypeError, json.JSONDecodeError):
        pass
    try:  # Deepness's and Ultralytics' exporters write Python literals: {0: 'background', 1: 'roof'}
        return ast.literal_eval(raw)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return raw  # some exporters store plain strings ("Segmentor", "256")


def _index_list(value: object, key: str) -> list[str]:
    """Turn ``{"0": a, "1": b}`` or ``[a, b]`` into ``[a, b]``."""
    if isinstance(value, Sequence) and not isinstance(value, str):
        return [str(v) for v in value]
    if isinstance(value, Mapping):
        try:
            items = sorted((int(k), str(v)) for k, v in value.items())
        except ValueError:
            raise ModelError(f"the model's '{key}' has keys that are not class numbers") from None
        if [k for k, _ in items] != list(range(len(items))):
            raise ModelError(f"the model's '{key}' does not number its classes 0, 1, 2, ...")
        return [v for _, v in items]
    raise ModelError(f"the model's '{key}' is neither a list nor a mapping")


def _number(props: Mapping[str, str], key: str, kind: type, default: object) -> object:
    if key not in props:
        return default
    value = _loads(props, key)
    if value is None:
        return default
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise ModelError(f"the model's '{key}' is not a number: {props[key]!r}") from None


def parse_metadata(
    props: Mapping[str, str],
    num_outputs: int | None = None,
    allow_generic_names: bool = False,
) -> ModelMetadata:
    """Read a model's ``metadata_props`` into ``ModelMetadata``.

    Accepts Deepness's spelling (``tiles_size``, ``class_names`` as a dict or a
    list, as JSON or as a Python literal, or ``names``), and like Deepness reads
    a model without ``standardization_mean``/``_std`` as taking pixels scaled to
    0..1 (mean 0, std 1); a satseg model (``satseg_schema``) defaults to ImageNet's.
    Two classes with the same name are refused. Without ``class_names`` it raises ``ModelError`` unless
    ``allow_generic_names`` is set and ``num_outputs`` is known, in which
    case the classes are named ``class 0``, ``class 1``, ...
    """
    if "class_names" in props:
        names = _index_list(_loads(props, "class_names"), "class_names")
    elif "names" in props:  # the key Ultralytics-style exporters use
        names = _index_list(_loads(props, "names"), "names")
    elif allow_generic_names and num_outputs:
        names = [f"class {i}" for i in range(num_outputs)]
    else:
        raise ModelError(
            "the model has no class names in its metadata ('class_names'); "
            "export it with satseg or Deepness, or choose generic class names"
        )
    if not names:
        raise ModelError("the model's 'class_names' is empty")
    seen: dict[str, int] = {}
    for i, name in enumerate(names):
        if name in seen:
            raise ModelError(
                f"the model names two classes '{name}' (classes {seen[name]} and {i}): its legend, heatmaps "
                "and table could not tell them apart; give each class its own name in the metadata"
            )
        seen[name] = i
    if num_outputs is not None and num_outputs != len(names):
        raise ModelError(
            f"the model outputs {num_outputs} classes but its metadata names {len(names)} "
            f"({', '.join(names)}); the file does not belong to these class names"
        )
    if "class_colors" in props:
        colors = _index_list(_loads(props, "class_colors"), "class_colors")
        if len(colors) != len(names):
            raise ModelError("the model's 'class_colors' and 'class_names' differ in length")
        for c in colors:
            try:
                parse_hex_color(c)
            except ValueError:
                raise ModelError(f"the model's 'class_colors' has a bad colour {c!r}") from None
    else:
        colors = [default_color(i) for i in range(len(names))]
    tile_key = "tile_size" if "tile_size" in props else "tiles_size"
    tile_size = int(_number(props, tile_key, float, DEFAULT_TILE_SIZE))  # type: ignore[arg-type]
    if tile_size <= 0:
        raise ModelError(f"the model's tile size must be positive, not {tile_size}")
    overlap = int(_number(props, "tiles_overlap", float, DEFAULT_OVERLAP_PERCENT))  # type: ignore[arg-type]
    if not 0 <= overlap < 100:
        raise ModelError(f"the model's 'tiles_overlap' must be a percent in [0, 100), not {overlap}")
    # Without standardisation keys Deepness feeds the model pixels scaled to 0..1 and nothing
    # else; satseg's own models always carry them (ImageNet statistics, a schema-1 default).
    ours = "satseg_schema" in props
    default_mean, default_std = (MEAN, STD) if ours else ((0.0,), (1.0,))  # one value: every band
    mean = _loads(props, "standardization_mean") if "standardization_mean" in props else default_mean
    std = _loads(props, "standardization_std") if "standardization_std" in props else default_std
    for key, vec in (("standardization_mean", mean), ("standardization_std", std)):
        if not isinstance(vec, (list, tuple)) or not vec:
            raise ModelError(f"the model's '{key}' must be a list of numbers, one per input channel")
    bands_raw = _loads(props, "input_bands") if "input_bands" in props else None
    input_bands = None
    if bands_raw is not None:
        try:
            input_bands = tuple(int(b) for b in bands_raw)  # type: ignore[union-attr]
        except (TypeError, ValueError):
            raise ModelError(
                f"the model's 'input_bands' is not a list of band numbers: {props['input_bands']!r}"
            ) from None
        if not input_bands or min(input_bands) < 1:
            raise ModelError("the model's 'input_bands' must list raster bands numbered from 1")
    if any(float(s) == 0 for s in std):  # type: ignore[union-attr]
        raise ModelError("the model's 'standardization_std' has a zero")
    zoom = _number(props, "zoom", int, None)
    known = {
        "model_type",
        "class_names",
        "class_colors",
        "resolution",
        "tile_size",
        "tiles_size",
        "tiles_overlap",
        "standardization_mean",
        "standardization_std",
        "zoom",
        "satseg_schema",
        "description",
        "names",
        "input_bands",
    }
    description = _loads(props, "description") if "description" in props else None
    return ModelMetadata(
        class_names=names,
        class_colors=colors,
        tile_size=tile_size,
        tiles_overlap=overlap,
        resolution_cm=_number(props, "resolution", float, None),  # type: ignore[arg-type]
        mean=tuple(float(v) for v in mean),  # type: ignore[union-attr]
        std=tuple(float(v) for v in std),  # type: ignore[union-attr]
        zoom=zoom,  # type: ignore[arg-type]
        model_type=str(_loads(props, "model_type")) if "model_type" in props else MODEL_TYPE,
        schema=_number(props, "satseg_schema", int, None),  # type: ignore[arg-type]
        extra={k: v for k, v in props.items() if k not in known},
        description=str(description) if description not in (None, "") else None,
        input_bands=input_bands,
    )
