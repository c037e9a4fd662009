"""Training parts on tiny, hand-made cases: metrics, validate, the cache and split, the model, errors.

The tiny dataset is two 32x32 tiles whose pixels are pure red, green or black,
and the tiny model a hand-written ONNX graph that calls red class 1, green
class 2 and black class 0, so every number validate prints is known in advance.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from satseg_plugin.inference.cli import run_cli
from satseg_plugin.inference.errors import ModelError
from satseg_plugin.inference.imageio import write_png
from satseg_plugin.inference.metadata import MEAN, STD, ModelMetadata, build_metadata
from training import feed_forward, train, validate
from training.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from training.data import load_dataset, split_indices
from training.feed_forward import HEATMAP_STOPS, heatmap
from training.metrics import confusion_matrix, scores
from training.model import SegNet
from training.tiled import predict_image

ROOT = Path(__file__).resolve().parents[1]
RED, GREEN, BLACK = (255, 0, 0), (0, 255, 0), (0, 0, 0)
CLASSES = [("background", "#000000"), ("red", "#ff0000"), ("green", "#00ff00")]


def make_tiny_dataset(root: Path) -> Path:
    """Two tiles; the confusion matrix the rule model gives is spelled out in the test."""
    a_img = np.zeros((32, 32, 3), np.uint8)
    a_lab = np.zeros((32, 32), np.uint8)
    a_img[:16], a_lab[:16] = RED, 1  # 512 px true 1, predicted 1
    a_img[16:24], a_lab[16:24] = GREEN, 1  # 256 px true 1, predicted 2
    a_img[24:], a_lab[24:] = RED, 255  # 256 px ignored
    b_img = np.zeros((32, 32, 3), np.uint8)
    b_lab = np.zeros((32, 32), np.uint8)
    b_img[:4], b_lab[:4] = RED, 0  # 128 px true 0, predicted 1
    b_img[4:16], b_lab[4:16] = BLACK, 0  # 384 px true 0, predicted 0
    b_img[16:], b_lab[16:] = GREEN, 2  # 512 px true 2, predicted 2
    for name, img, lab in (("s1-a-0-0", a_img, a_lab), ("s2-b-0-0", b_img, b_lab)):
        write_png(root / "images" / f"{name}.png", img)
        write_png(root / "labels" / "color" / f"{name}.png", np.repeat(lab[..., None], 3, 2))
    (root / "sample.txt").write_text("s1-a-0-0\ns2-b-0-0\n")
    (root / "scenes.csv").write_text("id,scene\ns1-a-0-0,s1\ns2-b-0-0,s2\n")
    manifest = {
        "schema": 1,
        "kind": "masks",
        "classes": [{"name": n, "color": c} for n, c in CLASSES],
        "ignore_index": 255,
        "tile_size": 32,
        "zoom": None,
        "resolution_cm": 50.0,
    }
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


def make_rule_model(path: Path) -> Path:
    """ONNX: probabilities = softmax(10 * [0, red, green]) of the normalised input."""
    w = np.zeros((3, 3, 1, 1), np.float32)
    w[1, 0], w[2, 1] = 10.0, 10.0
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["image", "w"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
        ],
        "rule",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 32, 32])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 3, 32, 32])],
        [helper.make_tensor("w", TensorProto.FLOAT, w.shape, w.ravel())],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    props = build_metadata(
        ModelMetadata(class_names=[n for n, _ in CLASSES], class_colors=[c for _, c in CLASSES], tile_size=32)
    )
    for k, v in props.items():
        e = model.metadata_props.add()
        e.key, e.value = k, v
    onnx.save(model, str(path))
    return path


@pytest.fixture()
def tiny(tmp_path: Path) -> tuple[Path, Path]:
    return make_tiny_dataset(tmp_path / "data"), make_rule_model(tmp_path / "rule.onnx")


HAND_CONFUSION = np.array([[384, 128, 0], [0, 512, 256], [0, 0, 512]])


def test_metrics_match_hand_computation() -> None:
    s = scores(HAND_CONFUSION)
    assert s["accuracy"] == pytest.approx(1408 / 1792)
    np.testing.assert_allclose(s["iou"], [384 / 512, 512 / 896, 512 / 768])
    np.testing.assert_allclose(s["precision"], [1.0, 512 / 640, 512 / 768])
    np.testing.assert_allclose(s["recall"], [384 / 512, 512 / 768, 1.0])
    np.testing.assert_allclose(s["f1"][1], 2 * 0.8 * (2 / 3) / (0.8 + 2 / 3))
    assert s["miou"] == pytest.approx((0.75 + 512 / 896 + 512 / 768) / 3)


def test_confusion_matrix_leaves_out_ignore_and_absent_classes() -> None:
    truth = np.array([0, 1, 255, 1, 255])
    pred = np.array([0, 1, 1, 0, 2])
    cm = confusion_matrix(truth, pred, 3)
    np.testing.assert_array_equal(cm, [[1, 0, 0], [1, 1, 0], [0, 0, 0]])
    s = scores(cm)
    assert np.isnan(s["iou"][2])  # class 2: neither true nor predicted anywhere
    assert s["miou"] == pytest.approx((0.5 + 0.5) / 2)
    # Class 2 predicted where class 1 is: IoU 0, and no part of the mean (the classes present).
    s = scores(confusion_matrix(np.array([0, 1, 1]), np.array([0, 1, 2]), 3))
    assert s["iou"][2] == 0.0 and s["miou"] == pytest.approx((1.0 + 0.5) / 2)


def test_validate_equals_hand_computed_confusion(tiny: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    data, model = tiny
    out = tmp_path / "val"
    argv = ["--data", str(data), "--weights", str(model), "--split", "all", "--out", str(out)]
    assert run_cli(validate.main, argv) == 0
    report = json.loads((out / "metrics.json").read_text())
    np.testing.assert_array_equal(report["confusion"], HAND_CONFUSION)
    assert report["accuracy"] == pytest.approx(1408 / 1792, abs=1e-6)
    assert report["miou"] == pytest.approx((0.75 + 512 / 896 + 512 / 768) / 3, abs=1e-6)
    assert report["classes"]["red"]["precision"] == pytest.approx(0.8)
    assert report["classes"]["red"]["recall"] == pytest.approx(2 / 3, abs=1e-6)
    with h5py.File(out / "predictions.hdf5") as f:
        assert f["probabilities"].shape == (2, 3, 32, 32)
        np.testing.assert_allclose(f["probabilities"][:].sum(axis=1), 1.0, atol=2e-3)
        assert list(f["ids"].asstr()) == ["s1-a-0-0", "s2-b-0-0"]
        # Per-pixel probabilities: the rule model is sure of red (class 1) on tile a's red rows.
        assert f["probabilities"][0, 1, 0, 0] > 0.99
    # red: TP 512, FP 128, FN 256 -> F1 = 2*512 / (2*512 + 128 + 256), IoU = 512 / 896.
    assert report["classes"]["red"]["f1"] == pytest.approx(1024 / 1408, abs=1e-6)
    assert report["classes"]["red"]["iou"] == pytest.approx(512 / 896, abs=1e-6)
    assert report["classes"]["background"]["precision"] == 1.0 and report["classes"]["green"]["recall"] == 1.0
    printed = capsys.readouterr().out
    assert "mIoU  66.27 %" in printed and "confusion matrix" in printed
    lines = printed.splitlines()
    header = lines.index("confusion matrix (rows: true class, columns: predicted)")
    rows = [[int(v) for v in line.split()[1:]] for line in lines[header + 2 : header + 5]]
    assert rows == HAND_CONFUSION.tolist()
    red = next(
        line for line in lines if line.startswith("red ") and "%" not in line and len(line.split()) == 6
    )
    assert red.split()[1:5] == ["80.00", "66.67", "72.73", "57.14"]  # precision, recall, F1, IoU in %


def test_cache_is_reused_and_rebuilt_when_the_sample_changes(tiny: tuple[Path, Path]) -> None:
    data, _ = tiny
    ds = load_dataset(data)
    with h5py.File(ds.cache) as f:
        assert f["images"].dtype == np.uint8 and f["labels"].dtype == np.uint8
        assert f["images"].chunks == (1, 32, 32, 3) and f["images"].compression == "gzip"
        assert list(f["ids"].asstr()) == ["s1-a-0-0", "s2-b-0-0"]
    stamp = ds.cache.stat().st_mtime_ns
    assert load_dataset(data).cache.stat().st_mtime_ns == stamp  # same sample: reused
    (data / "sample-filtered.txt").write_text("s2-b-0-0\n")
    ds2 = load_dataset(data)
    with h5py.File(ds2.cache) as f:
        assert list(f["ids"].asstr()) == ["s2-b-0-0"]


def test_split_is_seeded_and_keeps_scenes_apart() -> None:
    groups = [f"scene{i % 7}" for i in range(70)]
    train_idx, val_idx = split_indices(groups, 0.2, seed=3)
    assert (train_idx, val_idx) == split_indices(groups, 0.2, seed=3)
    assert {groups[i] for i in train_idx}.isdisjoint({groups[i] for i in val_idx})
    # 7 scenes of 10 tiles: one scene (10) is closer to 20 % of 70 (14) than two (20).
    assert len(val_idx) == 10 and sorted(train_idx + val_idx) == list(range(70))
    assert split_indices(groups, 0.2, seed=4) != (train_idx, val_idx) or len(set(groups)) < 3


def test_segnet_structure() -> None:
    net = SegNet(5, width=0.25)
    convs = [m for m in net.encoder.modules() if isinstance(m, torch.nn.Conv2d)]
    dconvs = [m for m in net.decoder.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 13 and len(dconvs) == 13
    assert [c.out_channels for c in convs] == [16, 16, 32, 32, 64, 64, 64, 128, 128, 128, 128, 128, 128]
    assert net.classifier.kernel_size == (1, 1) and net.classifier.out_channels == 5
    assert net(torch.zeros(2, 3, 64, 96)).shape == (2, 5, 64, 96)


def test_unpooling_puts_values_back_where_the_maxima_were() -> None:
    # An encoder that passes a single bright pixel straight through must get it back at the same place.
    net = SegNet(2, width=0.125).eval()
    x = torch.zeros(1, 3, 64, 64)
    x[0, :, 37, 21] = 5.0
    pools = []
    h = x
    for _ in range(5):
        h, idx = torch.nn.functional.max_pool2d(h, 2, 2, return_indices=True)
        pools.append(idx)
    for idx in reversed(pools):
        h = torch.nn.functional.max_unpool2d(h, idx, 2, 2)
    assert h[0, 0].nonzero().tolist() == [[37, 21]]
    assert net(x).shape == (1, 2, 64, 64)


def test_checkpoint_round_trip_and_errors(tmp_path: Path) -> None:
    net = SegNet(3, 0.125)
    ckpt = {
        "state_dict": net.state_dict(),
        "class_names": [n for n, _ in CLASSES],
        "class_colors": [c for _, c in CLASSES],
        "width": 0.125,
        "tile_size": 32,
        "mean": list(MEAN),
        "std": list(STD),
        "epoch": 1,
        "best_miou": 0.5,
    }
    save_checkpoint(tmp_path / "ok.pt", ckpt)
    loaded = torch.load(tmp_path / "ok.pt", weights_only=True)  # plain types only
    model_from_checkpoint(loaded)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left

    (tmp_path / "garbage.pt").write_bytes(b"this is not a checkpoint" * 10)
    with pytest.raises(ModelError, match="corrupt"):
        load_checkpoint(tmp_path / "garbage.pt")
    data = (tmp_path / "ok.pt").read_bytes()
    (tmp_path / "truncated.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match="corrupt"):
        load_checkpoint(tmp_path / "truncated.pt")
    with pytest.raises(ModelError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")

    wrong = dict(ckpt, class_names=["background", "x"], class_colors=["#000000", "#ffffff"])
    with pytest.raises(ModelError, match="weights for 3 classes but names 2"):
        model_from_checkpoint(wrong)
    other_width = dict(ckpt, width=0.25)
    with pytest.raises(ModelError, match="does not fit"):
        model_from_checkpoint(other_width)


def test_cli_errors_exit_2(tiny: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    data, model = tiny
    bad = tmp_path / "bad.pt"
    bad.write_bytes(os.urandom(3000))
    assert run_cli(validate.main, ["--data", str(data), "--weights", str(bad)]) == 2
    assert "corrupt" in capsys.readouterr().err

    six = tmp_path / "six.pt"
    save_checkpoint(
        six,
        {"state_dict": SegNet(6, 0.125).state_dict(), "class_names": [f"c{i}" for i in range(6)],
         "class_colors": ["#000000"] * 6, "width": 0.125, "tile_size": 32},
    )  # fmt: skip
    assert run_cli(validate.main, ["--data", str(data), "--weights", str(six)]) == 2
    assert "predicts 6 classes" in capsys.readouterr().err

    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    assert run_cli(feed_forward.main, [str(model), str(broken), str(tmp_path / "ff")]) == 2
    assert "image" in capsys.readouterr().err
    assert run_cli(feed_forward.main, [str(model), str(tmp_path / "nope.jpg"), str(tmp_path / "ff")]) == 2
    assert "not found" in capsys.readouterr().err
    assert not (tmp_path / "ff" / "classes.png").exists()

    assert run_cli(train.main, ["--data", str(tmp_path / "nodata"), "--out", str(tmp_path / "r")]) == 2
    assert "not found" in capsys.readouterr().err


def test_feed_forward_on_an_odd_sized_image(tiny: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    _, model = tiny
    img = np.zeros((45, 77, 3), np.uint8)  # not a multiple of the 32 px tile, smaller and larger
    img[:20] = RED
    img[20:, 40:] = GREEN
    write_png(tmp_path / "odd.png", img)
    out = tmp_path / "ff"
    assert run_cli(feed_forward.main, [str(model), str(tmp_path / "odd.png"), str(out)]) == 0
    rows = [r.split(",") for r in (out / "pixel_counts.csv").read_text().splitlines()[1:]]
    counts = {r[0]: int(r[1]) for r in rows}
    assert sum(counts.values()) == 45 * 77
    assert counts == {"background": 25 * 40, "red": 20 * 77, "green": 25 * 37}
    assert "3465" in capsys.readouterr().out
    from satseg_plugin.inference.imageio import read_image

    classes = read_image(out / "classes.png")[..., 0]
    assert classes.shape == (45, 77) and classes[0, 0] == 1 and classes[44, 76] == 2
    seg = read_image(out / "segments.png")
    np.testing.assert_array_equal(seg[0, 0], [255, 0, 0])  # red over red stays red
    np.testing.assert_array_equal(seg[44, 0], [0, 0, 0])
    np.testing.assert_array_equal(seg[44, 76], [0, 255, 0])
    for name in ("background", "red", "green"):
        assert read_image(out / f"heatmap_{name}.png").shape == (45, 77, 3)
    hot = read_image(out / "heatmap_red.png")
    np.testing.assert_array_equal(hot[0, 0], HEATMAP_STOPS[-1][1])  # probability ~1.0: the top colour


def test_heatmap_is_right_at_one_and_zero() -> None:
    np.testing.assert_array_equal(
        heatmap(np.array([[1.0, 0.0]])), [[HEATMAP_STOPS[-1][1], HEATMAP_STOPS[0][1]]]
    )
    np.testing.assert_array_equal(
        heatmap(np.array([[1.0000001]]))[0, 0], HEATMAP_STOPS[-1][1]
    )  # no wrap to 0


def test_tiled_blending_keeps_probabilities_and_covers_edges() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (50, 70, 3), dtype=np.uint8)

    def fake(tiles: np.ndarray) -> np.ndarray:  # probabilities that depend on the pixel only
        r = tiles[..., 0].astype(np.float32) / 255.0
        return np.stack([r, 1 - r], axis=1)

    probs = predict_image(image, fake, 2, 32, 25)
    np.testing.assert_allclose(probs[0], image[..., 0] / 255.0, atol=1e-5)
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-5)


def test_train_resume_and_ctrl_c(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    data, _ = tiny
    run = tmp_path / "run"
    common = [
        "--data",
        str(data),
        "--out",
        str(run),
        "--width",
        "0.125",
        "--batch-size",
        "2",
        "--validation",
        "0.4",
    ]
    assert run_cli(train.main, [*common, "--epochs", "2"]) == 0
    assert len((run / "training_log.csv").read_text().splitlines()) == 3
    assert run_cli(train.main, [*common, "--epochs", "3", "--resume"]) == 0
    log = (run / "training_log.csv").read_text().splitlines()
    assert log[0] == "epoch,loss,val_loss,acc,val_acc,val_mIoU,lr,seconds"
    assert [r.split(",")[0] for r in log[1:]] == ["1", "2", "3"]
    assert torch.load(run / "last.pt", weights_only=True)["epoch"] == 3

    # Ctrl-C (a real SIGINT to a real process) in the middle of a long run saves last.pt.
    run2 = tmp_path / "run2"
    argv = [*common[:2], "--out", str(run2), *common[4:], "--epochs", "100000"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "training.train", *argv], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while not (run2 / "last.pt").exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err.decode()
    assert b"saved" in err and b"--resume" in err
    ckpt = load_checkpoint(run2 / "last.pt")
    assert ckpt["epoch"] >= 1 and "optimizer" in ckpt
    assert not [p for p in run2.iterdir() if p.name.startswith(".")]


def test_ctrl_c_while_an_epoch_is_saved_waits_for_the_save() -> None:
    """A SIGINT inside the block is held until the block ends, then raised."""
    done, before = [], signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt), train.interrupts_deferred():
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)  # the signal is delivered here, and held
        done.append("saved")
    assert done == ["saved"]
    assert signal.getsignal(signal.SIGINT) is before


def test_export_uses_the_overlap_the_checkpoint_stores() -> None:
    from satseg_plugin.inference.errors import ParameterError
    from satseg_plugin.inference.metadata import DEFAULT_OVERLAP_PERCENT
    from training.export import export_overlap

    assert export_overlap({"tiles_overlap": 40}, None) == 40  # train's, not the default 25
    assert export_overlap({}, None) == DEFAULT_OVERLAP_PERCENT  # a checkpoint from before train stored one
    assert export_overlap({"tiles_overlap": 40}, 10) == 10  # --overlap wins
    with pytest.raises(ParameterError, match=r"overlap must be in \[0, 100\), not 100"):
        export_overlap({}, 100)


def test_export_keeps_the_overlap_in_pixels_on_a_larger_window() -> None:
    """13 % of a 256-px training tile is 32 px of overlap; on a 512-px window that is 7 % (36 px)."""
    from satseg_plugin.inference.errors import SatsegError
    from satseg_plugin.inference.tileplan import overlap_pixels, plan_windows
    from training.export import check_window, export_overlap

    ckpt = {"tiles_overlap": 13, "tile_size": 256}
    assert overlap_pixels(256, 13) == 32 and overlap_pixels(512, 6) == 30 and overlap_pixels(512, 7) == 36
    assert export_overlap(ckpt, None, 512) == 7  # the least percent with at least the 32 px
    assert export_overlap(ckpt, None, 256) == 13 and export_overlap(ckpt, None) == 13
    assert export_overlap({"tiles_overlap": 0, "tile_size": 256}, None, 512) == 0
    assert export_overlap(ckpt, 25, 512) == 25  # --overlap is a percent of the window, as given
    w = plan_windows(4096, 4096, 512, 7)
    assert (w.size, w.stride) == (512, 476)
    assert check_window(512) == 512 and check_window(32) == 32
    for bad in (0, 500, 16):
        with pytest.raises(SatsegError, match="--window must be a multiple of 32 px"):
            check_window(bad)
