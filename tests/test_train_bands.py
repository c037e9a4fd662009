"""A tiny real 4-band model: imported from a 4-band GeoTIFF, trained, exported and segmented with.

The GeoTIFF is real Dubai aerial RGB with a 4th ("near-infrared") band of
bright and dark 32-pixel blocks, textured by the image; the mask labels the
bright blocks. RGB says nothing about the blocks, so only a model that reads
the 4th band can learn them, and only a segment run that feeds it the 4th band
can find them again: with a fresh block pattern on the same RGB the classes
must follow the new blocks.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from inference_helpers import UTM_GT, cli, write_utm_raster
from osgeo import gdal

from satseg_plugin.inference.errors import SatsegError
from satseg_plugin.inference.model import SegModel
from training.checkpoint import load_checkpoint, model_from_checkpoint
from training.data import normalize
from training.dataset.__main__ import main as dataset_main
from training.dataset.import_masks import parse_band_list
from training.dataset.manifest import DatasetError
from training.dataset.merge import merge
from training.export import main as export_main
from training.train import main as train_main

H, W, BLOCK, TILE = 512, 1024, 32, 256
GT = UTM_GT
BRIGHT = "#ff0000"  # the mask colour of the bright-block class


def real_rgb(shared_data: Path) -> np.ndarray:
    """``(3, H, W)`` uint8: a corner of a real Dubai aerial image."""
    ds = gdal.Open(str(shared_data / "dubai-aerial" / "tile7" / "images" / "image_part_001.jpg"))
    rgb = ds.ReadAsArray(0, 0, W, H)
    ds = None
    return rgb


def blocks(seed: int) -> np.ndarray:
    """``(H, W)`` bool: seeded random 32-pixel blocks, about half of them set."""
    cells = np.random.default_rng(seed).random((H // BLOCK, W // BLOCK)) < 0.5
    return np.kron(cells, np.ones((BLOCK, BLOCK), bool))


def fourth_band(rgb: np.ndarray, bright: np.ndarray) -> np.ndarray:
    """A near-infrared-like band: 190 on bright blocks, 60 elsewhere, plus the image's own texture."""
    gray = rgb.astype(np.float32).mean(axis=0)
    return np.clip(np.where(bright, 190, 60) + 0.3 * (gray - gray.mean()), 0, 255).astype(np.uint8)


def write_rgbn(path: Path, bands: np.ndarray) -> Path:
    """A georeferenced 4-band GeoTIFF whose 4th band is data (an RGBN survey's), not alpha."""
    return write_utm_raster(path, bands)


def write_mask(path: Path, bright: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    ds = gdal.GetDriverByName("MEM").Create("", W, H, 3, gdal.GDT_Byte)
    ds.GetRasterBand(1).WriteArray(bright.astype(np.uint8) * 255)  # #ff0000 on bright blocks, else black
    gdal.GetDriverByName("PNG").CreateCopy(str(path), ds)
    ds = None


def read_classes(path: Path) -> np.ndarray:
    ds = gdal.Open(str(path))
    out = ds.GetRasterBand(1).ReadAsArray()
    ds = None
    return out


def torch_classes(pt: Path, bands: np.ndarray) -> np.ndarray:
    """The trained torch model's classes on ``(4, H, W)`` bands, tile by tile as the 0-overlap run cuts them."""
    ckpt = load_checkpoint(pt)
    net = model_from_checkpoint(ckpt).eval()
    pixels = np.moveaxis(bands, 0, -1)
    tiles = np.stack(
        [pixels[y : y + TILE, x : x + TILE] for y in range(0, H, TILE) for x in range(0, W, TILE)]
    )
    with torch.inference_mode():
        got = net(torch.from_numpy(normalize(tiles, ckpt["mean"], ckpt["std"]))).argmax(1).numpy()
    rows = [
        np.concatenate(list(got[r * (W // TILE) : (r + 1) * (W // TILE)]), axis=1) for r in range(H // TILE)
    ]
    return np.concatenate(rows, axis=0)


def segment(model: Path, raster: Path, out: Path) -> np.ndarray:
    bbox = f"{GT[0]},{GT[3] - H * 0.5},{GT[0] + W * 0.5},{GT[3]}"
    done = cli("segment", "--model", model, "--raster", raster, "--bbox", bbox, "--bbox-crs", "EPSG:32632",
               "--bands", "1,2,3,4", "--no-heatmaps", "--out", out, "--quiet")  # fmt: skip
    assert done.returncode == 0, done.stderr
    return read_classes(out / "classes.tif")


@pytest.fixture(scope="module")
def trained(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Import the 4-band GeoTIFF, train a width-1/16 SegNet on its eight tiles for 16 epochs, export it."""
    tmp = tmp_path_factory.mktemp("rgbn")
    rgb, bright = real_rgb(shared_data), blocks(seed=1)
    bands = np.concatenate([rgb, fourth_band(rgb, bright)[None]])
    raster = write_rgbn(tmp / "src" / "dubai" / "images" / "rgbn.tif", bands)
    write_mask(tmp / "src" / "dubai" / "masks" / "rgbn.png", bright)
    colors = tmp / "colors.json"
    colors.write_text(json.dumps({"classes": [{"name": "background", "mask_color": "#000000"},
                                              {"name": "bright nir", "mask_color": BRIGHT}]}))  # fmt: skip
    assert dataset_main(["import-masks", str(tmp / "src"), "--colors", str(colors), "--out", str(tmp / "data"),
                         "--bands", "1,2,3,4"]) == 0  # fmt: skip
    # Constant rate, no flips: 64 steps of two tiles learn the blocks (98 to 99.9 % over seeds 0 to 3).
    assert train_main(["--data", str(tmp / "data"), "--out", str(tmp / "run"), "--width", "0.0625",
                       "--epochs", "16", "--batch-size", "2", "--optimizer", "adam", "--lr", "0.01",
                       "--schedule", "constant", "--no-augment", "--validation", "0"]) == 0  # fmt: skip
    model = tmp / "rgbn.onnx"
    assert export_main([str(tmp / "run" / "best.pt"), "--out", str(model), "--overlap", "0"]) == 0
    return {"tmp": tmp, "bands": bands, "bright": bright, "raster": raster, "model": model}


def test_import_keeps_four_bands_and_measures_them(trained: dict) -> None:
    data = trained["tmp"] / "data"
    manifest = json.loads((data / "manifest.json").read_text())
    assert manifest["bands"] == [1, 2, 3, 4] and manifest["tiles"] == (H // TILE) * (W // TILE)
    x = trained["bands"].reshape(4, -1) / 255.0
    np.testing.assert_allclose(manifest["band_mean"], x.mean(axis=1), atol=1e-5)
    np.testing.assert_allclose(manifest["band_std"], x.std(axis=1), atol=1e-5)
    tile = gdal.Open(str(data / "images" / "dubai-rgbn-0-1.tif"))
    assert tile.RasterCount == 4  # a .tif: PNG would have made the 4th band alpha
    np.testing.assert_array_equal(
        np.moveaxis(tile.ReadAsArray(), 0, -1), np.moveaxis(trained["bands"], 0, -1)[:TILE, TILE : 2 * TILE]
    )
    tile = None
    ckpt = load_checkpoint(trained["tmp"] / "run" / "best.pt")
    assert (ckpt["channels"], ckpt["input_bands"]) == (4, [1, 2, 3, 4])
    assert ckpt["mean"] == manifest["band_mean"] and ckpt["std"] == manifest["band_std"]


def test_exported_model_carries_its_bands(trained: dict) -> None:
    props = {
        e.key: e.value for e in onnx.load(str(trained["model"]), load_external_data=False).metadata_props
    }
    manifest = json.loads((trained["tmp"] / "data" / "manifest.json").read_text())
    assert json.loads(props["input_bands"]) == [1, 2, 3, 4]
    assert json.loads(props["standardization_mean"]) == manifest["band_mean"]
    model = SegModel.load(trained["model"])
    assert model.channels == 4 and model.metadata.class_names == ["background", "bright nir"]


def test_segment_a_4_band_raster_with_the_trained_model(trained: dict) -> None:
    got = segment(trained["model"], trained["raster"], trained["tmp"] / "out")
    assert got.shape == (H, W)
    # The CLI's classes are the trained torch model's, pixel for pixel (onnxruntime may flip a rare tie).
    assert (got == torch_classes(trained["tmp"] / "run" / "best.pt", trained["bands"])).mean() > 0.999
    assert (got == trained["bright"]).mean() > 0.9  # it learnt the blocks of the 4th band


def test_the_classes_follow_the_fourth_band(trained: dict) -> None:
    # The same real RGB with a new block pattern in band 4: a model or run that ignored band 4
    # would repeat the old classes (about half right against the new blocks).
    rgb, bright = trained["bands"][:3], blocks(seed=2)
    assert 0.4 < (bright == trained["bright"]).mean() < 0.6
    raster = write_rgbn(trained["tmp"] / "other.tif", np.concatenate([rgb, fourth_band(rgb, bright)[None]]))
    got = segment(trained["model"], raster, trained["tmp"] / "other")
    assert (got == bright).mean() > 0.9


def test_band_choices_in_plain_words(trained: dict, tmp_path: Path) -> None:
    with pytest.raises(SatsegError, match="separated by commas"):
        parse_band_list("red,nir")
    with pytest.raises(SatsegError, match="from 1, each once"):
        parse_band_list("1,2,2")
    # An RGB image asked for a 4th band is skipped, with the reason, and nothing else is imported.
    src = tmp_path / "src" / "rgb"
    rgb = np.zeros((3, 64, 64), np.uint8)
    ds = gdal.GetDriverByName("GTiff").Create(str(_mkdir(src / "images") / "a.tif"), 64, 64, 3, gdal.GDT_Byte)
    ds.WriteArray(rgb)
    ds = None
    gdal.GetDriverByName("PNG").CreateCopy(
        str(_mkdir(src / "masks") / "a.png"), gdal.Open(str(src / "images" / "a.tif"))
    )
    colors = trained["tmp"] / "colors.json"
    with pytest.raises(SatsegError, match="no tiles could be made"):
        dataset_main(["import-masks", str(tmp_path / "src"), "--colors", str(colors), "--out", str(tmp_path / "d"),
                      "--tile", "32", "--bands", "1,2,3,4"])  # fmt: skip
    assert "a.tif has 3 band(s); --bands asks for band 4" in (tmp_path / "d" / "skipped.csv").read_text()
    with pytest.raises(DatasetError, match="merge takes RGB datasets"):
        merge([trained["tmp"] / "data"], tmp_path / "merged")


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path
