"""``python -m training.dataset build``: labels from real OSM files, aligned with real imagery tiles."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import mercantile
import numpy as np
import pytest
from osgeo import gdal, ogr, osr
from tileserver import TileServer, oam_provider

from satseg_plugin.inference.cli import run_cli
from satseg_plugin.inference.imageio import read_image, to_rgb
from training.dataset.__main__ import main
from training.dataset.tiles import pixel_size

gdal.UseExceptions()
ROOT = Path(__file__).resolve().parents[1]
MINE = ROOT / "training" / "classes" / "mine.json"
BUILDINGS = ROOT / "training" / "classes" / "buildings.json"
KARHULA = "26.93,60.52,26.97,60.54"
SINTRA = "-9.492,38.823,-9.404,38.891"


def build(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str]:
    """Run the CLI as a user would; return its exit status and stderr."""
    capsys.readouterr()
    rc = run_cli(main, ["build", *map(str, argv)])
    return rc, capsys.readouterr().err


def labels_of(out: Path, tid: str) -> np.ndarray:
    rgb = read_image(out / "labels" / "color" / f"{tid}.png")
    assert rgb.shape == (256, 256, 3)
    assert np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])
    return rgb[..., 0]


def tile_pixel(lon: float, lat: float, zoom: int) -> tuple[str, int, int]:
    """Tile id and (row, col) of the pixel holding lon/lat: mercantile's math, not the builder's."""
    t = mercantile.tile(lon, lat, zoom)
    b = mercantile.xy_bounds(t)
    x, y = mercantile.xy(lon, lat)
    px = (b.right - b.left) / 256
    return f"{zoom}-{t.x}-{t.y}", int((b.top - y) // px), int((x - b.left) // px)


@pytest.fixture(scope="module")
def karhula(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("karhula")
    rc = run_cli(
        main,
        [
            *("build", "--bbox", KARHULA, "--zoom", "17", "--classes", str(MINE)),
            *("--osm", str(shared_data / "osm" / "test.osm.pbf"), "--out", str(out), "--quiet"),
        ],
    )
    assert rc == 0
    return out


def test_pbf_labels_and_manifest(karhula: Path, shared_data: Path) -> None:
    manifest = json.loads((karhula / "manifest.json").read_text())
    assert manifest["kind"] == "osm" and manifest["schema"] == 1 and manifest["zoom"] == 17
    assert [c["name"] for c in manifest["classes"]][:2] == ["background", "residential"]
    assert manifest["classes"][5] == {"name": "building", "color": "#ff7f00"}
    assert manifest["bbox"] == [26.93, 60.52, 26.97, 60.54]
    assert manifest["source"] is None and manifest["ignore_index"] == 255
    # Ground size of a z17 pixel at the bbox's central latitude: equator circumference / 2**17 / 256 * cos(lat).
    expected_cm = 100 * 2 * math.pi * 6378137 / 2**17 / 256 * math.cos(math.radians(60.53))
    assert manifest["resolution_cm"] == pytest.approx(expected_cm, abs=0.01)  # 58.76, not the equator's 119.4
    assert manifest["class_config"]["classes"][4]["filter"] == "[building].match('.+')"
    ids = (karhula / "sample.txt").read_text().split()
    filtered = (karhula / "sample-filtered.txt").read_text().split()
    assert len(ids) == manifest["counts"]["sampled"] > 20
    assert set(filtered) <= set(ids)
    total = np.zeros(7, np.int64)
    for tid in ids:
        labels = labels_of(karhula, tid)
        assert labels.max() <= 6
        if tid in filtered:
            total += np.bincount(labels.ravel(), minlength=7)
        else:
            assert not labels.any()
    names = [c["name"] for c in manifest["classes"]]
    assert dict(zip(names, total.tolist(), strict=True)) == manifest["pixels_per_class"]
    for name in ("residential", "industrial", "vegetation", "building"):
        assert manifest["pixels_per_class"][name] > 0, name
    assert read_image(karhula / "preview.png").shape[2] == 3


def test_pbf_buildings_land_where_ogr_puts_them(karhula: Path, shared_data: Path) -> None:
    """Points well inside real buildings are building (5), drawn over the land use under them."""
    ds = gdal.OpenEx(str(shared_data / "osm" / "test.osm.pbf"), gdal.OF_VECTOR)
    layer = ds.GetLayerByName("multipolygons")
    layer.SetAttributeFilter("building IS NOT NULL")
    ids = set((karhula / "sample.txt").read_text().split())
    checked = 0
    for f in layer:
        geom = f.GetGeometryRef()
        if geom.GetArea() < 4e-8:  # too small to hold a z17 pixel (1.2 m) well inside
            continue
        p = geom.PointOnSurface()
        tid, row, col = tile_pixel(p.GetX(), p.GetY(), 17)
        if tid in ids and geom.Buffer(-3e-5).Contains(p):
            assert labels_of(karhula, tid)[row, col] == 5, (f.GetField("osm_id"), f.GetField("osm_way_id"))
            checked += 1
    assert checked > 30


def test_sample_is_seeded(
    karhula: Path, shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def sample(seed: int, name: str) -> list[str]:
        out = tmp_path / name
        rc, err = build(
            capsys, "--bbox", KARHULA, "--zoom", 17, "--classes", MINE, "--osm", shared_data / "osm" / "test.osm.pbf",
            "--size", 10, "--seed", seed, "--min-labelled", 1000, "--out", out, "--preview-tiles", 0,
        )  # fmt: skip
        assert rc == 0, err
        return (out / "sample.txt").read_text().split()

    a, b, c = sample(1, "a"), sample(1, "b"), sample(2, "c")
    assert a == b and len(a) == 10 and a != c
    everything = set((karhula / "sample.txt").read_text().split())
    assert set(a) <= everything and set(c) <= everything


def test_mbtiles_input_gives_labels(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mbtiles = shared_data / "osm" / "portugal-z17.mbtiles"
    rc, err = build(
        capsys, "--bbox", SINTRA, "--zoom", 17, "--classes", MINE, "--osm", mbtiles, "--out", tmp_path / "m"
    )
    assert rc == 0, err
    manifest = json.loads((tmp_path / "m" / "manifest.json").read_text())
    assert manifest["osm"]["driver"] == "MBTiles"
    assert manifest["pixels_per_class"]["building"] > 0
    # Lines: stroke-width in pixels (roads of width 1 and 5 from the same vector tiles).
    widths = {}
    for w in (1, 5):
        cfg = tmp_path / f"roads{w}.json"
        cfg.write_text(
            json.dumps(
                [
                    {
                        "name": "road",
                        "color": "#010101",
                        "stroke-width": str(w),
                        "filter": "[highway]",
                        "sourceLayer": "osm",
                    }
                ]
            )
        )
        rc, err = build(
            capsys,
            "--bbox",
            SINTRA,
            "--zoom",
            17,
            "--classes",
            cfg,
            "--osm",
            mbtiles,
            "--out",
            tmp_path / f"r{w}",
            "--preview-tiles",
            0,
        )
        assert rc == 0, err
        widths[w] = json.loads((tmp_path / f"r{w}" / "manifest.json").read_text())["pixels_per_class"]["road"]
    assert 3.5 < widths[5] / widths[1] < 6.5


def test_sourcelayer_missing_from_vector_tiles(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "c.json"
    cfg.write_text(
        json.dumps([{"name": "road", "color": "#010101", "filter": "[highway]", "sourceLayer": "roads"}])
    )
    rc, err = build(
        capsys,
        "--bbox",
        SINTRA,
        "--classes",
        cfg,
        "--osm",
        shared_data / "osm" / "portugal-z17.mbtiles",
        "--out",
        tmp_path / "o",
    )
    assert rc == 2 and "has no layer 'roads'" in err and "layers: osm" in err


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"--bbox": "26.93,60.52,26.97"}, "four numbers"),
        ({"--bbox": "26.97,60.52,26.93,60.54"}, "--bbox is empty"),
        ({"--bbox": "60.52,26.93,60.54,26.97"}, "no feature of mine.json lies in --bbox"),
        ({"--bbox": "26.93,95,26.97,96"}, "latitudes must lie in"),
        ({"--bbox": "a,b,c,d"}, "four numbers"),
        ({"--osm": "missing.osm.pbf"}, "OSM file not found: missing.osm.pbf"),
        ({"--osm": str(MINE)}, "cannot read"),
        ({"--imagery": "ftp://tiles.example.com/{z}/{x}/{y}.png"}, "must be an http(s) URL template"),
        ({"--imagery": "https://tiles.example.com/{z}/{x}.png"}, "lacks {y}"),
        ({"--imagery": "https://tiles.example.com/{z}/{x}/{y}/{style}.png"}, "unknown placeholder {style}"),
        ({"--imagery": "https://tiles.example.com/{z}/{x}/{y.png"}, "unbalanced braces"),
        ({"--zoom": "25"}, "--zoom must be between 0 and 24"),
    ],
)
def test_bad_input_is_explained(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], change: dict, words: str
) -> None:
    args = {
        "--bbox": KARHULA,
        "--classes": str(MINE),
        "--osm": str(shared_data / "osm" / "test.osm.pbf"),
        "--out": str(tmp_path / "o"),
    }
    args.update(change)
    rc, err = build(capsys, *[v for kv in args.items() for v in kv])
    assert rc == 2, err
    # Progress lines may come first; the error is the last line, one line, plainly worded.
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: ") and words in last, err
    assert "Traceback" not in err


def test_bad_class_config_is_explained(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "c.json"
    for text, words in (
        ("[{]", "not valid JSON"),
        ('[{"name": "a", "color": "#010101", "fill": "x"}]', "unknown key 'fill'"),
        ('[{"name": "a", "color": "#00ff00"}]', "every byte must be the class index"),
        ('[{"name": "a", "color": "#010101", "filter": "[x] = 1 +"}]', "class 'a': bad filter at position 9"),
    ):
        cfg.write_text(text)
        rc, err = build(
            capsys,
            "--bbox",
            KARHULA,
            "--classes",
            cfg,
            "--osm",
            shared_data / "osm" / "test.osm.pbf",
            "--out",
            tmp_path / "o",
        )
        assert rc == 2 and words in err, err


# --- alignment with real imagery ------------------------------------------------------------


def _to_3857() -> osr.CoordinateTransformation:
    src, dst = osr.SpatialReference(), osr.SpatialReference()
    src.ImportFromEPSG(4326)
    dst.ImportFromEPSG(3857)
    for s in (src, dst):
        s.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    return osr.CoordinateTransformation(src, dst)


@pytest.fixture(scope="module")
def oam_datasets(
    shared_data: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, tuple[Path, TileServer]]:
    areas = sorted((shared_data / "oam-osm-buildings").glob("area*"))
    assert len(areas) == 3
    out = {}
    with TileServer(oam_provider(*areas)) as server:
        for area in areas:
            ds = ogr.Open(str(area / "labels.geojson"))
            w, e, s, n = ds.GetLayer(0).GetExtent()
            del ds
            dest = tmp_path_factory.mktemp(area.name)
            rc = run_cli(
                main,
                [
                    *("build", "--bbox", f"{w},{s},{e},{n}", "--zoom", "19", "--classes", str(BUILDINGS)),
                    *(
                        "--osm",
                        str(area / "labels.geojson"),
                        "--imagery",
                        server.template,
                        "--out",
                        str(dest),
                        "--quiet",
                    ),
                ],
            )
            assert rc == 0
            out[area.name] = (dest, server)
    return out


def test_oam_labels_line_up_with_the_imagery(shared_data: Path, oam_datasets: dict) -> None:
    px = pixel_size(19)
    inside = outside = 0
    for name, (out, _server) in oam_datasets.items():
        area = shared_data / "oam-osm-buildings" / name
        images = {p.stem for p in (out / "images").glob("*.png")}
        assert images, name
        # The fetched image is the served OAM tile of the same z/x/y.
        for tid in images:
            z, x, y = tid.split("-")
            served, _ = to_rgb(read_image(area / f"OAM-{x}-{y}-{z}.png"))
            assert np.array_equal(read_image(out / "images" / f"{tid}.png"), served)
        polys = []
        to_3857 = _to_3857()
        ds = ogr.Open(str(area / "labels.geojson"))  # kept: a layer dies with its dataset
        for f in ds.GetLayer(0):
            g = f.GetGeometryRef().Clone()
            p = g.PointOnSurface()
            g.Transform(to_3857)
            polys.append(g)
            # A point well inside the building (2 px from its outline) is labelled building.
            tid, row, col = tile_pixel(p.GetX(), p.GetY(), 19)
            q = ogr.Geometry(ogr.wkbPoint)
            q.AddPoint_2D(*mercantile.xy(p.GetX(), p.GetY()))
            if tid in images and g.Boundary().Distance(q) > 2 * px:
                assert labels_of(out, tid)[row, col] == 1, (name, tid, row, col)
                inside += 1
        union = ogr.Geometry(ogr.wkbMultiPolygon)
        for g in polys:
            union.AddGeometry(g)
        # Pixels far (4 px) from every building are background.
        for tid in sorted(images):
            z, x, y = (int(v) for v in tid.split("-"))
            b = mercantile.xy_bounds(x, y, z)
            labels = labels_of(out, tid)
            for row in range(8, 256, 16):
                for col in range(8, 256, 16):
                    q = ogr.Geometry(ogr.wkbPoint)
                    q.AddPoint_2D(b.left + (col + 0.5) * px, b.top - (row + 0.5) * px)
                    if union.Distance(q) > 4 * px:
                        assert labels[row, col] == 0, (name, tid, row, col)
                        outside += 1
    assert inside > 100 and outside > 1000, (inside, outside)


def test_oam_preview_and_skipped(oam_datasets: dict) -> None:
    for out, _server in oam_datasets.values():
        assert (out / "preview.png").is_file()
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["source"].endswith("/{z}/{x}/{y}.png")
        listed = (out / "skipped.csv").read_text().splitlines()
        assert listed[0] == "id,reason"
        # Labels reach beyond the imagery: those tiles are listed as 404, not failures.
        assert all(line.endswith("not found (HTTP 404)") for line in listed[1:])
        assert len(listed) - 1 == len(manifest["skipped"]) == manifest["counts"]["images_skipped"]


def test_help_explains_every_option_and_default() -> None:
    """``--help`` as a user runs it: every option of the issue, with its default."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "training.dataset", "build", "--help"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "250"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    text = " ".join(done.stdout.split())  # argparse wraps lines
    for words in (
        "--bbox BBOX area as MINLON,MINLAT,MAXLON,MAXLAT in WGS84 degrees",
        "--zoom ZOOM XYZ zoom of the tiles (default: 17)",
        "--classes CLASSES class config JSON",
        "--osm OSM OpenStreetMap data: .osm.pbf, GeoJSON or OSM QA .mbtiles",
        "{s} subdomains, {-y} TMS rows",
        "TileJSON URL; without it only labels and sample lists are made",
        "(default: MapboxAccessToken; never logged or stored)",
        "--size SIZE tiles to sample (default: 10000)",
        "--seed SEED random seed of the sample (default: 0)",
        "sample-filtered.txt (default: 1)",
        "--out OUT dataset folder",
        "--workers WORKERS parallel downloads (default: 8)",
        "--timeout TIMEOUT seconds per HTTP request (default: 30.0)",
        "with backoff (default: 3)",
        "tiles on preview.png, 0: none (default: 16)",
        "Re-running resumes: images on disk are kept.",
    ):
        assert words in text, words
    assert "``" not in done.stdout


def test_western_bbox_given_as_a_separate_argument(shared_data: Path, tmp_path: Path) -> None:
    """``--bbox -9.49,...`` (two words, as the issue writes it) parses although it starts with a minus."""
    import subprocess
    import sys

    mbtiles = shared_data / "osm" / "portugal-z17.mbtiles"
    done = subprocess.run(
        [sys.executable, "-m", "training.dataset", "build", "--bbox", SINTRA, "--classes", str(MINE),
         "--osm", str(mbtiles), "--out", str(tmp_path / "w"), "--size", "5", "--preview-tiles", "0"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "w" / "manifest.json").read_text())["bbox"] == [
        -9.492,
        38.823,
        -9.404,
        38.891,
    ]
