"""training.dataset.classes: the shipped configs parse; every mistake gets its own clear message."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from satseg_plugin.inference.errors import ConfigError
from satseg_plugin.inference.metadata import default_color
from training.dataset.classes import load_classes

ROOT = Path(__file__).resolve().parents[1]


def test_shipped_mine_json_parses() -> None:
    config = load_classes(ROOT / "training" / "classes" / "mine.json")
    assert config.names == [
        "background",
        "residential",
        "commercial",
        "industrial",
        "vegetation",
        "building",
        "brownfield",
    ]
    assert [r.index for r in config.rules] == [1, 2, 3, 4, 5, 6]
    assert all(r.source_layer == "osm" and r.stroke_width == 1 for r in config.rules)
    veg = config.rules[3].predicate
    for tags in (
        {"natural": "wood"},
        {"landuse": "vineyard"},
        {"landuse": "allotments"},
        {"surface": "grass"},
    ):
        assert veg(tags), tags
    assert not veg({"landuse": "residential"})
    # The whole vegetation list of the issue, and nothing else from those keys.
    values = ["forest", "tree_row", "tree", "scrub", "heath", "grassland", "orchard", "farmland"]
    values += ["allotments", "meadow", "vineyard"]
    for v in values:
        assert veg({"landuse": v}), v
    for tags in ({"natural": "water"}, {"surface": "asphalt"}, {"landuse": "grass"}, {"landuse": "quarry"}):
        assert not veg(tags), tags
    raw = json.loads((ROOT / "training" / "classes" / "mine.json").read_text())
    assert [c["color"] for c in raw] == [f"#0{i}0{i}0{i}" for i in range(1, 7)]
    assert all({"name", "color", "stroke-width", "filter", "sourceLayer"} <= set(c) for c in raw)
    assert raw[4]["filter"] == "[building].match('.+')"
    assert config.rules[5].predicate({"landuse": "brownfield"})
    assert config.rules[1].predicate({"landuse": "retail"}) and config.rules[2].predicate(
        {"landuse": "industrial"}
    )
    assert config.rules[4].predicate({"building": "house"})
    assert config.display_colors[0] == "#000000"


def test_buildings_json_selects_every_feature() -> None:
    config = load_classes(ROOT / "training" / "classes" / "buildings.json")
    assert config.names == ["background", "building"]
    assert config.rules[0].predicate({}) and config.rules[0].predicate({"osm_id": None})


def test_display_color_defaults_to_the_palette(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    path.write_text(
        json.dumps([{"name": "road", "color": "#010101", "stroke-width": 5, "filter": "[highway]"}])
    )
    config = load_classes(path)
    assert config.display_colors == [default_color(0), default_color(1)]
    assert config.rules[0].stroke_width == 5


def _write(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "classes.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


GOOD = {"name": "road", "color": "#010101", "stroke-width": "3", "filter": "[highway].match('.+')"}


@pytest.mark.parametrize(
    ("data", "words"),
    [
        ('[{"name": "road", "color": "#010101",}]', "not valid JSON"),
        ("[]", "non-empty JSON list"),
        ({"klasses": []}, "unknown key 'klasses'"),
        ([{**GOOD, "colour": "#010101"}], "unknown key 'colour'"),
        ([{**GOOD, "color": "#ff0000"}], "every byte must be the class index"),
        ([{**GOOD, "color": "red"}], "label colour '#nnnnnn'"),
        ([{**GOOD, "color": "#ffffff"}], "ignore label"),
        ([{**GOOD, "stroke-width": "wide"}], "stroke-width must be a number"),
        ([{**GOOD, "stroke-width": -1}], "between 0 and 256"),
        ([{**GOOD, "filter": "[highway] = "}], "class 'road': bad filter at position 13"),
        ([{**GOOD, "filter": "[highway].length > 2"}], "'.length' is not supported"),
        ([{**GOOD, "color": "#020202"}], "without gaps"),
        ([GOOD, {**GOOD, "name": "rail"}], "already class 'road'"),
        ([{**GOOD, "display_color": "#12345"}], "display_color"),
        ([{**GOOD, "name": ""}], "'name' must be"),
        ([{"name": "x"}], "'color' is missing"),
    ],
)
def test_bad_configs_are_explained(tmp_path: Path, data: object, words: str) -> None:
    path = _write(tmp_path, data)
    with pytest.raises(ConfigError) as err:
        load_classes(path)
    assert words in str(err.value)
    assert str(path) in str(err.value)


def test_missing_config(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="class config not found"):
        load_classes(tmp_path / "nope.json")
