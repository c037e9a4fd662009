"""The inference core end to end: real HTTP tiles on loopback, real onnxruntime, real GeoTIFFs.

The test models' class per pixel follows the pixel's colour, so every output
value is known exactly from the imagery.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import mercantile
import numpy as np
import pytest
from inference_helpers import (
    HEATMAP_ROUNDING,
    NAMES,
    cli,
    expected_probabilities,
    heatmap_probabilities,
    make_rgb_model,
    mosaic,
    pattern_provider,
    segment,
    write_geotiff,
)
from osgeo import gdal, osr
from tileserver import TileServer, oam_provider

from satseg_plugin.inference import outputs
from satseg_plugin.inference.errors import Cancelled, ExtentError, SourceError
from satseg_plugin.inference.segment import SegmentRequest, SegmentResult, count_tiles, run_segment
from satseg_plugin.inference.sources import RasterSource
from satseg_plugin.inference.tileplan import HALF_WORLD, xyz_resolution

Z = 18
T0 = mercantile.tile(
    10.0, 45.0, Z
)  # a tile at 45° N, where a pixel covers half the area it does at the equator
RES = xyz_resolution(Z)


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_rgb_model(tmp_path_factory.mktemp("m") / "rgb.onnx")


def tile_rect(x0: float, y0: float, x1: float, y1: float) -> tuple[float, float, float, float]:
    """EPSG:3857 bounds of tile coordinates (fractions allowed) at zoom Z."""
    left = -HALF_WORLD + x0 * 256 * RES
    right = -HALF_WORLD + x1 * 256 * RES
    top = HALF_WORLD - y0 * 256 * RES
    bottom = HALF_WORLD - y1 * 256 * RES
    return left, bottom, right, top


def read(path: str | Path) -> tuple[np.ndarray, tuple, str]:
    ds = gdal.Open(str(path))
    arr, gt, wkt = ds.ReadAsArray(), ds.GetGeoTransform(), ds.GetProjection()
    ds = None
    return arr, gt, wkt


def global_origin(gt: tuple) -> tuple[int, int]:
    """The global XYZ pixel of a grid's top-left corner; asserts it lies on the XYZ pixel grid."""
    assert gt[1] == pytest.approx(RES, rel=1e-12) and gt[5] == pytest.approx(-RES, rel=1e-12)
    px, py = (gt[0] + HALF_WORLD) / RES, (HALF_WORLD - gt[3]) / RES
    assert px == pytest.approx(round(px), abs=1e-6) and py == pytest.approx(round(py), abs=1e-6)
    return round(px), round(py)


def expected_for(gt: tuple, width: int, height: int, blur: bool = False) -> np.ndarray:
    """The class probabilities a whole-image run gives for a grid (from the pattern tiles)."""
    px, py = global_origin(gt)
    tx0, ty0 = px // 256, py // 256
    tx1, ty1 = (px + width - 1) // 256, (py + height - 1) // 256
    image = mosaic(tx0, ty0, tx1, ty1, Z)
    probs = expected_probabilities(image, blur)
    return probs[:, py - ty0 * 256 : py - ty0 * 256 + height, px - tx0 * 256 : px - tx0 * 256 + width]


def ground_area(gt: tuple, height: int) -> np.ndarray:
    """Independent: a Web Mercator pixel's area on the WGS84 ellipsoid, per row (N * M * cos² / a²)."""
    a, f = 6378137.0, 1 / 298.257223563
    e2 = f * (2 - f)
    y = gt[3] + gt[5] * (np.arange(height) + 0.5)
    lat = 2 * np.arctan(np.exp(y / a)) - math.pi / 2
    s2 = np.sin(lat) ** 2
    n = a / np.sqrt(1 - e2 * s2)
    m = a * (1 - e2) / (1 - e2 * s2) ** 1.5
    return RES**2 * np.cos(lat) ** 2 * n * m / a**2


def run(model: Path, url: str, out: Path, bbox=None, crs: str = "EPSG:3857", **kw) -> SegmentResult:
    return segment(
        model, url, out, bbox or tile_rect(T0.x + 0.3, T0.y + 0.4, T0.x + 2.7, T0.y + 1.9), crs, **kw
    )


def test_classes_georeferencing_counts_and_areas(
    model: Path, pattern_server: TileServer, tmp_path: Path
) -> None:
    result = run(model, pattern_server.template, tmp_path)
    classes, gt, wkt = read(result.classes_path)
    srs = osr.SpatialReference(wkt=wkt)
    assert srs.GetAuthorityCode(None) == "3857"
    px, py = global_origin(gt)
    assert (px, py) == (math.floor((T0.x + 0.3) * 256), math.floor((T0.y + 0.4) * 256))
    h, w = classes.shape
    assert w == math.ceil((T0.x + 2.7) * 256) - px and h == math.ceil((T0.y + 1.9) * 256) - py
    probs = expected_for(gt, w, h)
    np.testing.assert_array_equal(classes, probs.argmax(axis=0))
    assert len(np.unique(classes)) == 4  # every class occurs: the test would see a swapped class
    for i, name in enumerate(NAMES):
        _, hgt, _ = read(result.heatmap_paths[name])
        assert hgt == gt
        # 8-bit probabilities (scale 1/254): each the float one rounded to the nearest step.
        np.testing.assert_allclose(
            heatmap_probabilities(result.heatmap_paths[name]), probs[i], atol=HEATMAP_ROUNDING
        )
    ds = gdal.Open(result.heatmap_paths["red"])
    assert ds.GetMetadata("IMAGE_STRUCTURE")["COMPRESSION"] == "DEFLATE"
    assert ds.GetRasterBand(1).GetOverviewCount() == 0  # a small raster draws as fast without
    # What GDAL hands a reader that applies the scale (QGIS does): 0..1.
    unscaled = gdal.Translate("/vsimem/unscaled.tif", ds, unscale=True, outputType=gdal.GDT_Float32)
    np.testing.assert_allclose(unscaled.ReadAsArray(), probs[1], atol=HEATMAP_ROUNDING)
    unscaled = ds = None
    gdal.Unlink("/vsimem/unscaled.tif")
    # Counts: every pixel once, areas measured on the ellipsoid.
    pixels = [c.pixels for c in result.counts]
    assert sum(pixels) == w * h
    assert pixels == [int((classes == i).sum()) for i in range(4)]
    areas = ground_area(gt, h)
    for i, c in enumerate(result.counts):
        assert c.area_m2 == pytest.approx(float(((classes == i).sum(axis=1) * areas).sum()), rel=1e-4)
        assert c.area_ha == pytest.approx(c.area_m2 / 1e4)
    assert sum(c.share for c in result.counts) == pytest.approx(1.0)
    # At 45° N a pixel covers about half its Mercator area (cos² 45° = 0.5).
    assert sum(c.area_m2 for c in result.counts) / (w * h * RES**2) == pytest.approx(0.5, rel=0.02)
    with open(result.counts_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["class"] for r in rows] == NAMES and list(rows[0]) == [
        "class",
        "pixels",
        "share",
        "area_m2",
        "area_ha",
    ]
    assert [int(r["pixels"]) for r in rows] == pixels
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["classes.tif", "classes.tif.aux.xml", "pixel_counts.csv", *(f"heatmap_{n}.tif" for n in NAMES)]
    )


def test_class_raster_is_styled_tiled_compressed_with_overviews(
    model: Path, pattern_server: TileServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(outputs, "OVERVIEW_MIN_SIDE", 256)  # overviews as on a raster of 3,072+ px
    bbox = tile_rect(T0.x, T0.y, T0.x + 3, T0.y + 2)
    result = run(model, pattern_server.template, tmp_path, bbox=bbox, write_heatmaps=False)
    ds = gdal.Open(result.classes_path)
    band = ds.GetRasterBand(1)
    assert band.DataType == gdal.GDT_Byte and band.GetNoDataValue() == 255
    assert band.GetCategoryNames()[:4] == NAMES
    table = band.GetColorTable()
    assert [table.GetColorEntry(i)[:3] for i in range(4)] == [
        (0, 0, 0),
        (255, 0, 0),
        (0, 255, 0),
        (0, 0, 255),
    ]
    assert ds.GetMetadata("IMAGE_STRUCTURE")["COMPRESSION"] == "DEFLATE"
    assert band.GetBlockSize() == [256, 256]
    assert band.GetOverviewCount() >= 2
    ds = band = None
    assert result.heatmap_paths == {} and not list(tmp_path.glob("heatmap_*"))


def test_overviews_only_above_the_size_that_draws_fast_without() -> None:
    assert outputs.overview_factors(3072, 3072) == [] and outputs.overview_factors(100, 3072) == []
    assert outputs.overview_factors(3073, 10) == [2, 4, 8, 16]  # down to 256 px or less
    assert outputs.overview_factors(8192, 4000) == [2, 4, 8, 16, 32]


@pytest.mark.parametrize("crs", ["EPSG:4326", "EPSG:3857", "EPSG:32632"])
def test_extent_in_any_crs_lands_on_the_xyz_grid(
    crs: str, model: Path, pattern_server: TileServer, tmp_path: Path
) -> None:
    merc = tile_rect(T0.x + 0.5, T0.y + 0.5, T0.x + 1.5, T0.y + 1.25)
    src, dst = osr.SpatialReference(), osr.SpatialReference()
    src.ImportFromEPSG(3857)
    dst.ImportFromEPSG(int(crs.split(":")[1]))
    for s in (src, dst):
        s.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    bbox = osr.CoordinateTransformation(src, dst).TransformBounds(*merc, 21)
    result = run(model, pattern_server.template, tmp_path, bbox=bbox, crs=crs, write_heatmaps=False)
    classes, gt, _ = read(result.classes_path)
    px, py = global_origin(gt)
    h, w = classes.shape
    # The grid covers the extent (pixels snapped outwards), and no more than a rotation's worth.
    want = ((merc[0] + HALF_WORLD) / RES, (HALF_WORLD - merc[3]) / RES, (merc[2] + HALF_WORLD) / RES)
    assert px <= want[0] + 1e-6 and py <= want[1] + 1e-6 and px + w >= want[2] - 1e-6
    assert w <= 256 + 2 * (256 if crs == "EPSG:32632" else 1)
    np.testing.assert_array_equal(classes, expected_for(gt, w, h).argmax(axis=0))


def test_overlap_blending_leaves_no_seams(tmp_path: Path, pattern_server: TileServer) -> None:
    bbox = tile_rect(T0.x + 0.5, T0.y + 0.5, T0.x + 2.5, T0.y + 2.5)
    diffs, heats, runs = {}, {}, {}
    for overlap, stripe in ((0, 4096), (25, 4096), (25, 256)):
        m = make_rgb_model(tmp_path / f"blur{overlap}.onnx", overlap=overlap, blur=True)
        result = run(
            m, pattern_server.template, tmp_path / f"o{overlap}-{stripe}", bbox=bbox, stripe_width=stripe
        )
        _, gt, _ = read(result.heatmap_paths["red"])
        heat = heatmap_probabilities(result.heatmap_paths["red"])
        probs = expected_for(gt, heat.shape[1], heat.shape[0], blur=True)
        inner = (slice(3, -3), slice(3, -3))  # the extent's own edge has no neighbour to blend with
        diffs[overlap, stripe] = np.abs(heat - probs[1])[inner]
        heats[overlap, stripe] = heat
        runs[overlap, stripe] = (result.windows, result.windows_run)
    # Without overlap, the window borders show (zero padding): a seam.
    assert diffs[0, 4096].max() > 0.2
    # With 25 % overlap and blending, the result matches a whole-image run everywhere.
    assert diffs[25, 4096].max() < 0.01, diffs[25, 4096].max()
    # Cutting the extent into stripes of 256 columns (to bound memory) changes nothing.
    np.testing.assert_array_equal(heats[25, 256], heats[25, 4096])
    # The windows across each cut belong to both stripes but go through the model once.
    assert runs[25, 256][0] > runs[25, 4096][0]
    assert runs[25, 256][1] == runs[25, 4096][1]


def test_tile_faults_become_nodata_and_are_listed(model: Path, tmp_path: Path) -> None:
    with TileServer(pattern_provider) as s:
        s.faults[(Z, T0.x, T0.y)] = 404
        s.faults[(Z, T0.x + 1, T0.y)] = 500
        s.faults[(Z, T0.x + 2, T0.y)] = "corrupt"
        s.faults[(Z, T0.x, T0.y + 1)] = 3.0  # slower than the timeout
        bbox = tile_rect(T0.x, T0.y, T0.x + 3, T0.y + 2)
        result = run(model, s.template, tmp_path, bbox=bbox, timeout=0.5, retries=1)
        assert s.requests[(Z, T0.x + 1, T0.y)] == 2  # the 500 was retried
    failed = dict(result.tiles_failed)
    assert set(failed) == {
        f"{Z}/{T0.x}/{T0.y}",
        f"{Z}/{T0.x + 1}/{T0.y}",
        f"{Z}/{T0.x + 2}/{T0.y}",
        f"{Z}/{T0.x}/{T0.y + 1}",
    }
    assert "404" in failed[f"{Z}/{T0.x}/{T0.y}"] and "500" in failed[f"{Z}/{T0.x + 1}/{T0.y}"]
    assert "not a readable image" in failed[f"{Z}/{T0.x + 2}/{T0.y}"]
    assert "Timeout" in failed[f"{Z}/{T0.x}/{T0.y + 1}"]
    classes, gt, _ = read(result.classes_path)
    heat, _, _ = read(result.heatmap_paths["red"])
    assert (classes[:256] == 255).all() and (heat[:256] == 255).all()  # the whole first row of tiles
    assert (classes[256:, :256] == 255).all()
    good = classes[256:, 256:]
    np.testing.assert_array_equal(good, expected_for(gt, 768, 512).argmax(axis=0)[256:, 256:])
    assert sum(c.pixels for c in result.counts) == 2 * 256 * 256
    assert result.tiles_total == 6
    # One window per tile (no overlap): the four without imagery never reached the model.
    assert (result.windows, result.windows_run) == (6, 2)


def test_token_refused_stops_and_stays_secret(
    model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with TileServer(pattern_provider, token="s3cret") as s:
        with pytest.raises(SourceError) as err:
            run(model, s.template + "?access_token=wrong-token-123", tmp_path / "a")
        assert "token" in str(err.value) and "wrong-token-123" not in str(err.value)
        assert not (tmp_path / "a").exists() or not list((tmp_path / "a").iterdir())
        monkeypatch.setenv("SATSEG_TEST_TOKEN", "s3cret")  # the token from the environment works
        result = run(model, s.template, tmp_path / "b", token_env="SATSEG_TEST_TOKEN", write_heatmaps=False)
        assert not result.tiles_failed
        tilejson = run(model, s.url + "/tiles.json", tmp_path / "c", token_env="SATSEG_TEST_TOKEN")
        assert tilejson.counts == result.counts


def test_bad_url_and_extent_fail_before_any_work(
    model: Path, pattern_server: TileServer, tmp_path: Path
) -> None:
    def req(**kw: object) -> SegmentRequest:
        values = {
            "model": model,
            "bbox": (10.0, 45.0, 10.01, 45.01),
            "tiles_url": pattern_server.template,
            "out_dir": tmp_path,
        }
        values.update(kw)
        return SegmentRequest(**values)  # type: ignore[arg-type]

    with pytest.raises(SourceError, match=r"lacks \{y\}"):
        count_tiles(req(tiles_url=pattern_server.url + "/{z}/{x}.png"))
    with pytest.raises(SourceError, match="http"):
        count_tiles(req(tiles_url="ftp://example.com/{z}/{x}/{y}.png"))
    with pytest.raises(SourceError, match="exactly one"):
        count_tiles(req(raster_path="/some/file.tif"))
    with pytest.raises(ExtentError, match="empty"):
        count_tiles(req(bbox=(10.0, 45.0, 9.0, 46.0)))
    with pytest.raises(ExtentError, match="unknown coordinate reference system"):
        count_tiles(req(bbox_crs="EPSG:999999"))
    with pytest.raises(ExtentError, match="outside"):
        count_tiles(req(bbox=(10.0, 87.0, 11.0, 89.0)))
    with pytest.raises(ExtentError, match="zoom in"):
        count_tiles(req(bbox=(-100.0, -60.0, 100.0, 60.0), zoom=18))
    assert count_tiles(req()) > 0
    assert list(tmp_path.iterdir()) == []


def test_cancel_mid_run_leaves_no_file(model: Path, tmp_path: Path) -> None:
    calls: list[float] = []
    bbox = tile_rect(T0.x, T0.y, T0.x + 4, T0.y + 3)
    with TileServer(pattern_provider, delay=0.05) as s, pytest.raises(Cancelled):
        run_segment(
            SegmentRequest(
                model=model,
                bbox=bbox,
                bbox_crs="EPSG:3857",
                tiles_url=s.template,
                out_dir=tmp_path,
                batch_size=1,
            ),
            progress=lambda f, _m: calls.append(f),
            is_cancelled=lambda: len(calls) > 3,
        )
    assert 0 < max(calls) < 1
    assert list(tmp_path.iterdir()) == []


def test_raster_source_in_its_own_crs(model: Path, tmp_path: Path) -> None:
    image = mosaic(T0.x, T0.y, T0.x + 1, T0.y + 1, Z)
    gt = (-HALF_WORLD + T0.x * 256 * RES, RES, 0.0, HALF_WORLD - T0.y * 256 * RES, 0.0, -RES)
    merc = tmp_path / "merc.tif"
    ds = gdal.GetDriverByName("GTiff").Create(str(merc), 512, 512, 3, gdal.GDT_Byte)
    ds.SetGeoTransform(gt)
    ds.SetProjection(osr.SpatialReference(wkt=_wkt(3857)).ExportToWkt())
    for i in range(3):
        ds.GetRasterBand(i + 1).WriteArray(image[..., i])
    ds = None
    utm = tmp_path / "utm.tif"
    gdal.Warp(str(utm), str(merc), dstSRS="EPSG:32632", xRes=0.5, yRes=0.5, resampleAlg="near")
    # No resolution in the model: the raster's own pixels are segmented.
    for src in (merc, utm):
        req = SegmentRequest(
            model=model, bbox=tile_rect(T0.x + 0.25, T0.y + 0.25, T0.x + 1.75, T0.y + 1.75), bbox_crs="EPSG:3857",
            raster_path=str(src), out_dir=tmp_path / src.stem,
        )  # fmt: skip
        result = run_segment(req)
        classes, cgt, wkt = read(result.classes_path)
        assert osr.SpatialReference(wkt=wkt).IsSame(
            osr.SpatialReference(wkt=_wkt(3857 if src == merc else 32632))
        )
        pixels = gdal.Open(str(src))
        col, row = (
            round((cgt[0] - pixels.GetGeoTransform()[0]) / cgt[1]),
            round((cgt[3] - pixels.GetGeoTransform()[3]) / cgt[5]),
        )
        rgb = np.moveaxis(pixels.ReadAsArray(col, row, classes.shape[1], classes.shape[0]), 0, -1)
        pixels = None
        want = expected_probabilities(rgb).argmax(axis=0)
        inside = classes != 255
        assert inside.mean() > 0.9  # the UTM raster's warped corners are nodata
        np.testing.assert_array_equal(classes[inside], want[inside])
        assert sum(c.pixels for c in result.counts) == int(inside.sum())


def _wkt(epsg: int) -> str:
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(epsg)
    return srs.ExportToWkt()


def test_unusable_rasters_are_explained(model: Path, tmp_path: Path) -> None:
    def req(path: Path) -> SegmentRequest:
        return SegmentRequest(
            model=model, bbox=(0, 0, 1, 1), bbox_crs="EPSG:3857", raster_path=str(path), out_dir=tmp_path
        )

    wide = tmp_path / "complex.tif"
    ds = gdal.GetDriverByName("GTiff").Create(str(wide), 8, 8, 3, gdal.GDT_CInt16)
    ds.SetGeoTransform((0, 1, 0, 8, 0, -1))
    ds.SetProjection(_wkt(3857))
    ds = None
    byte = tmp_path / "byte.tif"
    ds = gdal.GetDriverByName("GTiff").Create(str(byte), 8, 8, 3, gdal.GDT_Byte)
    ds.SetGeoTransform((0, 1, 0, 8, 0, -1))
    ds.SetProjection(_wkt(3857))
    ds = None
    plain = tmp_path / "plain.tif"
    ds = gdal.GetDriverByName("GTiff").Create(str(plain), 8, 8, 3, gdal.GDT_Byte)
    ds = None
    with pytest.raises(SourceError, match="complex"):
        count_tiles(req(wide))
    with pytest.raises(SourceError, match="no georeferencing"):
        count_tiles(req(plain))
    with pytest.raises(SourceError, match="cannot open"):
        count_tiles(req(tmp_path / "missing.tif"))
    with pytest.raises(ExtentError, match="does not overlap"):
        count_tiles(
            SegmentRequest(
                model=model,
                bbox=(100, 100, 200, 200),
                bbox_crs="EPSG:3857",
                raster_path=str(byte),
                out_dir=tmp_path,
            )
        )


def test_real_imagery_from_openaerialmap(shared_data: Path, model: Path, tmp_path: Path) -> None:
    with TileServer(oam_provider(shared_data / "oam-osm-buildings" / "area3")) as s:
        bbox = (85.5237580, 27.6196650, 85.5251311, 27.6208816)
        result = run_segment(
            SegmentRequest(
                model=model, bbox=bbox, tiles_url=s.template, zoom=19, out_dir=tmp_path, write_heatmaps=False
            )
        )
    classes, gt, _ = read(result.classes_path)
    assert not result.tiles_failed and result.tiles_total >= 4
    assert sum(c.pixels for c in result.counts) == int((classes != 255).sum())
    assert (classes == 255).mean() < 0.001  # a few transparent pixels of the RGBA tiles, nothing more
    assert abs(gt[1]) == pytest.approx(xyz_resolution(19))


def test_cli_segment_info_and_errors(model: Path, pattern_server: TileServer, tmp_path: Path) -> None:
    bbox = ",".join(f"{v:.3f}" for v in tile_rect(T0.x + 0.2, T0.y + 0.2, T0.x + 1.2, T0.y + 1.2))
    done = cli("segment", "--model", model, "--bbox", bbox, "--bbox-crs", "EPSG:3857", "--tiles", pattern_server.template,
               "--out", tmp_path / "out", "--quiet")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "blue" in done.stdout and "total" in done.stdout
    assert {"classes.tif", "pixel_counts.csv", "heatmap_red.tif"} <= {
        p.name for p in (tmp_path / "out").iterdir()
    }
    info = cli("info", model)
    assert info.returncode == 0 and "class 3: blue #0000ff" in info.stdout
    helped = cli("segment", "--help")
    assert helped.returncode == 0 and "pixel_counts.csv" in helped.stdout and "--bbox-crs" in helped.stdout
    bad = cli(
        "segment",
        "--model",
        tmp_path / "none.onnx",
        "--bbox",
        bbox,
        "--tiles",
        pattern_server.template,
        "--out",
        tmp_path / "x",
    )
    assert bad.returncode == 2 and bad.stderr.strip().startswith("error: the model file")
    bad_bbox = cli(
        "segment",
        "--model",
        model,
        "--bbox",
        "1,2,3",
        "--tiles",
        pattern_server.template,
        "--out",
        tmp_path / "x",
    )
    assert bad_bbox.returncode == 2 and "MINX,MINY,MAXX,MAXY" in bad_bbox.stderr


def test_window_option_runs_other_window_sizes(
    model: Path, pattern_server: TileServer, tmp_path: Path
) -> None:
    """--window: the same classes from windows of another size; a fixed-input model keeps its own."""
    from inference_helpers import rgb_logits_weights, save_model
    from onnx import helper, numpy_helper

    from satseg_plugin.inference.errors import ParameterError
    from satseg_plugin.inference.metadata import ModelMetadata, build_metadata
    from satseg_plugin.inference.tileplan import plan_windows

    bbox = tile_rect(T0.x, T0.y, T0.x + 3, T0.y + 2)
    default = run(model, pattern_server.template, tmp_path / "default", bbox=bbox)
    small = run(model, pattern_server.template, tmp_path / "small", bbox=bbox, window=128)
    assert (default.windows, small.windows) == (6, 24)  # 3 x 2 tiles of 256 px, then of 128
    assert plan_windows(768, 512, 128, 0).count == 24
    np.testing.assert_array_equal(read(default.classes_path)[0], read(small.classes_path)[0])
    with pytest.raises(ParameterError, match="multiple of 32 px"):
        run(model, pattern_server.template, tmp_path / "odd", bbox=bbox, window=100)
    w, b = rgb_logits_weights()
    fixed = save_model(
        tmp_path / "fixed.onnx",
        [helper.make_node("Conv", ["image", "w", "b"], ["logits"]),
         helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1)],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")],
        4, build_metadata(ModelMetadata(NAMES, ["#000000"] * 4, 256, 0, None, zoom=Z)), ["N", 3, 256, 256],
    )  # fmt: skip
    with pytest.raises(ParameterError, match="takes 256-px windows only"):
        run(fixed, pattern_server.template, tmp_path / "fixed", bbox=bbox, window=512)
    assert run(fixed, pattern_server.template, tmp_path / "same", bbox=bbox, window=256).windows == 6
    # A 512-px model (7 %: 36 px) chooses, among 256 to 512 px, the side that runs the fewest pixels
    # over 768 x 512: n = ceil((L + 36 - s) / (s - 36)) + 1 per axis; 320 px: 3 x 2 windows, 0.61 Mpx
    # (256 px: 4 x 3, 0.79 Mpx; 512 px: 2 x 2, 1.05 Mpx).
    from inference_helpers import COLORS

    big = make_rgb_model(
        tmp_path / "big.onnx", props=build_metadata(ModelMetadata(NAMES, COLORS, 512, 7, None, zoom=Z))
    )
    chosen = run(big, pattern_server.template, tmp_path / "big", bbox=bbox)
    cost = {
        s: (math.ceil((768 + 36 - s) / (s - 36)) + 1) * (math.ceil((512 + 36 - s) / (s - 36)) + 1) * s * s
        for s in range(256, 513, 32)
    }
    best = min(cost, key=lambda s: (cost[s], -s))
    assert best == 320 and chosen.windows * best * best == cost[best] == 614_400 < cost[512]
    assert (chosen.window_size, default.window_size, small.window_size) == (320, 256, 128)
    np.testing.assert_array_equal(read(chosen.classes_path)[0], read(default.classes_path)[0])


def test_raster_is_read_at_the_models_ground_resolution_in_any_crs(tmp_path: Path) -> None:
    """A model's resolution is metres on the ground: a raster in degrees or in feet is read at
    that size too, not at its own pixel size (a drone orthophoto in EPSG:4326 at 3 cm would
    otherwise reach the model ten times magnified)."""
    left, _, _, top = tile_rect(T0.x, T0.y, T0.x + 2, T0.y + 2)
    merc = write_geotiff(
        tmp_path / "merc.tif", mosaic(T0.x, T0.y, T0.x + 2, T0.y + 2, Z), (left, RES, 0.0, top, 0.0, -RES)
    )
    geographic = tmp_path / "wgs84.tif"
    gdal.Warp(str(geographic), str(merc), dstSRS="EPSG:4326", resampleAlg="near")
    zone = int((mercantile.ul(T0.x, T0.y, Z).lng + 180) // 6) + 1
    feet = tmp_path / "feet.tif"
    gdal.Warp(
        str(feet), str(merc), dstSRS=f"+proj=utm +zone={zone} +datum=WGS84 +units=us-ft", resampleAlg="near"
    )
    utm = tmp_path / "utm.tif"
    gdal.Warp(str(utm), str(merc), dstSRS=f"EPSG:{32600 + zone}", xRes=0.2, yRes=0.2, resampleAlg="near")
    bbox = tile_rect(T0.x + 0.5, T0.y + 0.5, T0.x + 1.5, T0.y + 1.5)
    latitude = mercantile.ul(T0.x + 1, T0.y + 1, Z).lat
    sides = {}
    for path in (geographic, feet, utm):
        source = RasterSource(str(path), bbox, "EPSG:3857", resolution_m=1.0)
        gt = source.grid.geotransform
        source.close()
        if path == geographic:
            # metres per degree on the WGS84 ellipsoid at that latitude (the usual series)
            phi = math.radians(latitude)
            per_lon = 111_412.84 * math.cos(phi) - 93.5 * math.cos(3 * phi)
            per_lat = 111_132.954 - 559.822 * math.cos(2 * phi) + 1.175 * math.cos(4 * phi)
            assert gt[1] * per_lon == pytest.approx(1.0, rel=1e-4)
            assert -gt[5] * per_lat == pytest.approx(1.0, rel=1e-4)
        elif path == feet:
            assert gt[1] == pytest.approx(1 / 0.3048006096, rel=1e-9)
        else:
            assert gt[1] == pytest.approx(1.0)
        sides[path.stem] = (source.grid.width, source.grid.height)
    # The same ground in three CRSs: about the same number of 1-m pixels (the bbox's edges are
    # straight in EPSG:3857 only, so the bounds in the others grow a little).
    ground = 256 * RES * math.cos(math.radians(latitude))
    for width, height in sides.values():
        assert width == pytest.approx(ground, rel=0.03) and height == pytest.approx(ground, rel=0.03)


def test_a_raster_much_coarser_than_the_model_gets_a_warning(tmp_path: Path) -> None:
    """A 1-m raster through a model trained at 0.3 m is read enlarged three times: the run says
    so with its result, the CLI prints it, and imagery at or finer than the model's gets no note."""
    model = make_rgb_model(tmp_path / "m30.onnx", zoom=None, resolution_cm=30)
    image = mosaic(T0.x, T0.y, T0.x, T0.y, Z)[:128, :128]
    notes = {}
    for res in (1.0, 0.5, 0.1):
        raster = write_geotiff(
            tmp_path / f"r{res}.tif", image, (500000.0, res, 0.0, 5000000.0, 0.0, -res), 32632
        )
        bbox = (500000.0, 5000000.0 - 128 * res, 500000.0 + 128 * res, 5000000.0)
        result = run_segment(
            SegmentRequest(
                model=model, bbox=bbox, bbox_crs="EPSG:32632", raster_path=str(raster),
                out_dir=tmp_path / f"out{res}", write_heatmaps=False,
            )
        )  # fmt: skip
        notes[res] = result.notes
    assert notes[0.5] == notes[0.1] == []  # 1.7 times coarser, and finer: nothing to say
    assert len(notes[1.0]) == 1 and "1 m on the ground, 3.3 times the model's 0.3 m" in notes[1.0][0]
    done = cli(
        "segment", "--model", model, "--raster", tmp_path / "r1.0.tif", "--bbox-crs", "EPSG:32632",
        "--bbox", "500000,4999872,500128,5000000", "--out", tmp_path / "cli", "--no-heatmaps",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "warning: the raster's pixels are 1 m on the ground, 3.3 times the model's 0.3 m" in done.stderr
