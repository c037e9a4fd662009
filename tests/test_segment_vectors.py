"""Polygons per class and clean classes end to end: loopback tiles, real onnxruntime, real GDAL files.

The test model's class follows each pixel's colour, so the regions are known
from the imagery; scipy (test-only) counts them independently of GDAL.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from inference_helpers import NAMES, cli, make_rgb_model, segment
from osgeo import gdal, ogr, osr
from scipy import ndimage
from test_inference_segment import T0, tile_rect
from tileserver import TileServer

from satseg_plugin.inference import outputs, vectors
from satseg_plugin.inference.counts import row_pixel_areas
from satseg_plugin.inference.errors import SatsegError
from satseg_plugin.inference.segment import SegmentRequest, SegmentResult, run_segment
from satseg_plugin.inference.tileplan import srs_from_user

BBOX = tile_rect(T0.x + 0.3, T0.y + 0.4, T0.x + 2.2, T0.y + 1.9)


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_rgb_model(tmp_path_factory.mktemp("m") / "rgb.onnx", overlap=25, blur=True)


def run(model: Path, url: str, out: Path, **kw: object) -> SegmentResult:
    return segment(model, url, out, BBOX, **kw)


def features(path: str) -> list[tuple[int, str, float, ogr.Geometry]]:
    ds = ogr.Open(path)
    layer = ds.GetLayer("classes")
    out = [
        (f.GetField("class_id"), f.GetField("class"), f.GetField("area_m2"), f.GetGeometryRef().Clone())
        for f in layer
    ]
    ds = None
    return out


def classes_of(path: str) -> np.ndarray:
    ds = gdal.Open(path)
    arr = ds.GetRasterBand(1).ReadAsArray()
    ds = None
    return arr


def regions(classes: np.ndarray) -> int:
    """4-connected regions of every class (nodata 255 left out), counted by scipy."""
    return sum(ndimage.label(classes == k)[1] for k in range(len(NAMES)))


def test_polygons_match_the_raster_and_the_table(
    model: Path, pattern_server: TileServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    whole = run(model, pattern_server.template, tmp_path / "whole", write_vectors=True)
    monkeypatch.setattr(vectors, "BLOCK_PIXELS", 10_000)  # about 20 rows a block: many block edges
    blocks = run(model, pattern_server.template, tmp_path / "blocks", write_vectors=True)
    classes = classes_of(blocks.classes_path)
    height, width = classes.shape
    assert 10_000 // width < height / 10  # the regions really cross block edges
    assert np.array_equal(classes, classes_of(whole.classes_path))
    feats = features(blocks.vectors_path)
    n = regions(classes)
    assert blocks.polygons == len(feats) == n == whole.polygons  # one feature per region, no cut
    assert all(f[3].IsValid() for f in feats)
    assert {f[1] for f in feats} == set(NAMES) and all(NAMES[f[0]] == f[1] for f in feats)
    ds = ogr.Open(blocks.vectors_path)
    srs = ds.GetLayer("classes").GetSpatialRef()
    assert srs.GetAuthorityCode(None) == "3857"
    ds = None
    # Areas per class: the polygons' sum against the table (the same pixels, the same measure) ...
    grid = blocks.grid
    lon, lat = (
        osr.CoordinateTransformation(srs_from_user("EPSG:3857"), srs_from_user("EPSG:4326"))
        .TransformPoint((BBOX[0] + BBOX[2]) / 2, (BBOX[1] + BBOX[3]) / 2)[:2]
    )  # fmt: skip
    laea = srs_from_user(f"+proj=laea +lat_0={lat} +lon_0={lon} +datum=WGS84 +units=m +no_defs")
    ct = osr.CoordinateTransformation(srs_from_user(grid.crs_wkt), laea)
    worst = 0.0
    for i, count in enumerate(blocks.counts):
        attr = sum(f[2] for f in feats if f[0] == i)
        assert attr == pytest.approx(count.area_m2, rel=1e-9)
        # ... and the geometries' own ellipsoidal area (equal-area projection), within 0.5 %.
        geo = 0.0
        for f in feats:
            if f[0] == i:
                g = f[3].Clone()
                g.Transform(ct)
                geo += g.GetArea()
        worst = max(worst, abs(geo / count.area_m2 - 1))
    assert worst < 0.005
    print(f"{len(feats)} polygons; worst class area difference, geometry vs table: {100 * worst:.4f} %")
    names = sorted(p.name for p in (tmp_path / "blocks").iterdir())
    assert "classes.gpkg" in names and not [p for p in names if ".part" in p]


def test_min_area_cleans_raster_polygons_and_counts_alike(
    model: Path, pattern_server: TileServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(outputs, "OVERVIEW_MIN_SIDE", 256)  # overviews as on a raster of 3,072+ px
    raw = run(model, pattern_server.template, tmp_path / "raw")
    min_area = 25.0
    clean = run(model, pattern_server.template, tmp_path / "clean", write_vectors=True, min_area_m2=min_area)
    before, after = classes_of(raw.classes_path), classes_of(clean.classes_path)
    pixel = row_pixel_areas(clean.grid)[clean.grid.height // 2]
    assert clean.min_area_pixels == int(np.ceil(min_area / pixel))
    assert regions(after) < regions(before) and (after != before).any()
    for k in range(len(NAMES)):  # no region left under the threshold
        labels, n = ndimage.label(after == k)
        sizes = np.bincount(labels.ravel())[1:]
        assert n == 0 or sizes.min() >= clean.min_area_pixels
    # The table counts the sieved raster ...
    assert [c.pixels for c in clean.counts] == [int((after == k).sum()) for k in range(len(NAMES))]
    # ... and so do the polygons, every one at least the minimum area.
    feats = features(clean.vectors_path)
    assert len(feats) == regions(after)
    assert min(f[2] for f in feats) >= min_area * 0.99
    for i, count in enumerate(clean.counts):
        assert sum(f[2] for f in feats if f[0] == i) == pytest.approx(count.area_m2, rel=1e-9)
    # The overviews were built from the sieved pixels.
    ds = gdal.Open(clean.classes_path)
    assert ds.GetRasterBand(1).GetOverviewCount() >= 1
    ds = None


def test_polygons_without_a_class_raster_and_simplified(
    model: Path, pattern_server: TileServer, tmp_path: Path
) -> None:
    plain = run(model, pattern_server.template, tmp_path / "plain", write_vectors=True, write_heatmaps=False)
    simple = run(
        model, pattern_server.template, tmp_path / "simple", write_vectors=True, write_heatmaps=False,
        write_classes=False, simplify_m=1.0,
    )  # fmt: skip
    assert simple.classes_path is None
    assert sorted(p.name for p in (tmp_path / "simple").iterdir()) == ["classes.gpkg", "pixel_counts.csv"]
    fp, fs = features(plain.vectors_path), features(simple.vectors_path)
    assert len(fp) == len(fs) and [f[2] for f in fp] == [f[2] for f in fs]

    def vertices(feats: list) -> int:
        return sum(len(f[3].ExportToWkt().split(",")) for f in feats)

    assert vertices(fs) < vertices(fp) * 0.7
    with pytest.raises(SatsegError, match="simplification applies to the polygons"):
        run(model, pattern_server.template, tmp_path / "x", simplify_m=1.0)
    with pytest.raises(SatsegError, match="0 or more"):
        run(model, pattern_server.template, tmp_path / "y", min_area_m2=-1.0)


def test_cli_vectors_min_area_simplify(model: Path, pattern_server: TileServer, tmp_path: Path) -> None:
    bbox = ",".join(f"{v:.3f}" for v in BBOX)
    base = [
        "segment",
        "--model",
        model,
        "--bbox",
        bbox,
        "--bbox-crs",
        "EPSG:3857",
        "--tiles",
        pattern_server.template,
    ]
    done = cli(
        *base, "--out", tmp_path / "out", "--vectors", "--min-area", "20", "--simplify", "0.5", "--quiet"
    )
    assert done.returncode == 0, done.stderr
    assert "polygons in" in done.stdout and "merged into their neighbours" in done.stdout
    assert (tmp_path / "out" / "classes.gpkg").is_file()
    helped = cli("segment", "--help")
    assert "--vectors" in helped.stdout and "--min-area" in helped.stdout and "--simplify" in helped.stdout
    bad = cli(*base, "--out", tmp_path / "x", "--simplify", "1")
    assert (
        bad.returncode == 2
        and "simplification applies to the polygons" in bad.stderr
        and "Traceback" not in bad.stderr
    )
    clustered = cli(*base, "--out", tmp_path / "c", "--vectors", "--cluster", "local:1")
    assert clustered.returncode == 2 and "single process only" in clustered.stderr
    assert not (tmp_path / "c").exists()


def test_cancel_while_tracing_leaves_no_file(model: Path, pattern_server: TileServer, tmp_path: Path) -> None:
    from satseg_plugin.inference.errors import Cancelled

    tracing = False

    def progress(_fraction: float, message: str) -> None:
        nonlocal tracing
        tracing = tracing or message.startswith("tracing")

    out = tmp_path / "out"
    req = SegmentRequest(
        model=model, bbox=BBOX, bbox_crs="EPSG:3857", tiles_url=pattern_server.template, out_dir=out,
        write_vectors=True, min_area_m2=5.0,
    )  # fmt: skip
    with pytest.raises(Cancelled):
        run_segment(req, progress=progress, is_cancelled=lambda: tracing)
    # No raster, no GeoPackage, no temporary file: the folder the run made is removed with them.
    assert tracing and not out.exists()
