"""import-masks on the real Dubai aerial masks (../shared/data/dubai-aerial), a scene or two."""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from satseg_plugin.inference.errors import ConfigError, SatsegError
from satseg_plugin.inference.imageio import read_image, write_png
from training.dataset import import_masks

ROOT = Path(__file__).resolve().parents[1]
COLORS = ROOT / "training" / "classes" / "dubai.json"
# The table of the dataset's README, written out independently of dubai.json.
README_CLASSES = {
    (0x3C, 0x10, 0x98): 1,  # building
    (0x84, 0x29, 0xF6): 2,  # land
    (0x6E, 0xC1, 0xE4): 3,  # road
    (0xFE, 0xDD, 0x3A): 4,  # vegetation
    (0xE2, 0xA9, 0x29): 5,  # water
}


def run_import(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="import-masks")
    import_masks.add_arguments(parser)
    return import_masks.run(parser.parse_args([str(a) for a in argv]))


@pytest.fixture(scope="module")
def dubai(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dubai")
    assert (
        run_import(shared_data / "dubai-aerial", "--colors", COLORS, "--out", out, "--scenes", "tile2") == 0
    )
    return out


def test_layout_manifest_and_scenes(dubai: Path) -> None:
    manifest = json.loads((dubai / "manifest.json").read_text())
    assert manifest["kind"] == "masks"
    assert manifest["ignore_index"] == 255
    assert [c["name"] for c in manifest["classes"]] == [
        "background",
        "building",
        "land",
        "road",
        "vegetation",
        "water",
    ]
    ids = (dubai / "sample.txt").read_text().split()
    # tile2 has nine parts of about 510x544 px: 2 columns x 3 rows of 256 px tiles each
    assert len(ids) == 9 * 2 * 3
    assert set((dubai / "sample-filtered.txt").read_text().split()) <= set(ids)
    with (dubai / "scenes.csv").open() as f:
        scenes = {r["id"]: r["scene"] for r in csv.DictReader(f)}
    assert scenes == dict.fromkeys(ids, "tile2")
    totals = np.zeros(256, np.int64)
    for i in ids:
        assert read_image(dubai / "images" / f"{i}.png").shape == (256, 256, 3)
        lab = read_image(dubai / "labels" / "color" / f"{i}.png")
        assert lab.shape == (256, 256, 3)
        assert (lab[..., 0] == lab[..., 1]).all() and (lab[..., 0] == lab[..., 2]).all()
        totals += np.bincount(lab[..., 0].ravel(), minlength=256)
    assert set(np.flatnonzero(totals)) <= {1, 2, 3, 4, 5, 255}
    assert manifest["pixels_per_class"] == {
        c["name"]: int(totals[k]) for k, c in enumerate(manifest["classes"])
    }
    assert manifest["pixels_per_class"]["background"] == 0  # nothing unknown became background


def test_split_by_image_groups_each_image_so_one_scene_can_be_split(
    dubai: Path, shared_data: Path, tmp_path: Path
) -> None:
    from training.data import split_indices

    out = tmp_path / "by-image"
    argv = ("--colors", COLORS, "--out", out, "--scenes", "tile2", "--split-by", "image")
    assert run_import(shared_data / "dubai-aerial", *argv) == 0
    assert json.loads((out / "manifest.json").read_text())["split_by"] == "image"
    assert json.loads((dubai / "manifest.json").read_text())["split_by"] == "scene"
    with (out / "scenes.csv").open() as f:
        groups = {r["id"]: r["scene"] for r in csv.DictReader(f)}
    ids = (out / "sample.txt").read_text().split()
    assert ids == (dubai / "sample.txt").read_text().split()  # the same tiles, grouped otherwise
    assert groups == {i: i.rsplit("-", 2)[0] for i in ids}  # tile2-image_part_00K
    assert len(set(groups.values())) == 9
    names = [groups[i] for i in ids]
    train, val = split_indices(names, 0.2, seed=0)
    # nine images of six tiles each: two of them (12 of 54 tiles) are the closest to 20 %,
    # each whole on one side; by scene the single scene cannot be split at all
    assert len(val) == 12 and {names[i] for i in val}.isdisjoint(names[i] for i in train)
    assert split_indices(["tile2"] * len(ids), 0.2, seed=0)[1] == []


def test_tile_matches_source_pixels(dubai: Path, shared_data: Path) -> None:
    src_img = read_image(shared_data / "dubai-aerial/tile2/images/image_part_007.jpg")
    src_mask = read_image(shared_data / "dubai-aerial/tile2/masks/image_part_007.png")
    h, w = src_mask.shape[:2]
    # row 2, column 1: the windows moved back to end at the bottom-right corner
    img = read_image(dubai / "images" / "tile2-image_part_007-2-1.png")
    lab = read_image(dubai / "labels" / "color" / "tile2-image_part_007-2-1.png")[..., 0]
    np.testing.assert_array_equal(img, src_img[h - 256 :, w - 256 :])
    window = src_mask[h - 256 :, w - 256 :]
    expected = np.full((256, 256), 255, np.uint8)
    for rgb, k in README_CLASSES.items():
        expected[(window == rgb).all(axis=2)] = k
    np.testing.assert_array_equal(lab, expected)
    unlabeled = (window == (0x9B, 0x9B, 0x9B)).all(axis=2)
    assert unlabeled.any() and (lab[unlabeled] == 255).all()


def test_unknown_colours_ignored_and_missing_mask_skipped(tmp_path: Path) -> None:
    src = tmp_path / "src" / "sceneA"
    img = np.random.default_rng(0).integers(0, 255, (300, 280, 3), dtype=np.uint8)
    mask = np.zeros((300, 280, 3), np.uint8)
    mask[:, :100] = (0x3C, 0x10, 0x98)  # building
    mask[:, 100:200] = (0x12, 0x34, 0x56)  # a colour the map does not know
    mask[:, 200:] = (0, 0, 0)  # listed as an ignore colour
    write_png(src / "images" / "a.png", img)
    write_png(src / "masks" / "a.png", mask)
    write_png(src / "images" / "b.png", img)  # no mask
    out = tmp_path / "out"
    assert run_import(tmp_path / "src", "--colors", COLORS, "--out", out, "--stride", "128") == 0
    ids = (out / "sample.txt").read_text().split()
    # 300 px -> windows at 0 and 44 (the last one moved back); 280 px -> 0 and 24
    assert ids == ["sceneA-a-0-0", "sceneA-a-0-1", "sceneA-a-1-0", "sceneA-a-1-1"]
    lab = read_image(out / "labels" / "color" / "sceneA-a-0-0.png")[..., 0]
    assert (lab[:, :100] == 1).all() and (lab[:, 100:] == 255).all()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["unknown_colors"] == {"#123456": 300 * 100}
    assert manifest["pixels_per_class"]["background"] == 0
    assert "sceneA-b" in (out / "skipped.csv").read_text()


def test_bad_colour_maps(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"classes": [{"name": "a", "mask_color": "#12345"}]}')
    with pytest.raises(ConfigError, match="#12345"):
        import_masks.load_color_map(bad)
    bad.write_text(
        '{"classes": [{"name": "a", "mask_color": "#123456"}, {"name": "b", "mask_color": "#123456"}]}'
    )
    with pytest.raises(ConfigError, match="already class"):
        import_masks.load_color_map(bad)
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        import_masks.load_color_map(bad)
    cmap = import_masks.load_color_map(COLORS)
    assert cmap.names[0] == "background" and len(cmap.names) == 6


def test_bad_arguments(tmp_path: Path, shared_data: Path) -> None:
    with pytest.raises(SatsegError, match="not in"):
        run_import(shared_data / "dubai-aerial", "--colors", COLORS, "--out", tmp_path, "--scenes", "tile99")
    with pytest.raises(SatsegError, match="--stride"):
        run_import(shared_data / "dubai-aerial", "--colors", COLORS, "--out", tmp_path, "--stride", "300")
    with pytest.raises(SatsegError, match="no SCENE/images"):
        run_import(tmp_path, "--colors", COLORS, "--out", tmp_path / "o")


def test_cli_help_and_errors(tmp_path: Path, shared_data: Path) -> None:
    def cli(*argv: object) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "training.dataset", "import-masks", *map(str, argv)],
            cwd=ROOT, capture_output=True, text=True, timeout=120,
        )  # fmt: skip

    helped = cli("--help")
    assert helped.returncode == 0, helped.stderr
    assert "SCENE/images/X.jpg" in helped.stdout and "SCENE/masks/X.png" in helped.stdout
    assert "ignore_colors" in helped.stdout and "(default: 256)" in helped.stdout
    failed = cli(shared_data / "dubai-aerial", "--colors", tmp_path / "none.json", "--out", tmp_path / "o")
    assert failed.returncode == 2
    assert failed.stderr.strip().splitlines()[-1].startswith("error: colour map not found")


def test_resample_keeps_label_values_and_interpolates_images() -> None:
    labels = np.array([[1, 2], [3, 255]], np.uint8)
    up = import_masks.resample(labels, 2.0, labels=True)
    assert up.shape == (4, 4) and (up == np.kron(labels, np.ones((2, 2), np.uint8))).all()
    down = import_masks.resample(np.kron(labels, np.ones((2, 2), np.uint8)), 0.5, labels=True)
    assert (down == labels).all()
    image = np.zeros((2, 2, 3), np.uint8)
    image[:, 1] = 200
    big = import_masks.resample(image, 4.0, labels=False)
    assert big.shape == (8, 8, 3) and 0 < int(big[0, 3, 0]) < 200  # a ramp, not blocks


def test_scaled_building_import_of_real_masks(shared_data: Path, tmp_path: Path, dubai: Path) -> None:
    colors = ROOT / "training" / "classes" / "dubai-buildings.json"
    out = tmp_path / "b"
    argv = [shared_data / "dubai-aerial", "--colors", colors, "--out", out, "--scenes", "tile2"]
    assert run_import(*argv, "--scale", "2", "--resolution-cm", "100") == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert [c["name"] for c in manifest["classes"]] == ["background", "building"]
    assert manifest["resolution_cm"] == 50 and manifest["scale"] == 2
    # The building share of the labelled pixels is that of the five-class import of the same masks.
    plain = json.loads((dubai / "manifest.json").read_text())["pixels_per_class"]
    share = plain["building"] / sum(plain.values())
    counts = manifest["pixels_per_class"]
    assert counts["building"] / (counts["building"] + counts["background"]) == pytest.approx(share, abs=0.005)
    assert manifest["tiles"] == 9 * 4 * 5  # parts of about 1020x1088 px after scaling
    with pytest.raises(import_masks.SatsegError, match="--scale"):
        run_import(*argv, "--scale", "0")
