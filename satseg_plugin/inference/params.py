"""The parameters of a segment run, declared once: the CLI, Processing and the dialog derive theirs.

Each ``RunParameter`` names the ``SegmentRequest`` field it fills, its type,
default, range, what an empty value means and its help. ``__main__`` turns
them into argparse options (``add_cli_arguments``), ``ui/segment_algorithm``
into Processing parameters and ``ui/segment_dialog`` into spin boxes and check
boxes; all three, and ``plan_run`` for callers of the API, refuse a value with
``check_values``, so a bad value gets one message wherever it was typed.

No numpy, GDAL, Qt or QGIS here: the dialog imports this before it knows
whether the packages a run needs are installed.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .errors import ParameterError

CLI, PROCESSING, DIALOG = "cli", "processing", "dialog"
EVERYWHERE = frozenset({CLI, PROCESSING, DIALOG})

#: Zoom levels a tile service has (and Web Mercator arithmetic holds for).
MAX_ZOOM = 24


def _number(value: float) -> str:
    """``100`` for 100.0, ``2.5`` for 2.5: a value as the user typed it, whatever the surface made of it."""
    return f"{value:g}" if isinstance(value, float) else str(value)


#: Pixels per model call by default: onnxruntime's memory grows with the pixels of a batch (bare
#: runs of 512-px windows peaked at 547, 753 and 1,188 MB for batches of 1, 2 and 4) while its
#: speed did not (0.99, 1.04 and 1 of batch 4's), so the batch shrinks as windows grow.
BATCH_PIXELS = 4 * 256 * 256


def batch_for(window: int, asked: int | None = None) -> int:
    """Windows per model call: ``asked``, else as many ``window``-px windows as ``BATCH_PIXELS`` hold, at least 1."""
    return asked if asked is not None else max(1, BATCH_PIXELS // (window * window))


@dataclass(frozen=True)
class RunParameter:
    """One option of a segment run.

    ``name`` is the ``SegmentRequest`` field, ``flag`` the CLI option (a flag
    ``--no-...`` for a switch that is on by default), ``key`` the Processing
    parameter. ``minimum``/``maximum`` bound a number (``maximum`` excluded when
    ``below_maximum``); ``unset`` says in words what ``None`` (an empty value,
    the default of an optional number) means; ``off`` is the value a widget
    shows for ``None`` when that value means the same (0 m²: keep every
    region). ``decimals`` is the dialog's precision for a float. ``where`` are
    the surfaces that offer it (a performance knob is not in the dialog).
    """

    name: str
    kind: type
    default: Any
    flag: str
    key: str
    title: str  # a short label: the dialog's row, the Processing description
    help: str
    minimum: float | None = None
    maximum: float | None = None
    below_maximum: bool = False
    unset: str | None = None
    off: float | None = None
    decimals: int = 0
    metavar: str | None = None
    advanced: bool = False  # Processing's advanced parameters
    where: frozenset[str] = EVERYWHERE

    @property
    def optional(self) -> bool:
        """True when no value (None) is allowed: the model's, or off."""
        return self.default is None

    def range_text(self) -> str:
        """``between 0 and 24``, ``in [0, 100)``, ``at least 1``, ``0 or more``."""
        lo, hi = self.minimum, self.maximum
        if lo is not None and hi is not None:
            if self.below_maximum:
                return f"in [{_number(lo)}, {_number(hi)})"
            return f"between {_number(lo)} and {_number(hi)}"
        if lo is not None:
            return "0 or more" if lo == 0 else f"at least {_number(lo)}"
        if hi is not None:
            return f"below {_number(hi)}" if self.below_maximum else f"at most {_number(hi)}"
        return "a number"

    def check(self, value: Any) -> Any:
        """``value`` as this parameter's type; ``ParameterError`` when it is outside its range."""
        if value is None or value == "":
            if self.optional:
                return None
            raise ParameterError(f"{self.title.lower()} needs a value")
        if self.kind is bool:
            return bool(value)
        wrong = ParameterError(f"{self.title.lower()} must be {self.range_text()}, not {value!r}")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise wrong from None
        if self.kind is int and not number.is_integer():
            raise wrong
        shown = _number(int(number) if self.kind is int else number)
        bad = ParameterError(f"{self.title.lower()} must be {self.range_text()}, not {shown}")
        if number != number:  # NaN
            raise bad
        if self.minimum is not None and number < self.minimum:
            raise bad
        if self.maximum is not None and (
            number >= self.maximum if self.below_maximum else number > self.maximum
        ):
            raise bad
        return int(number) if self.kind is int else number

    def widget_range(self) -> tuple[float, float | None]:
        """The smallest and largest value a spin box may hold (a value below ``maximum``, when excluded)."""
        lo = self.minimum if self.minimum is not None else -1e9
        hi = self.maximum
        if hi is not None and self.below_maximum:
            hi -= 1 if self.kind is int else 10.0**-self.decimals
        return lo, hi


SEGMENT_PARAMETERS: tuple[RunParameter, ...] = (
    RunParameter(
        "zoom", int, None, "--zoom", "ZOOM", "Zoom",
        "XYZ zoom of the tiles; tile sources only (a raster file is read at the model's resolution, "
        "else its own)",
        minimum=0, maximum=MAX_ZOOM, unset="the model's",
    ),
    RunParameter(
        "overlap_percent", float, None, "--overlap", "OVERLAP", "Overlap",
        "how much neighbouring model windows overlap, in percent of a window; more overlap, smoother "
        "seams and a slower run",
        minimum=0, maximum=100, below_maximum=True, unset="the model's", metavar="PERCENT",
    ),
    RunParameter(
        "window", int, None, "--window", "WINDOW", "Window size (px)",
        "side of the model windows in pixels, a multiple of 32; larger windows compute less overlap "
        "and hold more memory (a model with a fixed input size runs only that size)",
        minimum=32, maximum=4096, unset="the model's", advanced=True, metavar="PX",
        where=frozenset({CLI, PROCESSING}),
    ),
    RunParameter(
        "batch_size", int, None, "--batch-size", "BATCH_SIZE", "Batch size",
        "windows per model call", minimum=1, maximum=1024, advanced=True,
        unset="as many windows as make 262,144 pixels (four of 256 px, one of 512 px), at least one",
        where=frozenset({CLI, PROCESSING}),
    ),
    RunParameter(
        "workers", int, 8, "--workers", "WORKERS", "Tile downloads",
        "concurrent tile downloads", minimum=1, maximum=64, advanced=True,
        where=frozenset({CLI, PROCESSING}),
    ),
    RunParameter(
        "write_classes", bool, True, "--no-classes", "WRITE_CLASSES", "Write the class raster",
        "classes.tif: the class of every pixel, with the model's colours and class names",
    ),
    RunParameter(
        "write_heatmaps", bool, True, "--no-heatmaps", "WRITE_HEATMAPS", "Write one heatmap per class",
        "heatmap_<class>.tif: each class's probability 0..1 in 8 bits",
    ),
    RunParameter(
        "write_counts", bool, True, "--no-counts", "WRITE_COUNTS", "Write the pixel-count table",
        "pixel_counts.csv: class, pixels, share, area_m2, area_ha (areas measured on the ground)",
    ),
    RunParameter(
        "write_vectors", bool, False, "--vectors", "WRITE_VECTORS", "Write polygons per class",
        "classes.gpkg: one polygon per region of a class, with its class and ground area in m² "
        "(the table's measure)",
    ),
    RunParameter(
        "min_area_m2", float, None, "--min-area", "MIN_AREA", "Minimum region area (m²)",
        "merge regions smaller than this ground area into their largest neighbour (GDAL sieve), in "
        "the class raster, the polygons and the table alike",
        minimum=0, unset="keep every region", off=0.0, decimals=1, metavar="M2",
    ),
    RunParameter(
        "simplify_m", float, None, "--simplify", "SIMPLIFY", "Simplification (m)",
        "simplify the polygons with this tolerance on the ground (their area_m2 stays that of their "
        "pixels); polygons only",
        minimum=0, unset="exact pixel outlines", off=0.0, decimals=2, metavar="M",
    ),
)  # fmt: skip

#: The parameters by ``SegmentRequest`` field.
PARAMETERS: dict[str, RunParameter] = {p.name: p for p in SEGMENT_PARAMETERS}


def offered(surface: str) -> list[RunParameter]:
    """The parameters ``surface`` (``CLI``, ``PROCESSING`` or ``DIALOG``) offers, in order."""
    return [p for p in SEGMENT_PARAMETERS if surface in p.where]


def check_values(values: Mapping[str, Any], raster: bool = False) -> dict[str, Any]:
    """Every parameter of ``values`` (field name to value) checked, others at their defaults.

    ``raster``: the run reads a raster file, which has no zoom. ``ParameterError``
    for a value out of range, a zoom for a raster, or a simplification without
    the polygons; the same message whichever surface the value came from.
    """
    unknown = set(values) - set(PARAMETERS)
    if unknown:
        raise TypeError(f"not segment parameters: {sorted(unknown)}")
    checked = {p.name: p.check(values.get(p.name, p.default)) for p in SEGMENT_PARAMETERS}
    if raster and checked["zoom"] is not None:
        raise ParameterError(
            "a zoom applies to tile sources: a raster file is read at the model's resolution (else its "
            "own); leave the zoom empty"
        )
    if checked["simplify_m"] and not checked["write_vectors"]:
        raise ParameterError("simplification applies to the polygons: ask for the polygon layer too")
    return checked


def check_request(req: Any) -> None:
    """``check_values`` of a ``SegmentRequest``'s parameters (an API caller's request)."""
    check_values({p.name: getattr(req, p.name) for p in SEGMENT_PARAMETERS}, raster=bool(req.raster_path))


# --- the CLI -------------------------------------------------------------------------------------------


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the CLI's parameters to ``parser``; ``args.<name>`` then holds each (``cli_values``)."""
    for p in offered(CLI):
        if p.kind is bool:
            action = "store_false" if p.default else "store_true"
            words = f"do not write {p.help.split(':')[0]}" if p.default else f"also write {p.help}"
            parser.add_argument(p.flag, dest=p.name, action=action, help=words)
            continue
        text = p.help.replace("%", "%%")  # argparse formats help with %
        default = f"default: {p.unset}" if p.unset else "default: %(default)s"
        parser.add_argument(
            p.flag,
            dest=p.name,
            type=p.kind,
            default=p.default,
            metavar=p.metavar,
            help=f"{text} ({p.range_text()}; {default})",
        )


def cli_values(args: argparse.Namespace) -> dict[str, Any]:
    """The parameters ``add_cli_arguments`` added, as ``args`` holds them."""
    return {p.name: getattr(args, p.name) for p in offered(CLI)}


__all__ = [
    "CLI",
    "DIALOG",
    "MAX_ZOOM",
    "PARAMETERS",
    "PROCESSING",
    "SEGMENT_PARAMETERS",
    "RunParameter",
    "add_cli_arguments",
    "check_request",
    "check_values",
    "cli_values",
    "offered",
]
