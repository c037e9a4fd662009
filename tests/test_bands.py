"""Band layout: a real 4-band RGB + near-infrared GeoTIFF through a 4-channel model, channel mapping, alpha.

The 4-channel test model classifies each pixel by its brightest standardised
band (the near-infrared one included), so the expected classes come from the
raster's bands alone.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from inference_helpers import UTM_GT, cli, make_rgb_model, pattern_tile, save_model, write_utm_raster
from onnx import helper, numpy_helper
from osgeo import gdal

from satseg_plugin.inference.errors import SourceError
from satseg_plugin.inference.model import SegModel
from satseg_plugin.inference.segment import SegmentRequest, run_segment

NAMES4 = ["background", "red", "green", "blue", "near-infrared"]
MEAN4, STD4 = [0.5, 0.5, 0.5, 0.4], [0.25, 0.25, 0.25, 0.2]
GAIN = 20.0
SIZE = 300
GT = UTM_GT


def make_4band_model(path: Path, input_bands: list[int] | None = None) -> Path:
    w = np.zeros((5, 4, 1, 1), np.float32)
    for c in range(4):
        w[c + 1, c, 0, 0] = GAIN
    b = np.zeros(5, np.float32)
    b[0] = GAIN * 1.0
    nodes = [
        helper.make_node("Conv", ["image", "w", "b"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
    ]
    props = {
        "model_type": json.dumps("Segmentor"),
        "class_names": json.dumps(dict(enumerate(NAMES4))),
        "standardization_mean": json.dumps(MEAN4),
        "standardization_std": json.dumps(STD4),
        "tiles_overlap": "0",
    }
    if input_bands:
        props["input_bands"] = json.dumps(input_bands)
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")]
    return save_model(path, nodes, inits, 5, props, in_shape=["N", 4, "H", "W"])


def expected4(bands: np.ndarray) -> np.ndarray:
    """Classes of ``(4, H, W)`` uint8 channels (in the model's order) under ``make_4band_model``."""
    x = (bands.astype(np.float32) / 255 - np.array(MEAN4, np.float32)[:, None, None]) / np.array(
        STD4, np.float32
    )[:, None, None]
    logits = np.concatenate([np.full((1, *x.shape[1:]), GAIN, np.float32), GAIN * x])
    return logits.argmax(axis=0)


def rgbn() -> np.ndarray:
    """``(4, H, W)``: the pattern's RGB and a near-infrared band of its own (zero in places)."""
    rgb = np.moveaxis(pattern_tile(3, 5, 10, size=SIZE), -1, 0)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    nir = (((yy // 23) + (xx // 31)) % 3 == 0) * 250
    nir[:40] = 0  # a dark strip: data, not "transparent"
    return np.concatenate([rgb, nir[None].astype(np.uint8)])


BBOX = (GT[0], GT[3] - SIZE * 0.5, GT[0] + SIZE * 0.5, GT[3])


def classes(path: str) -> np.ndarray:
    ds = gdal.Open(path)
    out = ds.GetRasterBand(1).ReadAsArray()
    ds = None
    return out


def segment(model: Path, raster: Path, out: Path, **kw: object):
    return run_segment(
        SegmentRequest(
            model=model, bbox=BBOX, bbox_crs="EPSG:32632", raster_path=str(raster), out_dir=out, **kw
        )
    )


def test_four_band_model_on_an_rgbn_raster(tmp_path: Path) -> None:
    data = rgbn()
    raster = write_utm_raster(tmp_path / "rgbn.tif", data)
    model = make_4band_model(tmp_path / "m4.onnx")
    assert SegModel.load(model).channels == 4
    result = segment(model, raster, tmp_path / "out")
    got = classes(result.classes_path)
    assert got.shape == (SIZE, SIZE)
    np.testing.assert_array_equal(got, expected4(data))
    assert (got == 4).mean() > 0.05  # the near-infrared class is there: the 4th band reached the model
    assert (got[:40] != 255).all()  # where near-infrared is 0 the pixels are data, not nodata
    assert sum(c.pixels for c in result.counts) == SIZE * SIZE


def test_channel_mapping_from_metadata_and_from_the_request(tmp_path: Path) -> None:
    data = rgbn()
    raster = write_utm_raster(tmp_path / "rgbn.tif", data)
    order = [4, 1, 2, 3]  # the model wants near-infrared first
    mapped = make_4band_model(tmp_path / "mapped.onnx", input_bands=order)
    want = expected4(data[[b - 1 for b in order]])
    np.testing.assert_array_equal(classes(segment(mapped, raster, tmp_path / "a").classes_path), want)
    plain = make_4band_model(tmp_path / "plain.onnx")
    np.testing.assert_array_equal(
        classes(segment(plain, raster, tmp_path / "b", bands=order).classes_path), want
    )


def test_rgb_models_and_alpha_only_where_the_band_says_so(tmp_path: Path) -> None:
    data = rgbn()
    rgb_model = make_rgb_model(tmp_path / "rgb.onnx", zoom=None)
    # RGB + near-infrared: the 4th band is data, so a dark near-infrared strip is no hole.
    got = classes(
        segment(rgb_model, write_utm_raster(tmp_path / "rgbn.tif", data), tmp_path / "n").classes_path
    )
    assert (got != 255).all()
    # RGBA with the 4th band tagged alpha: alpha 0 is nodata.
    rgba = data.copy()
    rgba[3] = 255
    rgba[3, 100:150, 100:200] = 0
    got = classes(
        segment(
            rgb_model, write_utm_raster(tmp_path / "rgba.tif", rgba, alpha=4), tmp_path / "a"
        ).classes_path
    )
    assert (got[100:150, 100:200] == 255).all() and (got[:100] != 255).all()


def test_band_errors_in_plain_words(tmp_path: Path) -> None:
    data = rgbn()
    model = make_4band_model(tmp_path / "m4.onnx")
    rgb_only = write_utm_raster(tmp_path / "rgb.tif", data[:3])
    with pytest.raises(SourceError, match="has 3 image band\\(s\\) and the model takes 4"):
        segment(model, rgb_only, tmp_path / "x")
    rgbn_file = write_utm_raster(tmp_path / "rgbn.tif", data)
    with pytest.raises(SourceError, match="has bands 1 to 4, not 9"):
        segment(model, rgbn_file, tmp_path / "x", bands=[1, 2, 3, 9])
    with pytest.raises(SourceError, match="takes 4 bands but 3 were chosen"):
        segment(model, rgbn_file, tmp_path / "x", bands=[1, 2, 3])
    with pytest.raises(SourceError, match="XYZ tiles are RGB"):
        run_segment(
            SegmentRequest(model=model, bbox=(10, 45, 10.001, 45.001), tiles_url="http://127.0.0.1:9/{z}/{x}/{y}.png",
                           zoom=18, out_dir=tmp_path / "x")
        )  # fmt: skip


def test_cli_bands(tmp_path: Path) -> None:
    data = rgbn()
    raster = write_utm_raster(tmp_path / "rgbn.tif", data)
    model = make_4band_model(tmp_path / "m4.onnx")
    bbox = ",".join(str(v) for v in BBOX)

    done = cli("segment", "--model", model, "--raster", raster, "--bbox", bbox, "--bbox-crs", "EPSG:32632",
               "--bands", "4,1,2,3", "--out", tmp_path / "o", "--quiet")  # fmt: skip
    assert done.returncode == 0, done.stderr
    np.testing.assert_array_equal(classes(str(tmp_path / "o" / "classes.tif")), expected4(data[[3, 0, 1, 2]]))
    info = cli("info", model)
    assert "input: 4 bands" in info.stdout
    bad = cli("segment", "--model", model, "--raster", raster, "--bbox", bbox, "--bbox-crs", "EPSG:32632",
              "--bands", "0,1", "--out", tmp_path / "x")  # fmt: skip
    assert bad.returncode == 2 and "numbered from 1" in bad.stderr
