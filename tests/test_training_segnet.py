"""SegNet end to end on real data: Dubai masks imported, trained, validated, exported, run.

Three Dubai scenes are imported as 128 px tiles (import-masks --tile 128: a
quarter of the compute per step of 256 px tiles, so a width-0.25 SegNet gets
enough steps in about a minute on two cores); one whole scene is held out.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import re
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from satseg_plugin.inference.cli import run_cli
from satseg_plugin.inference.imageio import read_image
from satseg_plugin.inference.metadata import parse_metadata
from training import export, feed_forward, train, validate
from training.data import load_dataset, normalize, read_tiles, split_indices
from training.dataset import import_masks
from training.metrics import confusion_matrix, scores

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ["background", "building", "land", "road", "vegetation", "water"]


@pytest.fixture(scope="session")
def dubai_data(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dubai128")
    parser = argparse.ArgumentParser()
    import_masks.add_arguments(parser)
    args = parser.parse_args(
        [str(shared_data / "dubai-aerial"), "--colors", str(ROOT / "training/classes/dubai.json"),
         "--out", str(out), "--scenes", "tile1,tile2,tile3", "--tile", "128"]
    )  # fmt: skip
    assert import_masks.run(args) == 0
    return out


@pytest.fixture(scope="session")
def trained(dubai_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("runs") / "dubai"
    argv = ["--data", str(dubai_data), "--out", str(run), "--width", "0.25", "--epochs", "3",
            "--optimizer", "adam", "--lr", "0.003", "--batch-size", "8", "--seed", "0"]  # fmt: skip
    assert run_cli(train.main, argv) == 0
    return run


@pytest.fixture(scope="session")
def exported(trained: Path) -> Path:
    out = trained / "model.onnx"
    argv = [
        str(trained / "best.pt"),
        "--out",
        str(out),
        "--int8",
        "--calibration-tiles",
        "8",
        "--eval-tiles",
        "16",
    ]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert run_cli(export.main, argv) == 0
    (trained / "export.txt").write_text(printed.getvalue())  # what the user saw, for the tests below
    return out


def _plain(value: object) -> bool:
    if isinstance(value, dict):
        return all(isinstance(k, (str, int)) and _plain(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return all(_plain(v) for v in value)
    return value is None or isinstance(value, (str, int, float, bool, torch.Tensor))


def test_training_writes_log_and_plain_checkpoints(trained: Path) -> None:
    with (trained / "training_log.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["epoch"] for r in rows] == ["1", "2", "3"]
    assert set(rows[0]) == {"epoch", "loss", "val_loss", "acc", "val_acc", "val_mIoU", "lr", "seconds"}
    assert float(rows[-1]["loss"]) < float(rows[0]["loss"])
    for name in ("best.pt", "last.pt"):
        ckpt = torch.load(trained / name, weights_only=True)
        assert _plain(ckpt)
        assert ckpt["class_names"] == CLASSES and ckpt["width"] == 0.25 and ckpt["tile_size"] == 128
    assert "optimizer" in torch.load(trained / "last.pt", weights_only=True)
    best = max(float(r["val_mIoU"]) for r in rows)
    assert torch.load(trained / "best.pt", weights_only=True)["best_miou"] == pytest.approx(best, abs=1e-6)


def test_beats_the_majority_class_on_held_out_scenes(dubai_data: Path, trained: Path) -> None:
    ds = load_dataset(dubai_data)
    train_idx, val_idx = split_indices(ds.groups, 0.2, 0)
    assert {ds.groups[i] for i in train_idx}.isdisjoint({ds.groups[i] for i in val_idx})
    _, train_labels = read_tiles(ds.cache, train_idx)
    majority = int(np.argmax(np.bincount(train_labels.ravel(), minlength=256)[: len(CLASSES)]))
    _, val_labels = read_tiles(ds.cache, val_idx)
    baseline = scores(confusion_matrix(val_labels, np.full_like(val_labels, majority), len(CLASSES)))["miou"]

    out = trained / "val"
    assert run_cli(validate.main, ["--data", str(dubai_data), "--weights", str(trained / "best.pt"),
                                   "--out", str(out)]) == 0  # fmt: skip
    report = json.loads((out / "metrics.json").read_text())
    assert report["tiles"] == len(val_idx)
    print(f"validation mIoU {report['miou']:.3f} vs majority class ({CLASSES[majority]}) {baseline:.3f}")
    assert report["miou"] > baseline + 0.05


def test_export_parity_and_metadata(exported: Path, dubai_data: Path, trained: Path) -> None:
    model = onnx.load(str(exported))
    assert model.opset_import[0].version >= 17
    meta = parse_metadata({p.key: p.value for p in model.metadata_props}, num_outputs=len(CLASSES))
    # Trained on 128-px tiles, it runs 512-px windows in the plugin (the graph takes any multiple of 32).
    assert meta.class_names == CLASSES and meta.tile_size == 512 and meta.model_type == "Segmentor"
    assert meta.class_colors[1] == "#e31a1c"
    session = ort.InferenceSession(str(exported), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["image"]
    assert [o.name for o in session.get_outputs()] == ["probabilities"]
    ds = load_dataset(dubai_data)
    images, _ = read_tiles(ds.cache, list(range(0, 15, 5)))  # three real tiles: batch size 3
    x = normalize(images)
    got = session.run(None, {"image": x})[0]
    net = SoftmaxNet(trained / "best.pt")
    with torch.inference_mode():
        ref = net(torch.from_numpy(x)).numpy()
    assert got.shape == (3, len(CLASSES), 128, 128)
    # Near-ties in max pooling may move a value one pixel over (see training.export); the rest agrees.
    assert np.abs(got - ref).mean() <= 1e-5 and np.abs(got - ref).max() <= 1e-2
    assert (got.argmax(axis=1) == ref.argmax(axis=1)).mean() >= 0.999
    np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-5)
    # The plugin runs it on its 512-px windows; any multiple of 32 agrees with torch too.
    from satseg_plugin.inference.model import SegModel

    assert SegModel.load(exported).window_size == 512
    wide = np.concatenate([np.concatenate(list(images), axis=1)] * 2, axis=0)[None, :256, :352]
    x = normalize(wide)
    got = session.run(None, {"image": x})[0]
    with torch.inference_mode():
        ref = net(torch.from_numpy(x)).numpy()
    assert got.shape == (1, len(CLASSES), 256, 352) and np.abs(got - ref).mean() <= 1e-5

    int8 = exported.with_name("model.int8.onnx")
    q = onnx.load(str(int8))
    assert any(n.op_type == "QuantizeLinear" for n in q.graph.node)
    assert parse_metadata({p.key: p.value for p in q.metadata_props}).class_names == CLASSES


def test_export_with_flips_averages_each_window_and_its_mirror_image(
    exported: Path, dubai_data: Path, trained: Path, tmp_path: Path
) -> None:
    """``--flips 2``: the graph is the mean of the model on a window and on its left-right mirror
    image (mirrored back), so a mirrored window gives the mirrored result; a shipped ``.pt`` that
    names the flips predicts the same through torch."""
    from scripts.model_release import ship_weights
    from training.predictor import load_predictor

    out = tmp_path / "flips.onnx"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert run_cli(export.main, [str(trained / "best.pt"), "--out", str(out), "--flips", "2"]) == 0
    assert "averaged over 2 mirror images" in printed.getvalue()
    raw = {p.key: json.loads(p.value) for p in onnx.load(str(out)).metadata_props}
    assert raw["test_time_flips"] == 2
    ds = load_dataset(dubai_data)
    images, _ = read_tiles(ds.cache, [0, 7, 14])
    x = normalize(images)
    mirrored = np.ascontiguousarray(x[..., ::-1])
    run = {p: ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run for p in (exported, out)}
    plain, plain_of_mirror = (run[exported](None, {"image": v})[0] for v in (x, mirrored))
    got = run[out](None, {"image": x})[0]
    _agree(got, (plain + plain_of_mirror[..., ::-1]) / 2)
    # Equivariant to the mirror, which the model alone is not.
    _agree(run[out](None, {"image": mirrored})[0][..., ::-1], got)
    assert np.abs(plain_of_mirror[..., ::-1] - plain).mean() > 1e-4
    # A shipped .pt carries the flips: validate and feed_forward on it see what the ONNX file gives.
    shipped = tmp_path / "shipped.pt"
    ship_weights(trained / "best.pt", shipped, flips=2)
    _agree(load_predictor(shipped, "cpu").predict(images), got)
    assert np.abs(load_predictor(trained / "best.pt", "cpu").predict(images) - got).mean() > 1e-4


def _agree(got: np.ndarray, ref: np.ndarray) -> None:
    """Equal probabilities, but for a max-pool near-tie that may move one patch (see training.export)."""
    diff = np.abs(got - ref)
    assert diff.mean() <= 1e-5 and diff.max() <= 1e-2, (diff.mean(), diff.max())
    assert (got.argmax(axis=1) == ref.argmax(axis=1)).mean() >= 0.999


def test_export_refuses_flips_it_does_not_know(trained: Path, tmp_path: Path) -> None:
    from training.checkpoint import load_checkpoint, save_checkpoint

    with pytest.raises(SystemExit):  # argparse: --flips must be 1, 2 or 4
        export.build_parser().parse_args([str(trained / "best.pt"), "--out", "x.onnx", "--flips", "3"])
    ckpt = load_checkpoint(trained / "best.pt")
    ckpt["test_time_flips"] = 8
    bad = tmp_path / "bad.pt"
    save_checkpoint(bad, ckpt)
    out = tmp_path / "bad.onnx"
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert run_cli(export.main, [str(bad), "--out", str(out)]) == 2
    assert "test_time_flips 8; this version knows 1, 2, 4" in err.getvalue(), err.getvalue()
    assert not out.exists()
    err = io.StringIO()  # metadata that would say flips the graph does not do
    with contextlib.redirect_stderr(err):
        argv = [str(trained / "best.pt"), "--out", str(out), "--meta", "test_time_flips=2"]
        assert run_cli(export.main, argv) == 2
    assert "--meta test_time_flips: set by --flips" in err.getvalue(), err.getvalue()
    assert not out.exists()


def test_export_metadata_is_what_deepness_reads(exported: Path) -> None:
    """The raw ``metadata_props``: every value a JSON string, under the keys Deepness and satseg read."""
    raw = {p.key: json.loads(p.value) for p in onnx.load(str(exported)).metadata_props}
    assert raw["model_type"] == "Segmentor"
    assert raw["class_names"] == {str(i): n for i, n in enumerate(CLASSES)}
    assert set(raw["class_colors"]) == {str(i) for i in range(len(CLASSES))}
    # The seam-free 13 % of a 128-px training tile (16 px) is 4 % (20 px) of the 512-px window.
    assert raw["tile_size"] == 512 and raw["tiles_overlap"] == 4
    assert raw["standardization_mean"] == pytest.approx([0.485, 0.456, 0.406])
    assert raw["standardization_std"] == pytest.approx([0.229, 0.224, 0.225])
    assert "resolution" in raw and raw["zoom"] is None and raw["satseg_schema"] == 1
    dims = onnx.load(str(exported)).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [0, 3, 0, 0]  # dynamic batch, height and width
    assert [d.dim_param for d in dims][2:] == ["32*rows", "32*columns"]


def test_export_reports_parity_and_int8_speed_and_miou(exported: Path, trained: Path) -> None:
    printed = (trained / "export.txt").read_text()
    parity = re.search(
        r"parity on (\d+) real tiles: \|onnxruntime - torch\| mean (\S+), max (\S+); "
        r"same class on ([\d.]+) % of the pixels",
        printed,
    )
    assert parity and float(parity.group(2)) <= 1e-5 and float(parity.group(4)) >= 99.9, printed
    window = re.search(r"parity on a 512-px window of them: \|onnxruntime - torch\| mean (\S+),", printed)
    assert window and float(window.group(1)) <= 1e-5, printed
    fp = re.search(r"float32 ([\d.]+) tiles/s, mIoU ([\d.]+)", printed)
    q = re.search(r"int8 +([\d.]+) tiles/s, mIoU ([\d.]+) +\(x([\d.]+) speed, ([-+][\d.]+) mIoU\)", printed)
    assert fp and q, printed
    assert float(q.group(4)) == pytest.approx(float(q.group(2)) - float(fp.group(2)), abs=2e-4)
    assert float(fp.group(2)) > 0.05 and float(q.group(2)) > 0.05


def test_parity_allows_one_moved_patch_not_a_graph_off_everywhere() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(1, 2, 512, 512)).astype(np.float32)
    ref = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    # A max-pool near-tie: a 32 x 32 patch moved by 0.02 (0.4 % of the pixels), the rest equal.
    tie = ref.copy()
    tie[:, 0, 100:132, 200:232] += 0.02
    tie[:, 1, 100:132, 200:232] -= 0.02
    check = export.compare(ref, tie)
    assert check.mean_abs == pytest.approx(0.02 * 32 * 32 / 512**2, rel=1e-3) and check.max_abs > 0.019
    assert check.mean_abs > 1e-5 and check.passes(export.TOLERANCE, export.MIN_AGREEMENT)
    # A graph slightly off on every pixel (a normalisation or padding slip) is refused.
    drift = ref + np.float32(2e-4) * np.array([1, -1], np.float32)[None, :, None, None]
    check = export.compare(ref, drift)
    assert check.agreement > 0.999 and not check.passes(export.TOLERANCE, export.MIN_AGREEMENT)
    assert not export.compare(ref, ref[:, ::-1]).passes(1, export.MIN_AGREEMENT)  # classes swapped


def test_export_that_disagrees_with_torch_leaves_no_file(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "strict.onnx"
    # No export can give the same class on more than every pixel: the check must refuse it.
    argv = [str(trained / "best.pt"), "--out", str(out), "--min-agreement", "1.01"]
    capsys.readouterr()
    assert run_cli(export.main, argv) == 2
    err = capsys.readouterr().err
    assert "the ONNX export disagrees with torch on 4 real tiles" in err and "no file written" in err, err
    assert not out.exists() and list(tmp_path.iterdir()) == []


def SoftmaxNet(path: Path) -> torch.nn.Module:  # noqa: N802 - reads like the class it builds
    from training.checkpoint import load_checkpoint, model_from_checkpoint
    from training.model import SoftmaxSegNet

    return SoftmaxSegNet(model_from_checkpoint(load_checkpoint(path))).eval()


def test_onnx_and_torch_validate_alike(exported: Path, dubai_data: Path, trained: Path) -> None:
    miou = {}
    for w in (trained / "best.pt", exported):
        out = trained / f"val-{w.suffix[1:]}"
        argv = ["--data", str(dubai_data), "--weights", str(w), "--out", str(out), "--limit", "24",
                "--no-predictions"]  # fmt: skip
        assert run_cli(validate.main, argv) == 0
        miou[w.suffix] = json.loads((out / "metrics.json").read_text())["miou"]
    assert miou[".onnx"] == pytest.approx(miou[".pt"], abs=1e-3)


def test_feed_forward_on_a_whole_dubai_image(trained: Path, shared_data: Path, tmp_path: Path) -> None:
    image = shared_data / "dubai-aerial/tile2/images/image_part_001.jpg"  # 509 x 544, not a tile multiple
    out = tmp_path / "ff"
    assert run_cli(feed_forward.main, [str(trained / "best.pt"), str(image), str(out)]) == 0
    h, w = read_image(image).shape[:2]
    with (out / "pixel_counts.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["class"] for r in rows] == CLASSES
    assert sum(int(r["pixels"]) for r in rows) == h * w
    classes = read_image(out / "classes.png")[..., 0]
    assert classes.shape == (h, w)
    assert [int(r["pixels"]) for r in rows] == np.bincount(classes.ravel(), minlength=len(CLASSES)).tolist()
    assert len(list(out.glob("heatmap_*.png"))) == len(CLASSES)
    assert read_image(out / "segments.png").shape == (h, w, 3)
