"""The training CLIs as a user meets them: --help, defaults, weight decay, class weights, augmentation, device.

Runs on the tiny hand-made dataset of test_training_units (two 32x32 tiles in
two scenes) and a width-0.125 SegNet, so each training run takes seconds.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from test_training_units import make_tiny_dataset

from satseg_plugin.inference.cli import run_cli
from satseg_plugin.inference.errors import ModelError, SatsegError
from training import train
from training.data import SegmentationTiles, load_dataset, read_tiles
from training.predictor import pick_device

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def data(tmp_path: Path) -> Path:
    return make_tiny_dataset(tmp_path / "data")


def help_text(module: str, *verb: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", module, *verb, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120,
        env={**os.environ, "COLUMNS": "250"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return " ".join(done.stdout.split())


@pytest.mark.parametrize(
    ("module", "phrases"),
    [
        (
            "training.train",
            [
                "--validation VALIDATION share of tiles held out (whole scenes) (default: 0.2)",
                "--epochs EPOCHS total epochs (a resumed run counts those done) (default: 10)",
                "--lr LR initial learning rate (default: 0.001)",
                "--momentum MOMENTUM SGD momentum (default: 0.9)",
                "--batch-size BATCH_SIZE tiles per step (default: 8)",
                "not a learning-rate decay) (default: 0.0005)",
                "--seed SEED",
                "--width WIDTH width multiplier (1.0 = the paper's SegNet); default 1.0, or the --init model's",
                "--class-weights {none,median} loss weights: none, or median frequency balancing",
                "(default: none)",
                "--augment, --no-augment random flips and 90-degree rotations of training tiles (default: True)",
                "--device DEVICE auto (CUDA when present), cpu, cuda, cuda:N (default: auto)",
                "--resume continue from OUT/last.pt",
            ],
        ),
        (
            "training.validate",
            ["--data DATA", "--weights WEIGHTS runs/NAME/best.pt or model.onnx", "predictions.hdf5"],
        ),
        (
            "training.export",
            [
                "weights checkpoint to export",
                "--out OUT ONNX file to write",
                "--int8 also write OUT.int8.onnx",
                "largest allowed mean |onnxruntime - torch| (default: 0.0001)",
                "same class by onnxruntime and torch (default: 0.999)",
            ],
        ),
        ("training.feed_forward", ["WEIGHTS runs/NAME/best.pt or model.onnx", "IMAGE", "OUTDIR"]),
        (
            "training.average",
            [
                "checkpoints two or more .pt checkpoints of one network",
                "--out OUT the averaged checkpoint to write",
                "set the batch-norm statistics",
            ],
        ),
    ],
)
def test_every_cli_explains_its_options(module: str, phrases: list[str]) -> None:
    text = help_text(module)
    for phrase in phrases:
        assert phrase in text, phrase
    assert "(default: None)" not in text  # an option left out says in words what happens
    assert "(default: False)" not in text  # plain flags say what they do when given


def test_segment_flags_do_not_claim_a_default_that_reads_backwards() -> None:
    text = help_text("satseg_plugin.inference", "segment")
    assert "--no-classes do not write classes.tif --no-heatmaps" in text and "(default: True)" not in text
    train_help = help_text("training.train")  # a --x/--no-x switch says which side is on
    assert (
        "--augment, --no-augment random flips and 90-degree rotations of training tiles (default: True)"
        in train_help
    )


def test_train_defaults_are_the_issues() -> None:
    args = train.build_parser().parse_args(["--data", "d", "--out", "o"])
    assert (args.validation, args.epochs, args.lr, args.momentum) == (0.2, 10, 0.001, 0.9)
    assert args.optimizer == "sgd" and args.class_weights == "none" and args.augment is True
    assert args.device == "auto" and args.resume is False and args.weight_decay > 0


def _train(data: Path, out: Path, *extra: str) -> list[dict[str, str]]:
    argv = ["--data", str(data), "--out", str(out), "--width", "0.125", "--batch-size", "2"]
    argv += ["--validation", "0.4", "--epochs", "2", "--no-augment", "--seed", "1", *extra]
    assert run_cli(train.main, argv) == 0
    with (out / "training_log.csv").open() as f:
        return list(csv.DictReader(f))


def _weight_norm(path: Path) -> float:
    state = torch.load(path, weights_only=True)["state_dict"]
    return float(sum((v.float() ** 2).sum() for k, v in state.items() if k.endswith("weight")))


def test_weight_decay_shrinks_weights_and_leaves_the_learning_rate_alone(data: Path, tmp_path: Path) -> None:
    runs = {}
    for wd in ("0", "5"):
        rows = _train(
            data, tmp_path / f"wd{wd}", "--weight-decay", wd, "--schedule", "constant", "--lr", "0.01"
        )
        runs[wd] = rows
        ckpt = torch.load(tmp_path / f"wd{wd}" / "last.pt", weights_only=True)
        group = ckpt["optimizer"]["param_groups"][0]
        assert group["weight_decay"] == float(wd) and group["momentum"] == 0.9 and group["lr"] == 0.01
    # The learning rate is the same in both logs (decay is a penalty on the weights, not on the lr) ...
    assert [r["lr"] for r in runs["0"]] == [r["lr"] for r in runs["5"]] == ["0.01", "0.01"]
    # ... and the weights end up smaller with it.
    assert _weight_norm(tmp_path / "wd5" / "last.pt") < 0.99 * _weight_norm(tmp_path / "wd0" / "last.pt")


def test_median_frequency_weights_by_hand() -> None:
    # class 0: 300 px over 3 tiles of 100 -> freq 1.0; class 1: 50 px in 2 tiles -> 0.25;
    # class 2: 20 px in 1 tile -> 0.2; class 3 absent -> weight 0. median(1, 0.25, 0.2) = 0.25.
    w = train.median_frequency_weights(np.array([300, 50, 20, 0]), np.array([300, 200, 100, 0]))
    np.testing.assert_allclose(w, [0.25, 1.0, 1.25, 0.0])


def test_median_class_weights_reach_the_loss(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    _train(data, tmp_path / "m", "--class-weights", "median", "--validation", "0")
    printed = capsys.readouterr().out
    # Both tiles train (no validation): background 512 px, only in tile b (1024 px) -> 0.5;
    # red 768 px, only in tile a -> 0.75; green 512 px, only in tile b -> 0.5; the median is 0.5.
    # (Tile a's 256 ignore pixels count for no class; as loss targets they would crash a 3-class loss.)
    assert "class weights: background 1.000, red 0.667, green 1.000" in printed, printed


def test_augmentation_turns_image_and_label_together(data: Path) -> None:
    ds = load_dataset(data)
    images, labels = read_tiles(ds.cache, [0])
    image, label = images[0], labels[0]
    symmetries = []
    for k in range(4):
        for flip in (False, True):
            img, lab = np.rot90(image, k), np.rot90(label, k)
            symmetries.append((img[:, ::-1], lab[:, ::-1]) if flip else (img, lab))
    tiles = SegmentationTiles(ds.cache, [0] * 64, augment=True, seed=0)
    seen = set()
    for n in range(len(tiles)):
        x, y = tiles[n]
        # Undo the normalisation to find which of the eight symmetries the image got.
        rgb = np.rint(
            (x.numpy().transpose(1, 2, 0) * np.array([0.229, 0.224, 0.225]) + [0.485, 0.456, 0.406]) * 255
        )
        matches = [i for i, (img, _) in enumerate(symmetries) if np.array_equal(rgb, img)]
        assert matches, "the augmented image is no flip/rotation of the tile"
        assert any(np.array_equal(y.numpy(), symmetries[i][1]) for i in matches), "label turned differently"
        seen.add(matches[0])
    assert len(seen) >= 4  # flips and rotations both happen
    plain = SegmentationTiles(ds.cache, [0], augment=False)
    assert np.array_equal(plain[0][1].numpy(), label)


def test_device_auto_and_bad_devices(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert pick_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert pick_device("cpu").type == "cpu"
    with pytest.raises(ModelError, match="unknown device 'banana'"):
        pick_device("banana")
    if not torch.cuda.is_available():
        with pytest.raises(ModelError, match="torch sees no CUDA GPU"):
            pick_device("cuda")
    capsys.readouterr()
    argv = ["--data", str(data), "--out", str(tmp_path / "r"), "--device", "banana"]
    assert run_cli(train.main, argv) == 2
    assert capsys.readouterr().err.startswith("error: unknown device 'banana'")


def test_train_reports_its_device(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    _train(data, tmp_path / "d", "--epochs", "1")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert f"device {expected}" in capsys.readouterr().out


def test_snapshots_and_their_average(data: Path, tmp_path: Path) -> None:
    """--snapshots keeps every epoch's weights; training.average gives their mean, with batch-norm
    statistics measured again over the run's training tiles for the mean weights."""
    from training import average
    from training.checkpoint import load_checkpoint, model_from_checkpoint
    from training.data import checkpoint_split, normalize

    out = tmp_path / "run"
    _train(data, out, "--epochs", "3", "--snapshots", "--lr", "0.05", "--schedule", "constant")
    snaps = sorted((out / "snapshots").glob("epoch-*.pt"))
    assert [p.name for p in snaps] == ["epoch-001.pt", "epoch-002.pt", "epoch-003.pt"]
    last = torch.load(out / "last.pt", weights_only=True)
    third = torch.load(snaps[-1], weights_only=True)
    assert "optimizer" not in third and third["epoch"] == 3
    assert all(torch.equal(third["state_dict"][k], v) for k, v in last["state_dict"].items())

    mean_pt = tmp_path / "mean.pt"
    assert run_cli(average.main, [*map(str, snaps[1:]), "--out", str(mean_pt)]) == 0
    mean = load_checkpoint(mean_pt)
    states = [torch.load(p, weights_only=True)["state_dict"] for p in snaps[1:]]
    w = next(k for k in mean["state_dict"] if k.endswith("weight") and mean["state_dict"][k].dim() == 4)
    torch.testing.assert_close(mean["state_dict"][w], (states[0][w] + states[1][w]) / 2)
    assert not torch.equal(states[0][w], states[1][w])  # the lr moved the weights: a real mean
    # The first batch-norm layer's running mean is its input's per-channel mean over the
    # training tiles, recomputed for the mean weights.
    net = model_from_checkpoint(mean)
    ds = load_dataset(data)
    train_idx, _ = checkpoint_split(ds.groups, mean)
    images, _labels = read_tiles(ds.cache, train_idx)
    conv = next(m for m in net.modules() if isinstance(m, torch.nn.Conv2d))
    bn = next(m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d))
    with torch.no_grad():
        feats = conv(torch.from_numpy(normalize(images, ds.mean, ds.std)))
    torch.testing.assert_close(bn.running_mean, feats.mean((0, 2, 3)), rtol=1e-4, atol=1e-5)
    assert not torch.allclose(
        bn.running_mean, states[1][next(k for k in states[1] if k.endswith("running_mean"))]
    )

    with pytest.raises(SatsegError, match="at least two"):
        average.main([str(snaps[0]), "--out", str(tmp_path / "one.pt")])
    assert not (tmp_path / "one.pt").exists()
