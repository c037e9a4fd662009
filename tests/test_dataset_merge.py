"""training.dataset.merge: classes matched by name, labels remapped, scenes kept."""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np
import pytest

from satseg_plugin.inference.imageio import read_image
from training.dataset import import_masks
from training.dataset.merge import DatasetError, merge


def _import(src: Path, colors: Path, out: Path, scenes: str) -> None:
    parser = argparse.ArgumentParser()
    import_masks.add_arguments(parser)
    args = parser.parse_args([str(src), "--colors", str(colors), "--out", str(out), "--scenes", scenes])
    assert import_masks.run(args) == 0


def test_merge_remaps_classes_by_name(shared_data: Path, tmp_path: Path) -> None:
    dubai = shared_data / "dubai-aerial"
    # a second colour map that knows only water and building, in another order
    colors = tmp_path / "two.json"
    colors.write_text(
        json.dumps(
            {
                "classes": [
                    {"name": "background", "mask_color": []},
                    {"name": "water", "mask_color": "#E2A929", "color": "#0000ff"},
                    {"name": "building", "mask_color": "#3C1098", "color": "#ff0000"},
                ],
                "ignore_colors": ["#9B9B9B", "#000000"],
            }
        )
    )
    _import(dubai, Path("training/classes/dubai.json"), tmp_path / "a", "tile1")
    _import(dubai, colors, tmp_path / "b", "tile2")
    manifest = merge([tmp_path / "a", tmp_path / "b"], tmp_path / "m")

    names = [c["name"] for c in manifest["classes"]]
    assert names == ["background", "building", "land", "road", "vegetation", "water"]
    ids_a = (tmp_path / "a" / "sample-filtered.txt").read_text().split()
    ids_b = (tmp_path / "b" / "sample-filtered.txt").read_text().split()
    merged_ids = (tmp_path / "m" / "sample.txt").read_text().split()
    assert merged_ids == ids_a + ids_b
    # b's water (1) becomes 5, building (2) becomes 1; unknown colours stay ignored
    for tile in ids_b[:5]:
        old = read_image(tmp_path / "b" / "labels" / "color" / f"{tile}.png")[..., 0]
        new = read_image(tmp_path / "m" / "labels" / "color" / f"{tile}.png")[..., 0]
        lut = {0: 0, 1: 5, 2: 1, 255: 255}
        assert np.array_equal(new, np.vectorize(lut.__getitem__)(old))
    # a's labels are unchanged (same class order)
    tile = ids_a[0]
    assert np.array_equal(
        read_image(tmp_path / "a" / "labels" / "color" / f"{tile}.png"),
        read_image(tmp_path / "m" / "labels" / "color" / f"{tile}.png"),
    )
    with (tmp_path / "m" / "scenes.csv").open() as f:
        scenes = {row["id"]: row["scene"] for row in csv.DictReader(f)}
    assert {scenes[i] for i in ids_a} == {"tile1"} and {scenes[i] for i in ids_b} == {"tile2"}
    assert (
        sum(manifest["pixels_per_class"].values()) + manifest["ignored_pixels"] == len(merged_ids) * 256 * 256
    )


def test_merge_refuses_a_folder_that_is_no_dataset(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match=r"no manifest\.json"):
        merge([tmp_path / "empty"], tmp_path / "out")
