"""Class configs: the JSON list of classes that ``build`` burns into labels.

The format is the one of the classic OSM label tools::

    [
      {"name": "residential", "color": "#010101", "stroke-width": "1",
       "filter": "[landuse] = 'residential'", "sourceLayer": "osm"},
      ...
    ]

(or an object ``{"description": ..., "classes": [...]}``). Keys per class:

``name``          the class name (required)
``color``         the label colour ``#nnnnnn`` whose every byte is the class index
                  (``#010101`` is class 1); ``#000000`` burns background (erases)
``stroke-width``  line width in pixels, number or numeric string (default 1);
                  polygons are filled and outlined with it, as Mapnik draws them
``filter``        a Mapnik filter (see ``filters``); empty or absent: every feature
``sourceLayer``   the vector layer to read (``osm`` in OSM QA tiles); for inputs
                  without such a layer (.osm.pbf, GeoJSON) every layer is read
``display_color`` ``#rrggbb`` for legends and previews (default:
                  ``metadata.default_color(index)``)

Several entries may share a colour (e.g. lines and areas of one class) when
they share the name; indices must run 1, 2, ... without gaps. Entries draw in
order, so later entries cover earlier ones.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from satseg_plugin.inference.errors import ConfigError
from satseg_plugin.inference.metadata import default_color, parse_hex_color

from .filters import Predicate, compile_filter, parse

KNOWN_KEYS = {"name", "color", "stroke-width", "filter", "sourceLayer", "display_color", "description"}
_HEX_RE = re.compile(r"^#[0-9A-Fa-f]{6}$")


@dataclass(frozen=True)
class ClassRule:
    """One entry of a class config, ready to evaluate."""

    name: str
    index: int  # the label byte; 0 burns background
    stroke_width: float
    filter_text: str
    source_layer: str | None
    predicate: Predicate = field(compare=False, repr=False)
    ast: tuple = field(compare=False, repr=False)


@dataclass(frozen=True)
class ClassConfig:
    """A validated class config: the rules in drawing order and the class list."""

    rules: list[ClassRule]
    names: list[str]  # names[i] is class index i; names[0] == "background"
    display_colors: list[str]
    raw: list[dict]  # the entries as read (for the manifest)
    path: str = ""

    @property
    def num_classes(self) -> int:
        return len(self.names)


def _where(i: int, entry: object) -> str:
    name = entry.get("name") if isinstance(entry, dict) else None
    return f"class {name!r} (entry {i + 1})" if isinstance(name, str) else f"entry {i + 1}"


def _stroke_width(value: object, where: str) -> float:
    if value is None:
        return 1.0
    try:
        if isinstance(value, bool):
            raise ValueError
        width = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: stroke-width must be a number of pixels, not {value!r}") from None
    if not 0 <= width <= 256 or width != width:
        raise ConfigError(f"{where}: stroke-width must be between 0 and 256 pixels, not {value!r}")
    return width


def _label_index(value: object, where: str) -> int:
    if not isinstance(value, str) or not _HEX_RE.match(value.strip()):
        raise ConfigError(f"{where}: color must be a label colour '#nnnnnn' (e.g. '#010101'), not {value!r}")
    r, g, b = parse_hex_color(value)
    if not r == g == b:
        raise ConfigError(
            f"{where}: color {value} is not a label colour: every byte must be the class index "
            f"(#010101 is class 1, #020202 class 2, ...)"
        )
    if r == 255:
        raise ConfigError(f"{where}: color #ffffff is the ignore label, not a class")
    return r


def parse_config(data: object, path: str = "") -> ClassConfig:
    """Validate a loaded class config (list or ``{"classes": [...]}``)."""
    entries = data.get("classes") if isinstance(data, dict) else data
    if isinstance(data, dict):
        unknown = set(data) - {"classes", "description"}
        if unknown:
            raise ConfigError(f"unknown key {sorted(unknown)[0]!r} at the top of the class config")
    if not isinstance(entries, list) or not entries:
        raise ConfigError("a class config is a non-empty JSON list of classes (or {'classes': [...]})")
    rules: list[ClassRule] = []
    names: dict[int, str] = {0: "background"}
    display: dict[int, str] = {}
    for i, entry in enumerate(entries):
        where = _where(i, entry)
        if not isinstance(entry, dict):
            raise ConfigError(f"{where}: a class is a JSON object, not {type(entry).__name__}")
        unknown = sorted(set(entry) - KNOWN_KEYS)
        if unknown:
            raise ConfigError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(sorted(KNOWN_KEYS))})")
        name = entry.get("name")
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(f"{where}: 'name' must be a non-empty string")
        name = name.strip()
        if "color" not in entry:
            raise ConfigError(f"{where}: 'color' is missing (the label colour, e.g. '#010101')")
        index = _label_index(entry["color"], where)
        width = _stroke_width(entry.get("stroke-width"), where)
        text = entry.get("filter")
        if text is not None and not isinstance(text, str):
            raise ConfigError(f"{where}: 'filter' must be a string")
        layer = entry.get("sourceLayer")
        if layer is not None and (not isinstance(layer, str) or not layer):
            raise ConfigError(f"{where}: 'sourceLayer' must be a layer name")
        if "display_color" in entry:
            dc = entry["display_color"]
            if not isinstance(dc, str) or not _HEX_RE.match(dc.strip()):
                raise ConfigError(f"{where}: display_color must be '#rrggbb', not {dc!r}")
            if index in display and display[index] != dc.strip().lower():
                raise ConfigError(f"{where}: display_color differs from the earlier entry of class {index}")
            display[index] = dc.strip().lower()
        if index != 0:
            if index in names and names[index] != name:
                raise ConfigError(
                    f"{where}: colour {entry['color']} is already class {names[index]!r}; "
                    "entries sharing a colour must share the name"
                )
            if name in names.values() and names.get(index) != name:
                raise ConfigError(f"{where}: the name {name!r} is already used with another colour")
            names[index] = name
        ast = parse(text, name)
        rules.append(
            ClassRule(
                name=name,
                index=index,
                stroke_width=width,
                filter_text=text or "",
                source_layer=layer,
                predicate=compile_filter(text, name),
                ast=ast,
            )
        )
    missing = [i for i in range(1, max(names) + 1) if i not in names]
    if missing:
        m = missing[0]
        raise ConfigError(
            f"class indices must run 1, 2, ... without gaps: no class has colour #{m:02x}{m:02x}{m:02x}"
        )
    n = max(names) + 1
    return ClassConfig(
        rules=rules,
        names=[names[i] for i in range(n)],
        display_colors=[display.get(i, default_color(i)) for i in range(n)],
        raw=[dict(e) for e in entries],
        path=path,
    )


def load_classes(path: str | os.PathLike[str]) -> ClassConfig:
    """Read and validate the class config at ``path``; ``ConfigError`` says what is wrong."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"class config not found: {p}")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"class config {p} is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}"
        ) from None
    except UnicodeDecodeError:
        raise ConfigError(f"class config {p} is not UTF-8 text") from None
    try:
        return parse_config(data, str(p))
    except ConfigError as exc:
        raise ConfigError(f"{p}: {exc}") from None
