"""Models made for Deepness: Python-literal class names, the ``names`` key, 0..1 input, clashing names."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT
from inference_helpers import (
    HEATMAP_ROUNDING,
    NAMES,
    heatmap_probabilities,
    mosaic,
    pattern_provider,
    rgb_logits_weights,
    save_model,
)
from onnx import helper, numpy_helper
from osgeo import gdal
from test_inference_segment import T0, Z, global_origin, tile_rect
from tileserver import TileServer

from satseg_plugin.inference.errors import ModelError
from satseg_plugin.inference.metadata import MEAN, STD, parse_metadata
from satseg_plugin.inference.model import SegModel
from satseg_plugin.inference.segment import SegmentRequest, run_segment

BBOX = tile_rect(T0.x + 0.3, T0.y + 0.4, T0.x + 1.6, T0.y + 1.5)


def deepness_weights() -> tuple[np.ndarray, np.ndarray]:
    """The test weights for 0..1 input: background unless a channel is above one half."""
    w, b = rgb_logits_weights()
    b[0] = w[1, 0, 0, 0] / 2
    return w, b


def deepness_model(path: Path, props: dict[str, str]) -> Path:
    """The test 1x1-conv model, its metadata as Deepness users write it (no colours, no zoom)."""
    w, b = deepness_weights()
    nodes = [
        helper.make_node("Conv", ["image", "w", "b"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
    ]
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")]
    return save_model(path, nodes, inits, 4, {"resolution": "60", "tiles_overlap": "0", **props})


@pytest.fixture(scope="module")
def server() -> Iterator[TileServer]:
    with TileServer(pattern_provider) as s:
        yield s


def test_python_literal_names_and_the_names_key() -> None:
    literal = parse_metadata({"class_names": "{0: 'background', 1: 'red', 2: 'green', 3: 'blue'}"}, 4)
    assert literal.class_names == NAMES
    listed = parse_metadata({"class_names": "['background', 'red', 'green', 'blue']"}, 4)
    assert listed.class_names == NAMES
    names = parse_metadata({"names": "{0: 'background', 1: 'red', 2: 'green', 3: 'blue'}"}, 4)
    assert names.class_names == NAMES and "names" not in names.extra
    with pytest.raises(ModelError, match="neither a list nor a mapping"):
        parse_metadata({"class_names": "__import__('os')"}, 4)  # never evaluated: not a literal


def test_without_standardisation_keys_the_input_is_0_to_1() -> None:
    plain = parse_metadata({"class_names": '["a", "b"]'})
    assert plain.mean == (0.0,) and plain.std == (1.0,)  # for every band
    ours = parse_metadata({"class_names": '["a", "b"]', "satseg_schema": "1"})
    assert ours.mean == MEAN and ours.std == STD  # a satseg model keeps its contract
    half = parse_metadata({"class_names": '["a", "b"]', "standardization_mean": "[0.5, 0.5, 0.5]"})
    assert half.mean == (0.5, 0.5, 0.5) and half.std == (1.0,)


def test_a_deepness_model_segments_with_0_to_1_input(server: TileServer, tmp_path: Path) -> None:
    path = deepness_model(
        tmp_path / "d.onnx", {"class_names": "{0: 'background', 1: 'red', 2: 'green', 3: 'blue'}"}
    )
    model = SegModel.load(path)
    rgb = np.full((1, 4, 4, 3), 255, np.uint8)
    np.testing.assert_array_equal(model.normalize(rgb), np.ones((1, 3, 4, 4), np.float32))
    result = run_segment(
        SegmentRequest(model=path, bbox=BBOX, bbox_crs="EPSG:3857", tiles_url=server.template, zoom=Z,
                       out_dir=tmp_path / "out")
    )  # fmt: skip
    ds = gdal.Open(result.classes_path)
    classes, gt = ds.ReadAsArray(), ds.GetGeoTransform()
    ds = None
    px, py = global_origin(gt)
    tx, ty = px // 256, py // 256
    image = mosaic(tx, ty, tx + 2, ty + 2, Z)[py - ty * 256 :, px - tx * 256 :][
        : classes.shape[0], : classes.shape[1]
    ]
    w, b = deepness_weights()
    logits = np.einsum("hwc,kc->khw", image.astype(np.float32) / 255, w[:, :, 0, 0]) + b[:, None, None]
    np.testing.assert_array_equal(classes, logits.argmax(axis=0))
    assert len(np.unique(classes)) >= 3  # with ImageNet statistics this would be another picture


def test_colliding_names_get_their_own_heatmaps(server: TileServer, tmp_path: Path) -> None:
    names = ["background", "blue roof", "blue_roof", "Blue roof"]
    path = deepness_model(tmp_path / "c.onnx", {"class_names": repr(dict(enumerate(names)))})
    result = run_segment(
        SegmentRequest(model=path, bbox=BBOX, bbox_crs="EPSG:3857", tiles_url=server.template, zoom=Z,
                       out_dir=tmp_path / "out")
    )  # fmt: skip
    files = {n: Path(p).name for n, p in result.heatmap_paths.items()}
    assert files == {
        "background": "heatmap_background.tif",
        "blue roof": "heatmap_blue_roof.tif",
        "blue_roof": "heatmap_blue_roof_2.tif",
        "Blue roof": "heatmap_Blue_roof_3.tif",
    }
    heat = {n: heatmap_probabilities(p) for n, p in result.heatmap_paths.items()}
    total = sum(heat.values())
    # all four classes' probabilities, none lost (each rounded to 8 bits)
    np.testing.assert_allclose(total, 1.0, atol=len(names) * HEATMAP_ROUNDING)
    for i, n in enumerate(names):
        assert gdal.Open(result.heatmap_paths[n]).GetRasterBand(1).GetDescription() == f"probability of {n}"
        assert heat[n].max() > 0.5 or i == 0


def test_duplicate_names_are_refused_in_plain_words(tmp_path: Path) -> None:
    path = deepness_model(tmp_path / "dup.onnx", {"class_names": "['background', 'roof', 'tree', 'roof']"})
    with pytest.raises(ModelError, match="names two classes 'roof' \\(classes 1 and 3\\)"):
        SegModel.load(path)
    done = subprocess.run(
        [sys.executable, "-m", "satseg_plugin.inference", "info", str(path)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2 and "names two classes 'roof'" in done.stderr
    assert "Traceback" not in done.stderr
