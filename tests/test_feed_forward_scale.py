"""feed_forward brings an image of another resolution to the model's scale and back.

Real imagery (the demo's Zanzibar tiles, zoom 19) and the shipped buildings model: the
same ground photographed three times finer must be segmented as the model sees it at
its own resolution, whether the resolution comes from --resolution-cm or a GeoTIFF's
georeferencing, and every output keeps the image's own pixels.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from osgeo import gdal, osr

from satseg_plugin.inference.cli import run_cli
from satseg_plugin.inference.errors import ParameterError
from satseg_plugin.inference.imageio import read_image, resize_bands, write_png
from training import feed_forward
from training.predictor import load_predictor

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "satseg-buildings.onnx"
DEMO = ROOT / "demo" / "zanzibar" / "19"
X0, Y0 = 319294, 270995  # 2 x 2 demo tiles with roofs in them


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("scale")
    rows = [
        np.concatenate([read_image(DEMO / str(x) / f"{y}.png")[..., :3] for x in (X0, X0 + 1)], axis=1)
        for y in (Y0, Y0 + 1)
    ]
    native = np.concatenate(rows, axis=0)  # 512 x 512 at zoom 19
    finer = resize_bands(native.transpose(2, 0, 1), 1536, 1536, "bilinear")
    write_png(tmp / "native.png", native)
    write_png(tmp / "finer.png", finer.transpose(1, 2, 0))
    # The finer image as a GeoTIFF in UTM 37S (Zanzibar's zone): a third of the model's pixel.
    res = model_resolution_cm() / 300
    ds = gdal.GetDriverByName("GTiff").Create(str(tmp / "finer.tif"), 1536, 1536, 3, gdal.GDT_Byte)
    ds.SetGeoTransform((530000.0, res, 0.0, 9330000.0, 0.0, -res))
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(32737)
    ds.SetProjection(srs.ExportToWkt())
    for b in range(3):
        ds.GetRasterBand(b + 1).WriteArray(finer[b])
    ds = None
    return {"native": tmp / "native.png", "finer": tmp / "finer.png", "geotiff": tmp / "finer.tif"}


def model_resolution_cm() -> float:
    res = load_predictor(MODEL).resolution_cm
    assert res is not None
    return res


def _run(image: Path, out: Path, *extra: str) -> tuple[np.ndarray, list[dict[str, str]]]:
    argv = [str(MODEL), str(image), str(out), "--no-heatmaps", *extra]
    assert run_cli(feed_forward.main, argv) == 0
    with (out / "pixel_counts.csv").open() as f:
        return read_image(out / "classes.png")[..., 0], list(csv.DictReader(f))


def test_a_finer_image_is_segmented_at_the_models_scale(images: dict[str, Path], tmp_path: Path) -> None:
    native, native_rows = _run(images["native"], tmp_path / "native")
    flagged, flagged_rows = _run(
        images["finer"], tmp_path / "flagged", "--resolution-cm", str(model_resolution_cm() / 3)
    )
    georef, _ = _run(images["geotiff"], tmp_path / "georef")
    as_is, _ = _run(images["finer"], tmp_path / "as-is", "--no-resample")
    assert flagged.shape == georef.shape == as_is.shape == (1536, 1536)  # the image's own pixels
    np.testing.assert_array_equal(georef, flagged)  # the GeoTIFF says what the flag says
    assert (native == 1).mean() > 0.05  # there are roofs to find
    # Each native pixel against the middle one of its 3 x 3 finer pixels.
    agree = (flagged[1::3, 1::3] == native).mean()
    agree_as_is = (as_is[1::3, 1::3] == native).mean()
    assert agree > 0.99 and agree > agree_as_is + 0.01, (agree, agree_as_is)
    # Areas come from the image's resolution: the same ground as the native image.
    ground = sum(float(r["area_m2"]) for r in flagged_rows)
    assert ground == pytest.approx(sum(float(r["area_m2"]) for r in native_rows), rel=1e-3)
    assert ground == pytest.approx((512 * model_resolution_cm() / 100) ** 2, rel=1e-3)


def test_image_resolution_from_georeferencing(tmp_path: Path, images: dict[str, Path]) -> None:
    assert feed_forward.image_resolution_cm(images["native"]) is None  # a plain PNG
    assert feed_forward.image_resolution_cm(images["geotiff"]) == pytest.approx(model_resolution_cm() / 3)
    # The same image warped to degrees: GDAL keeps about the pixel's ground size, and the
    # degrees are measured on the ellipsoid at the image's latitude (6 degrees S).
    geographic = tmp_path / "wgs84.tif"
    gdal.Warp(str(geographic), str(images["geotiff"]), dstSRS="EPSG:4326")
    assert feed_forward.image_resolution_cm(geographic) == pytest.approx(model_resolution_cm() / 3, rel=0.02)
    # Web Mercator metres are 1 / cos(latitude) ground metres, and are counted as metres.
    merc = tmp_path / "merc.tif"
    gdal.Warp(str(merc), str(images["geotiff"]), dstSRS="EPSG:3857")
    lat = np.radians(6.07)
    assert feed_forward.image_resolution_cm(merc) == pytest.approx(
        model_resolution_cm() / 3 / np.cos(lat), rel=0.02
    )


def test_a_resolution_must_be_positive(images: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ParameterError, match="--resolution-cm must be positive"):
        feed_forward.main([str(MODEL), str(images["native"]), str(tmp_path / "x"), "--resolution-cm", "0"])
