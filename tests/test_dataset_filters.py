"""training.dataset.filters: the Mapnik filter subset, checked against OGR's own attribute queries."""

from __future__ import annotations

from pathlib import Path

import pytest
from osgeo import gdal

from training.dataset.filters import FilterError, compile_filter, parse
from training.dataset.osm_source import OsmSource, parse_hstore

gdal.UseExceptions()
WORLD = (-2.0e7, -2.0e7, 2.0e7, 2.0e7)


@pytest.mark.parametrize(
    ("text", "tags", "expected"),
    [
        ("[landuse] = 'residential'", {"landuse": "residential"}, True),
        ("[landuse] = 'residential'", {"landuse": "forest"}, False),
        ("[landuse] = 'residential'", {}, False),
        ('[landuse] = "residential"', {"landuse": "residential"}, True),
        ("[landuse] != 'residential'", {}, True),  # Mapnik: null differs from a string
        ("[landuse] != 'residential'", {"landuse": "forest"}, True),
        ("[landuse] <> 'residential'", {"landuse": "residential"}, False),
        ("[building].match('.+')", {"building": "yes"}, True),
        ("[building].match('.+')", {"building": ""}, False),
        ("[building].match('.+')", {}, False),
        ("[name].match('Kot')", {"name": "Kotka"}, False),  # whole-value match, as Mapnik's regex_match
        ("[name].match('Kot.*')", {"name": "Kotka"}, True),
        ("[levels] > 3", {"levels": "12"}, True),  # numeric, not text order
        ("[levels] >= 12", {"levels": "12"}, True),
        ("[levels] < 3", {"levels": "12"}, False),
        ("[levels] <= 3.5", {"levels": 3}, True),
        ("[levels] > 3", {}, False),
        ("[h] > -3.5", {"h": "-1"}, True),
        ("[a] = 1 and [b] = 2", {"a": "1", "b": "2"}, True),
        ("[a] = 1 and [b] = 2", {"a": "1"}, False),
        ("[a] = 1 or [b] = 2", {"b": "2"}, True),
        ("not [a] = 1", {"a": "1"}, False),
        ("not ([a] = 1 or [b] = 2)", {"c": "3"}, True),
        ("[a] = 1 or [b] = 2 and [c] = 3", {"a": "1"}, True),  # and binds tighter
        ("([a] = 1 or [b] = 2) and [c] = 3", {"a": "1"}, False),
        ("[a] && [b]", {"a": "x", "b": "y"}, True),
        ("[a] = null", {}, True),
        ("[tunnel]", {"tunnel": "no"}, False),
        ("[mapnik::geometry_type] = polygon", {"mapnik::geometry_type": 3}, True),
        ("", {}, True),
        ("   ", {"x": "1"}, True),
        (None, {}, True),
    ],
)
def test_filter_semantics(text: str | None, tags: dict, expected: bool) -> None:
    assert compile_filter(text, "c")(tags) is expected


@pytest.mark.parametrize(
    ("text", "position", "words"),
    [
        ("[landuse] = ", 13, "ends where a value"),
        ("([landuse] = 'x'", 17, "')'"),
        ("[landuse] = 'x' [b]", 17, "unexpected"),
        ("[landuse = 'x'", 1, "']'"),
        ("[landuse] = 'x", 13, "closing quote"),
        ("[a] + 1", 5, "arithmetic"),
        ("[a] * 2 = 4", 5, "arithmetic"),
        ("[a].length = 2", 5, "'.length' is not supported"),
        ("[a].replace('x','y') = 'z'", 5, "'.replace' is not supported"),
        ("landuse = 'x'", 1, "unknown word"),
        ("strlen([a]) = 2", 1, "function strlen() is not supported"),
        ("[a].match('(')", 11, "bad regular expression"),
        ("[a].match(1)", 11, "quoted regular expression"),
        ("'x' = 'y'", 5, "needs a [tag]"),
        ("[a] = 1 ? 2 : 3", 9, "unexpected character"),
    ],
)
def test_filter_errors_name_class_and_position(text: str, position: int, words: str) -> None:
    with pytest.raises(FilterError) as err:
        parse(text, "industrial")
    msg = str(err.value)
    assert "class 'industrial'" in msg
    assert f"position {position}:" in msg
    assert words in msg
    assert text in msg


def test_hstore_of_other_tags() -> None:
    tags = parse_hstore(r'"surface"=>"grass","name:fi"=>"Puisto \"A\"","note"=>"a=>b, c","x"=>NULL')
    assert tags == {"surface": "grass", "name:fi": 'Puisto "A"', "note": "a=>b, c"}
    assert parse_hstore(None) == {} and parse_hstore("") == {}


def _key(tags: dict) -> tuple:
    return (tags.get("osm_id"), tags.get("osm_way_id"))


def _ogr_selection(path: Path, layer_name: str, where: str) -> set[tuple]:
    ds = gdal.OpenEx(str(path), gdal.OF_VECTOR)
    layer = ds.GetLayerByName(layer_name)
    layer.SetAttributeFilter(where)
    out = set()
    for f in layer:
        g = f.GetGeometryRef()
        if g is not None and not g.IsEmpty():
            out.add(
                (f.GetField("osm_id"), f.GetField("osm_way_id") if layer_name == "multipolygons" else None)
            )
    return out


@pytest.fixture(scope="module")
def osm_features(shared_data: Path) -> dict[str, list]:
    out = {}
    gdal.PushErrorHandler("CPLQuietErrorHandler")
    try:
        for name in ("test", "Helsinki"):
            out[name] = list(OsmSource(shared_data / "osm" / f"{name}.osm.pbf").features(WORLD))
    finally:
        gdal.PopErrorHandler()
    return out


@pytest.mark.parametrize(
    ("file", "layer", "mapnik", "sql"),
    [
        ("test", "multipolygons", "[building].match('.+')", "building IS NOT NULL AND building <> ''"),
        ("Helsinki", "multipolygons", "[building].match('.+')", "building IS NOT NULL AND building <> ''"),
        ("test", "multipolygons", "[landuse] = 'residential'", "landuse = 'residential'"),
        (
            "Helsinki",
            "multipolygons",
            "[landuse] = 'commercial' or [landuse] = 'retail'",
            "landuse IN ('commercial', 'retail')",
        ),
        (
            "test",
            "multipolygons",
            "[natural] = 'wood' or [landuse] = 'forest' or [landuse] = 'farmland' or [landuse] = 'meadow'",
            "natural = 'wood' OR landuse IN ('forest', 'farmland', 'meadow')",
        ),
        (
            "Helsinki",
            "multipolygons",
            "[landuse] != 'residential' and [landuse].match('.+')",
            "landuse IS NOT NULL AND landuse <> '' AND landuse <> 'residential'",
        ),
        # tags OGR keeps in the other_tags hstore
        ("Helsinki", "lines", "[surface] = 'paved'", 'other_tags LIKE \'%"surface"=>"paved"%\''),
        (
            "Helsinki",
            "lines",
            "[highway] = 'footway' and not [surface] = 'asphalt'",
            "highway = 'footway' AND (other_tags IS NULL OR other_tags NOT LIKE '%\"surface\"=>\"asphalt\"%')",
        ),
    ],
)
def test_filters_select_what_ogr_selects(
    shared_data: Path, osm_features: dict, file: str, layer: str, mapnik: str, sql: str
) -> None:
    predicate = compile_filter(mapnik, "c")
    ours = {
        _key(f.tags) if layer == "multipolygons" else (f.tags.get("osm_id"), None)
        for f in osm_features[file]
        if f.layer == layer and predicate(f.tags)
    }
    theirs = _ogr_selection(shared_data / "osm" / f"{file}.osm.pbf", layer, sql)
    assert theirs, f"the OGR query {sql!r} selects nothing: a test that cannot fail"
    assert ours == theirs
