"""Imagery of more than 8 bits: one stretch to 0..255, alike in every window, block and tool.

The pictures are real (two OpenAerialMap tiles of the demo sample) made into
16-bit and float rasters; what each tool makes of them is compared with the
8-bit picture computed here by numpy alone from the 0.5 % and 99.5 % points
of all the bands' values.
"""

from __future__ import annotations

from pathlib import Path

import mercantile
import numpy as np
import pytest
from inference_helpers import HEATMAP_ROUNDING, UTM_GT, heatmap_probabilities, make_rgb_model, write_raster
from osgeo import gdal

from satseg_plugin.inference.cluster import plan_jobs
from satseg_plugin.inference.errors import SourceError
from satseg_plugin.inference.imageio import ImageError, read_image
from satseg_plugin.inference.segment import SegmentRequest, run_segment
from satseg_plugin.inference.sources import RasterSource
from satseg_plugin.inference.stretch import band_values, stretch_of
from training.dataset.raster_tiles import RasterTiles

ROOT = Path(__file__).resolve().parents[1]
TILE = (319295, 270995, 19)  # the demo sample's tile and its eastern neighbour
NODATA_COLS = 40  # the raster's first columns hold no imagery


@pytest.fixture(scope="module")
def real_rgb() -> np.ndarray:
    """``(256, 512, 3)`` uint8: two real zoom-19 tiles side by side."""
    x, y, z = TILE
    tiles = [
        read_image(ROOT / "demo" / "zanzibar" / str(z) / str(x + i) / f"{y}.png")[..., :3] for i in (0, 1)
    ]
    return np.hstack(tiles)


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_rgb_model(tmp_path_factory.mktemp("m") / "rgb.onnx", zoom=None)


def widened(rgb: np.ndarray, kind: str) -> np.ndarray:
    """The picture as a sensor of more bits would give it: ``[3, H, W]``, 0 where there is no imagery."""
    values = rgb.transpose(2, 0, 1).astype(np.float64)
    out = values * 37 + 900 if kind == "UInt16" else values * 0.0013 + 0.02  # 12-bit counts, reflectance
    out[:, :, :NODATA_COLS] = 0
    return out.astype(np.uint16 if kind == "UInt16" else np.float32)


def drawn(wide: np.ndarray, first: int = NODATA_COLS) -> np.ndarray:
    """The 8-bit picture of ``wide`` (``[3, H, W]``, imagery from column ``first``), by numpy alone:
    one line through the 0.5 % and 99.5 % points of all three bands' values to 0 and 255."""
    low, high = np.percentile(wide[:, :, first:].astype(np.float64), [0.5, 99.5])
    return np.clip(np.floor((wide - low) * 255 / (high - low) + 0.5), 0, 255).astype(np.uint8)


def test_a_stretch_maps_its_points_to_black_and_white() -> None:
    s = stretch_of(np.arange(10000, dtype=np.uint16))
    assert (s.low, s.high) == pytest.approx((49.995, 9949.005))
    assert s.apply(np.array([0, 49.995, 2524.7475, 9949.005, 65535, np.nan])).tolist() == [
        0,
        0,
        64,
        255,
        255,
        0,
    ]
    assert s.apply(np.array([1000], np.uint16)).dtype == np.uint8
    flat = stretch_of(np.full(5, 7.0))
    assert (flat.low, flat.high) == (7.0, 8.0) and flat.apply(np.array([7, 9])).tolist() == [0, 255]
    assert stretch_of(np.array([np.nan, 1.0, np.inf, 3.0])).high <= 3.0  # NaN and infinities do not count
    with pytest.raises(ValueError, match="no valid value"):
        stretch_of(np.array([np.nan], np.float32))


def test_band_values_leave_nodata_out_and_may_come_from_a_reduced_read(tmp_path: Path) -> None:
    values = np.random.default_rng(0).integers(1000, 11000, (200, 200)).astype(np.uint16)
    values[:, :100] = 0
    path = write_raster(tmp_path / "n.tif", values[None], gdal.GDT_UInt16, nodata=0)
    ds = gdal.Open(str(path))
    got = band_values(ds.GetRasterBand(1))  # the whole band when it is small
    assert sorted(got.tolist()) == sorted(values[:, 100:].ravel().tolist())
    reduced = band_values(ds.GetRasterBand(1), sample_side=50)  # every fourth pixel
    assert reduced.size == 50 * 25 and (reduced >= 1000).all()
    assert stretch_of(reduced).low == pytest.approx(stretch_of(got).low, rel=0.05)
    assert stretch_of(reduced).high == pytest.approx(stretch_of(got).high, rel=0.05)
    ds = None


@pytest.mark.parametrize("kind", ["UInt16", "Float32"])
def test_a_wide_raster_segments_as_its_8_bit_picture(
    kind: str, real_rgb: np.ndarray, model: Path, tmp_path: Path
) -> None:
    wide = widened(real_rgb, kind)
    gdal_kind = gdal.GDT_UInt16 if kind == "UInt16" else gdal.GDT_Float32
    src16 = write_raster(tmp_path / "wide.tif", wide, gdal_kind, nodata=0)
    # The 8-bit picture, its missing columns transparent (nodata 0 would also hide the stretch's black).
    alpha = np.full(wide.shape[1:], 255, np.uint8)
    alpha[:, :NODATA_COLS] = 0
    src8 = write_raster(
        tmp_path / "byte.tif", np.concatenate([drawn(wide), alpha[None]]), gdal.GDT_Byte, alpha=4
    )
    h, w = wide.shape[1:]
    bbox = (UTM_GT[0], UTM_GT[3] - h * 0.5, UTM_GT[0] + w * 0.5, UTM_GT[3])
    results = {
        name: run_segment(
            SegmentRequest(
                model=model, bbox=bbox, bbox_crs="EPSG:32632", raster_path=str(src), out_dir=tmp_path / name
            )
        )
        for name, src in (("wide", src16), ("byte", src8))
    }
    classes = {}
    for name, res in results.items():
        ds = gdal.Open(res.classes_path)
        classes[name] = ds.ReadAsArray()
        ds = None
    assert classes["wide"].shape == (h, w)
    assert (classes["wide"][:, :NODATA_COLS] == 255).all()  # no imagery: nodata
    assert len(np.unique(classes["wide"][:, NODATA_COLS:])) >= 2
    # Rounding at a half step may move a pixel by one level of 255 (float32 against float64): a rare class.
    assert (classes["wide"] != classes["byte"]).mean() < 1e-3
    for name in results["wide"].heatmap_paths:
        np.testing.assert_allclose(
            heatmap_probabilities(results["wide"].heatmap_paths[name]),
            heatmap_probabilities(results["byte"].heatmap_paths[name]),
            atol=4 * HEATMAP_ROUNDING,
        )
    note = " ".join(results["wide"].notes)
    assert kind in note and "0.5 % and 99.5 %" in note and "gdal_translate" in note
    assert results["byte"].notes == []


def test_blocks_of_a_cluster_run_share_one_stretch(real_rgb: np.ndarray, model: Path, tmp_path: Path) -> None:
    wide = widened(real_rgb, "UInt16")
    src = write_raster(tmp_path / "wide.tif", wide, gdal.GDT_UInt16, nodata=0)
    h, w = wide.shape[1:]
    bbox = (UTM_GT[0], UTM_GT[3] - h * 0.5, UTM_GT[0] + w * 0.5, UTM_GT[3])
    req = SegmentRequest(
        model=model, bbox=bbox, bbox_crs="EPSG:32632", raster_path=str(src), out_dir=tmp_path
    )
    plan, jobs = plan_jobs(req, 256)
    assert len(jobs) >= 2
    whole = RasterSource(str(src), bbox, "EPSG:32632", None)
    try:
        assert all(job.stretch == whole.stretch for job in jobs)
        assert whole.stretch == stretch_of(wide[:, :, NODATA_COLS:])
    finally:
        whole.close()
    assert any("UInt16" in n for n in plan.notes)


def test_tiles_cut_from_a_wide_raster_are_its_8_bit_picture(real_rgb: np.ndarray, tmp_path: Path) -> None:
    x, y, z = TILE
    left, _, _, top = mercantile.xy_bounds(x, y, z)
    res = (mercantile.xy_bounds(x, y, z).right - left) / 256
    wide = widened(real_rgb, "UInt16")
    src = write_raster(
        tmp_path / "wide.tif", wide, gdal.GDT_UInt16, (left, res, 0, top, 0, -res), 3857, nodata=0
    )
    tiles = RasterTiles(src, [(x, y, z), (x + 1, y, z)])
    expected = drawn(wide).transpose(1, 2, 0)
    for i in (0, 1):
        got = tiles.read((x + i, y, z))
        assert got is not None
        want = expected[:, 256 * i : 256 * (i + 1)]
        inside = np.s_[:, NODATA_COLS:] if i == 0 else np.s_[:, :]
        assert np.abs(got[inside].astype(int) - want[inside]).max() <= 1
        if i == 0:
            assert (got[:, :NODATA_COLS] == 0).all()  # no imagery: black, as the 8-bit path gives it


def test_feed_forward_and_imports_read_a_wide_image_stretched(real_rgb: np.ndarray, tmp_path: Path) -> None:
    wide = widened(real_rgb, "UInt16")
    wide[:, :, :NODATA_COLS] = 900 + 37 * 128  # a valid grey: the whole image counts here
    path = write_raster(tmp_path / "wide.tif", wide, gdal.GDT_UInt16)
    with pytest.raises(ImageError, match="not an 8-bit image"):
        read_image(path)
    got = read_image(path, stretch=True)
    assert np.abs(got.astype(int) - drawn(wide, first=0).transpose(1, 2, 0)).max() <= 1


def test_bands_of_different_or_complex_types_are_refused(tmp_path: Path) -> None:
    cplx = write_raster(tmp_path / "c.tif", np.ones((3, 8, 8)), gdal.GDT_CInt16)
    with pytest.raises(SourceError, match="complex"):
        RasterSource(str(cplx), (UTM_GT[0], UTM_GT[3] - 4, UTM_GT[0] + 4, UTM_GT[3]), "EPSG:32632", None)
    byte = write_raster(tmp_path / "b.tif", np.ones((1, 8, 8)), gdal.GDT_Byte)
    u16 = write_raster(tmp_path / "u.tif", np.ones((1, 8, 8)), gdal.GDT_UInt16)
    gdal.BuildVRT(str(tmp_path / "m.vrt"), [str(byte), str(u16), str(u16)], separate=True).FlushCache()
    with pytest.raises(SourceError, match="different types"):
        RasterSource(
            str(tmp_path / "m.vrt"), (UTM_GT[0], UTM_GT[3] - 4, UTM_GT[0] + 4, UTM_GT[3]), "EPSG:32632", None
        )
