"""Model loading: what a GIS user is told about files that are not satseg/Deepness segmentors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from inference_helpers import NAMES, make_rgb_model, save_model
from onnx import TensorProto, helper, numpy_helper

from satseg_plugin.inference.errors import ModelError
from satseg_plugin.inference.metadata import ModelMetadata, build_metadata
from satseg_plugin.inference.model import SegModel


def softmax_model(path: Path, classes: int, props: dict[str, str] | None, channels: int = 3, **kw) -> Path:
    w = np.zeros((classes, channels, 1, 1), np.float32)
    nodes = [
        helper.make_node("Conv", ["image", "w"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
    ]
    shape = kw.pop("in_shape", ["N", channels, "H", "W"])
    return save_model(path, nodes, [numpy_helper.from_array(w, "w")], classes, props, in_shape=shape)


def test_satseg_model_loads_with_its_metadata(tmp_path: Path) -> None:
    model = SegModel.load(make_rgb_model(tmp_path / "m.onnx", zoom=19, overlap=25))
    assert model.metadata.class_names == NAMES and model.metadata.zoom == 19
    assert model.metadata.tiles_overlap == 25 and model.window_size == 256
    out = model.run(model.normalize(np.zeros((2, 256, 256, 3), np.uint8)))
    assert out.shape == (2, 4, 256, 256)
    np.testing.assert_allclose(out.sum(axis=1), 1.0, atol=1e-5)


def test_deepness_spelling_is_accepted(tmp_path: Path) -> None:
    props = {
        "model_type": "Segmentor",  # a plain string, as Deepness's own exporters write it
        "class_names": json.dumps(["bg", "roof"]),
        "tiles_size": "512",
        "tiles_overlap": "10",
        "resolution": "30",
    }
    model = SegModel.load(softmax_model(tmp_path / "d.onnx", 2, props))
    m = model.metadata
    assert (m.class_names, m.tile_size, m.tiles_overlap, m.resolution_cm, m.zoom) == (
        ["bg", "roof"],
        512,
        10,
        30.0,
        None,
    )
    assert len(m.class_colors) == 2


def test_logits_are_turned_into_probabilities(tmp_path: Path) -> None:
    w = np.zeros((2, 3, 1, 1), np.float32)
    w[1, 0] = 5.0
    nodes = [helper.make_node("Conv", ["image", "w"], ["probabilities"])]  # raw logits, no softmax
    props = {"class_names": json.dumps({"0": "a", "1": "b"})}
    path = save_model(tmp_path / "l.onnx", nodes, [numpy_helper.from_array(w, "w")], 2, props)
    model = SegModel.load(path)
    out = model.run(np.ones((1, 3, 8, 8), np.float32))
    np.testing.assert_allclose(out.sum(axis=1), 1.0, atol=1e-6)
    assert out[0, 1, 0, 0] == pytest.approx(1 / (1 + np.exp(-5.0)), rel=1e-5)


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing", "does not exist"),
        ("not onnx", "is not a usable ONNX model"),
        ("one band", "takes input of shape"),
        ("class count", "outputs 3 classes but its metadata names 2"),
        ("no names", "has no class names"),
        ("bad colour", "bad colour"),
        ("not a segmentor", "not a segmentation model"),
    ],
)
def test_unusable_models_are_explained(case: str, message: str, tmp_path: Path) -> None:
    names = json.dumps({"0": "a", "1": "b"})
    path = tmp_path / "m.onnx"
    if case == "not onnx":
        path.write_bytes(b"\x89PNG\r\n\x1a\n not a model")
    elif case == "one band":  # (a model of one image band loads: a 3-dimensional input does not)
        nodes = [helper.make_node("Softmax", ["image"], ["probabilities"], axis=1)]
        graph = helper.make_graph(
            nodes, "flat", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 2, "H"])],
            [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 2, "H"])],
        )  # fmt: skip
        flat = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
        flat.ir_version = 8
        helper.set_model_props(flat, {"class_names": names})
        onnx.save(flat, str(path))
    elif case == "class count":
        softmax_model(path, 3, {"class_names": names})
    elif case == "no names":
        softmax_model(path, 2, {})
    elif case == "bad colour":
        softmax_model(path, 2, {"class_names": names, "class_colors": json.dumps(["#000000", "red"])})
    elif case == "not a segmentor":
        softmax_model(path, 2, {"class_names": names, "model_type": json.dumps("Detector")})
    with pytest.raises(ModelError, match=message) as err:
        SegModel.load(path)
    assert "Traceback" not in str(err.value)


def test_generic_names_only_when_asked(tmp_path: Path) -> None:
    path = softmax_model(tmp_path / "n.onnx", 3, {})
    with pytest.raises(ModelError, match="generic"):
        SegModel.load(path)
    assert SegModel.load(path, allow_generic_names=True).metadata.class_names == [
        "class 0",
        "class 1",
        "class 2",
    ]


def test_fixed_input_size_sets_the_window(tmp_path: Path) -> None:
    props = {"class_names": json.dumps(["a", "b"]), "tile_size": "256"}
    model = SegModel.load(softmax_model(tmp_path / "f.onnx", 2, props, in_shape=[1, 3, 128, 128]))
    assert model.window_size == 128 and model.fixed_batch == 1
    out = model.run(np.zeros((3, 3, 128, 128), np.float32))  # split into batches of one
    assert out.shape == (3, 2, 128, 128)


@pytest.mark.parametrize(("mean", "std"), [((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)), ((0.5,), (0.25,))])
def test_normalize_is_the_arithmetic_bit_for_bit(
    tmp_path: Path, mean: tuple[float, ...], std: tuple[float, ...]
) -> None:
    meta = ModelMetadata(NAMES, ["#000000"] * 4, 256, 25, None, mean=mean, std=std)
    model = SegModel.load(make_rgb_model(tmp_path / "m.onnx", props=build_metadata(meta)))
    pixels = np.random.default_rng(0).integers(0, 256, (3, 64, 80, 3), dtype=np.uint8)
    pixels[0, 0, :3] = [[0, 0, 0], [255, 255, 255], [1, 128, 254]]  # both ends of the table
    table = model.normalize(pixels)
    assert table.dtype == np.float32 and table.shape == (3, 3, 64, 80)
    np.testing.assert_array_equal(table, model.normalize_arithmetic(pixels))


def test_the_model_counts_the_windows_it_runs(tmp_path: Path) -> None:
    model = SegModel.load(make_rgb_model(tmp_path / "m.onnx"))
    assert model.windows_run == 0
    for n in (2, 3):
        model.run(model.normalize(np.zeros((n, 256, 256, 3), np.uint8)))
    assert model.windows_run == 5
