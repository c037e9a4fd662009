"""The training recipe's parts by their values: split share, resume schedule, losses, augmentation,
fine-tuning, repaired OSM polygons and filters that match nothing."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from osgeo import gdal, ogr, osr
from test_training_options import _train as train_tiny

from satseg_plugin.inference.cli import run_cli
from satseg_plugin.inference.errors import SatsegError
from satseg_plugin.inference.imageio import write_png
from training import train
from training.augment import AugmentConfig, augment_batch, blur, rescale
from training.checkpoint import load_checkpoint
from training.data import checkpoint_split, load_dataset, scene_names, split_indices, split_named
from training.dataset.__main__ import main as dataset_main
from training.dataset.osm_source import repair_area
from training.dataset.tiles import pixel_size, xyz_blocks
from training.ema import WeightEMA, ema_decay
from training.losses import SegmentationLoss, lovasz_softmax_loss, soft_dice_loss
from training.schedule import LRSchedule
from training.validate import main as validate_main

gdal.UseExceptions()
ogr.UseExceptions()
ROOT = Path(__file__).resolve().parents[1]
#: Six zoom-19 tiles in two 8x8 blocks of three.
XYZ_IDS = [f"19-{x}-2000" for x in (1000, 1001, 1002, 1008, 1009, 1010)]


def make_tiny_dataset(root: Path) -> Path:
    """Six 32x32 XYZ tiles: red stripes are class 1, green class 2, the rest background."""
    rng = np.random.default_rng(0)
    for k, tid in enumerate(XYZ_IDS):
        img = np.zeros((32, 32, 3), np.uint8)
        lab = np.zeros((32, 32), np.uint8)
        r0, g0 = int(rng.integers(0, 12)), int(rng.integers(16, 28))
        img[r0 : r0 + 4, :, 0], lab[r0 : r0 + 4] = 220, 1
        img[g0 : g0 + 4, :, 1], lab[g0 : g0 + 4] = 200, 2
        lab[:, 30:] = 255 if k % 2 else lab[:, 30:]
        write_png(root / "images" / f"{tid}.png", img)
        write_png(root / "labels" / "color" / f"{tid}.png", np.repeat(lab[..., None], 3, 2))
    (root / "sample.txt").write_text("".join(f"{t}\n" for t in XYZ_IDS))
    manifest = {
        "schema": 1, "kind": "osm", "ignore_index": 255, "tile_size": 32, "zoom": 19, "resolution_cm": 29.7,
        "classes": [{"name": "background", "color": "#000000"}, {"name": "red", "color": "#ff0000"},
                    {"name": "green", "color": "#00ff00"}],
    }  # fmt: skip
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


# --- split ------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(12))
def test_validation_share_is_close_to_the_one_asked_for(seed: int) -> None:
    # Scenes of very unequal size, as the Dubai masks and OSM blocks are: 3 to 40 tiles.
    sizes = [40, 3, 17, 8, 25, 5, 12, 30, 9, 4, 21, 6]
    groups = [f"s{k}" for k, n in enumerate(sizes) for _ in range(n)]
    train_idx, val_idx = split_indices(groups, 0.2, seed)
    share = len(val_idx) / len(groups)
    # Before: "until at least 20 %" took a 40-tile scene after others, 20-65 % by seed.
    assert abs(share - 0.2) <= 0.02, share
    assert {groups[i] for i in train_idx}.isdisjoint({groups[i] for i in val_idx})


def test_split_with_scenes_larger_than_the_share_still_validates() -> None:
    groups = ["a"] * 50 + ["b"] * 50
    train_idx, val_idx = split_indices(groups, 0.2, 0)
    assert len(val_idx) == 50 and len(train_idx) == 50
    assert split_indices(groups, 0.0, 0) == (list(range(100)), [])


def test_named_validation_scenes_split_by_name_and_refuse_unknown_ones() -> None:
    groups = ["tile1"] * 4 + ["tile2"] * 3 + ["tile7"] * 9
    assert split_named(groups, ["tile1"]) == (list(range(4, 16)), [0, 1, 2, 3])
    assert split_named(groups, scene_names("tile2, tile1,"))[1] == list(range(7))
    assert scene_names(" tile2, tile1,") == ["tile2", "tile1"] and scene_names(None) == []
    with pytest.raises(SatsegError, match="no scene named tile5"):
        split_named(groups, ["tile1", "tile5"])
    with pytest.raises(SatsegError, match="nothing would train"):
        split_named(groups, ["tile1", "tile2", "tile7"])
    # A checkpoint that named scenes gets them back; one without, its seeded share.
    assert checkpoint_split(groups, {"val_scenes": ["tile2"], "val_fraction": 0.5, "seed": 3})[1] == [4, 5, 6]
    assert checkpoint_split(groups, {"val_fraction": 0.2, "seed": 3}) == split_indices(groups, 0.2, 3)


def test_train_with_validation_scenes_validates_there_and_validate_follows(tmp_path: Path) -> None:
    data = make_tiny_dataset(tmp_path / "d")
    blocks = xyz_blocks(XYZ_IDS)
    east = blocks[XYZ_IDS[-1]]
    argv = ["--data", str(data), "--out", str(tmp_path / "run"), "--width", "0.125", "--batch-size", "2"]
    argv += ["--epochs", "1", "--no-augment", "--validation", "0.9", "--validation-scenes", east]
    assert run_cli(train.main, argv) == 0
    ckpt = load_checkpoint(tmp_path / "run" / "last.pt")
    assert ckpt["val_scenes"] == [east] and ckpt["val_fraction"] == 0.5  # 3 of 6 tiles, not the 0.9 asked
    ds = load_dataset(data)
    assert [ds.ids[i] for i in checkpoint_split(ds.groups, ckpt)[1]] == XYZ_IDS[3:]
    out = tmp_path / "val"
    vargv = ["--data", str(data), "--weights", str(tmp_path / "run" / "last.pt"), "--no-predictions"]
    assert run_cli(validate_main, [*vargv, "--out", str(out)]) == 0
    assert json.loads((out / "metrics.json").read_text())["tiles"] == 3
    bad = [*argv[:-1], "nowhere"]
    bad[bad.index("--out") + 1] = str(tmp_path / "bad")
    assert run_cli(train.main, bad) != 0
    assert not (tmp_path / "bad" / "last.pt").exists()


def test_xyz_tiles_of_two_zooms_share_the_block_of_their_ground() -> None:
    ids = ["19-319296-270992", "19-319303-270999", "19-319304-270992", "20-638592-541984", "20-638609-541985"]
    blocks = xyz_blocks(ids)
    # Blocks are 8x8 tiles of the coarsest zoom (19): zoom-16 tiles.
    assert blocks["19-319296-270992"] == blocks["19-319303-270999"] == "z16-39912-33874"
    assert blocks["19-319304-270992"] == "z16-39913-33874"
    assert blocks["20-638592-541984"] == "z16-39912-33874"  # its zoom-19 parent is 319296-270992
    assert blocks["20-638609-541985"] == "z16-39913-33874"
    assert xyz_blocks(["tile1-0-0-0"]) == {}


def test_merged_copies_of_an_osm_dataset_are_split_by_block(tmp_path: Path) -> None:
    data = make_tiny_dataset(tmp_path / "a")
    ids = (data / "sample.txt").read_text().split()
    copy = tmp_path / "b"
    copy.symlink_to(data, target_is_directory=True)
    rc = run_cli(dataset_main, ["merge", str(data), str(copy), "--out", str(tmp_path / "m")])
    assert rc == 0
    with (tmp_path / "m" / "scenes.csv").open() as f:
        scenes = {r["id"]: r["scene"] for r in csv.DictReader(f)}
    # Each tile and its copy (prefixed id) sit in one block, never one scene per tile.
    for i in ids:
        assert scenes[i] == scenes[f"b-{i}"] == xyz_blocks(ids)[i]
    assert len(set(scenes.values())) == 2


# --- schedule ---------------------------------------------------------------------------------


def test_cosine_schedule_values() -> None:
    s = LRSchedule("cosine", 0.01, total_steps=100)
    assert s.lr(0) == pytest.approx(0.01)
    assert s.lr(50) == pytest.approx(0.005)
    assert s.lr(100) == pytest.approx(0.0)
    assert LRSchedule("constant", 0.01, 100).lr(99) == 0.01
    # A time budget ends the curve at the budget, whichever comes first.
    t = LRSchedule("cosine", 0.01, total_steps=10_000, budget_s=60.0)
    assert t.lr(10, seconds=30.0) == pytest.approx(0.005)


def test_resumed_schedule_continues_and_never_raises_the_rate() -> None:
    s = LRSchedule("cosine", 0.01, total_steps=100)
    same = LRSchedule.resumed(s.state_dict(), "cosine", 100, None, step=60, seconds=0.0)
    assert same.lr(60) == s.lr(60) and same.lr(80) == s.lr(80)
    # Twice the epochs after 60 of 100 steps: from the rate of step 59 down to 0 at step 200.
    longer = LRSchedule.resumed(s.state_dict(), "cosine", 200, None, step=60, seconds=0.0)
    assert longer.lr(60) == pytest.approx(s.lr(59))
    assert longer.lr(130) == pytest.approx(s.lr(59) / 2)
    assert longer.lr(200) == pytest.approx(0.0)
    assert max(longer.lr(k) for k in range(60, 201)) <= s.lr(59) + 1e-12


def _train(data: Path, out: Path, *extra: str) -> list[dict[str, str]]:
    """test_training_options' tiny run (width 0.125, 2 epochs unless ``extra`` says) with AdamW."""
    return train_tiny(data, out, "--optimizer", "adam", *extra)


def test_resume_with_more_epochs_keeps_lowering_the_rate(tmp_path: Path) -> None:
    data = make_tiny_dataset(tmp_path / "data")
    rows = _train(data, tmp_path / "run", "--epochs", "2", "--lr", "0.01")
    first = [float(r["lr"]) for r in rows]
    rows = _train(data, tmp_path / "run", "--epochs", "4", "--lr", "0.01", "--resume")
    lrs = [float(r["lr"]) for r in rows]
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4] and lrs[:2] == first
    assert lrs[2] <= lrs[1] and lrs[3] < lrs[2]  # CosineAnnealingLR restarted upwards here


def test_a_killed_pair_of_log_and_checkpoint_is_made_to_agree_on_resume(tmp_path: Path) -> None:
    data = make_tiny_dataset(tmp_path / "data")
    run = tmp_path / "run"
    _train(data, run, "--epochs", "2")
    # A SIGKILL after last.pt (epoch 2) but before the log was rewritten, with a stray repeated row.
    log = (run / "training_log.csv").read_text().splitlines()
    (run / "training_log.csv").write_text("\n".join([log[0], log[1], log[1]]) + "\n")
    rows = _train(data, run, "--epochs", "3", "--resume")
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert load_checkpoint(run / "last.pt")["epoch"] == 3


def test_time_budget_and_patience_stop_training(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = make_tiny_dataset(tmp_path / "data")
    rows = _train(data, tmp_path / "t", "--epochs", "500", "--max-minutes", "0.02")
    assert 1 <= len(rows) < 500 and "budget is spent" in capsys.readouterr().out
    rows = _train(data, tmp_path / "p", "--epochs", "500", "--patience", "2", "--lr", "1e-9")
    best = max(range(len(rows)), key=lambda k: float(rows[k]["val_mIoU"]))
    assert len(rows) < 500 and len(rows) - 1 - best <= 2
    assert "has not improved for 2 epochs" in capsys.readouterr().out


def test_init_keeps_the_encoder_and_remakes_a_classifier_for_other_classes(tmp_path: Path) -> None:
    data = make_tiny_dataset(tmp_path / "data")
    _train(data, tmp_path / "base", "--epochs", "1")
    base = load_checkpoint(tmp_path / "base" / "best.pt")
    # The same tiles with one class more: the classifier cannot be reused.
    other = tmp_path / "other"
    make_tiny_dataset(other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["classes"].append({"name": "extra", "color": "#123456"})
    (other / "manifest.json").write_text(json.dumps(manifest))
    argv = ["--data", str(other), "--out", str(tmp_path / "ft"), "--batch-size", "2", "--validation", "0"]
    argv += ["--epochs", "1", "--lr", "1e-12", "--init", str(tmp_path / "base" / "best.pt")]
    assert run_cli(train.main, argv) == 0
    tuned = load_checkpoint(tmp_path / "ft" / "best.pt")
    assert tuned["width"] == base["width"] == 0.125  # the width came from --init
    w0, w1 = base["state_dict"]["encoder.0.0.0.weight"], tuned["state_dict"]["encoder.0.0.0.weight"]
    assert torch.allclose(w0, w1, atol=1e-6)  # lr 1e-12: the encoder is the base's
    assert tuned["state_dict"]["classifier.weight"].shape[0] == len(base["class_names"]) + 1
    with pytest.raises(SatsegError, match="does not fit a SegNet of width"):
        train.main([*argv[:-2], "--init", str(tmp_path / "base" / "best.pt"), "--width", "0.25"])


# --- losses and augmentation ------------------------------------------------------------------


def test_dice_loss_values() -> None:
    target = torch.tensor([[[0, 1], [1, 255]]])
    perfect = torch.tensor([[[[50.0, -50], [-50, 0]], [[-50.0, 50], [50, 0]]]])
    assert float(soft_dice_loss(perfect, target, 255)) == pytest.approx(0.0, abs=1e-6)
    uniform = torch.zeros(1, 2, 2, 2)
    # p = 0.5 everywhere on the 3 labelled pixels; class 0: (2*0.5+1)/(1.5+1+1) = 0.571, class 1:
    # (2*1+1)/(1.5+2+1) = 0.667; loss 1 - mean = 0.381. The ignored pixel counts nowhere.
    assert float(soft_dice_loss(uniform, target, 255)) == pytest.approx(1 - (2 / 3.5 + 3 / 4.5) / 2, abs=1e-6)
    assert math.isnan(float(soft_dice_loss(uniform, torch.full((1, 2, 2), 255), 255)))
    both = SegmentationLoss("ce+dice", None, 255)(uniform, target)
    assert float(both) == pytest.approx(math.log(2) + 1 - (2 / 3.5 + 3 / 4.5) / 2, abs=1e-6)


def test_lovasz_loss_is_one_minus_iou_for_hard_predictions() -> None:
    target = torch.tensor([[[0, 1], [1, 255]]])
    perfect = torch.tensor([[[[50.0, -50], [-50, 0]], [[-50.0, 50], [50, 0]]]])
    assert float(lovasz_softmax_loss(perfect, target, 255)) == pytest.approx(0.0, abs=1e-6)
    # Top-right pixel called 0: class 0 IoU 1/2 (pixels {00, 01} against {00}), class 1 IoU 1/2.
    one_wrong = torch.tensor([[[[50.0, 50], [-50, 0]], [[-50.0, -50], [50, 0]]]])
    assert float(lovasz_softmax_loss(one_wrong, target, 255)) == pytest.approx(0.5, abs=1e-6)
    # Hard but all wrong on class 1 (every labelled pixel called 0): class 0 IoU 1/3, class 1 IoU 0.
    all_zero = torch.tensor([[[[50.0, 50], [50, 50]], [[-50.0, -50], [-50, -50]]]])
    assert float(lovasz_softmax_loss(all_zero, target, 255)) == pytest.approx((2 / 3 + 1) / 2, abs=1e-6)
    # p = 0.5 everywhere: every error is 0.5, and the weights sum to the Jaccard loss of
    # predicting everything (1 for both classes), so 0.5; the ignored pixel counts nowhere.
    uniform = torch.zeros(1, 2, 2, 2)
    assert float(lovasz_softmax_loss(uniform, target, 255)) == pytest.approx(0.5, abs=1e-6)
    assert math.isnan(float(lovasz_softmax_loss(uniform, torch.full((1, 2, 2), 255), 255)))
    both = SegmentationLoss("ce+lovasz", None, 255)(uniform, target)
    assert float(both) == pytest.approx(math.log(2) + 0.5, abs=1e-6)
    assert float(SegmentationLoss("lovasz", None, 255)(uniform, target)) == pytest.approx(0.5, abs=1e-6)


def test_rescale_keeps_labels_on_their_pixels_and_ignores_the_padding() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.zeros(1, 3, 64, 64)
    y = torch.zeros(1, 64, 64, dtype=torch.long)
    x[..., :32, :] = 1.0  # top half white and labelled 1
    y[:, :32, :] = 1
    xs, ys = rescale(x, y, 2.0, gen)
    assert xs.shape == x.shape and ys.shape == y.shape
    assert torch.equal(ys == 1, xs[:, 0] > 0.5)  # the label moved with its pixels
    xh, yh = rescale(x, y, 0.5, gen)
    assert xh.shape == x.shape and int((yh == 255).sum()) == 64 * 64 - 32 * 32  # padding is ignored
    assert torch.equal(yh[yh != 255] == 1, xh[:, 0][yh != 255] > 0.5)


def test_colour_and_blur_change_images_not_labels() -> None:
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(4, 3, 32, 32)
    y = torch.randint(0, 3, (4, 32, 32))
    xa, ya = augment_batch(x, y, AugmentConfig(color=1.0, blur=1.0), gen)
    assert torch.equal(ya, y) and xa.shape == x.shape
    assert float(xa.min()) >= 0 and float(xa.max()) <= 1 and not torch.allclose(xa, x, atol=0.02)
    # A blur of a constant image is that image; of a step it is smooth but keeps the mean.
    flat = torch.full((1, 1, 16, 16), 0.3)
    assert torch.allclose(blur(flat, 1.0), flat, atol=1e-6)
    step = torch.zeros(1, 1, 16, 16)
    step[..., 8:] = 1
    b = blur(step, 1.0)
    assert 0 < float(b[0, 0, 0, 7]) < 0.5 < float(b[0, 0, 0, 8]) < 1


def test_training_with_the_recipe_runs_and_the_cli_refuses_bad_values(tmp_path: Path) -> None:
    data = make_tiny_dataset(tmp_path / "data")
    rows = _train(data, tmp_path / "r", "--epochs", "1", "--loss", "ce+dice", "--color", "0.8", "--blur", "0.3",
                  "--scale", "0.6,1.6")  # fmt: skip
    assert len(rows) == 1 and math.isfinite(float(rows[0]["loss"]))
    for bad in (["--scale", "2,1"], ["--scale", "x"], ["--blur", "2"], ["--max-minutes", "0"]):
        with pytest.raises(SatsegError):
            train.main(["--data", str(data), "--out", str(tmp_path / "bad"), *bad])


def test_weight_average_values() -> None:
    assert ema_decay(0.995, 0) == pytest.approx(0.1) and ema_decay(0.995, 10_000) == 0.995
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 1, 1), torch.nn.BatchNorm2d(1))
    ema = WeightEMA(net, 0.9)
    start = net[0].weight.detach().clone()
    with torch.no_grad():
        net[0].weight.add_(1.0)
    net[1].num_batches_tracked += 7
    ema.update(net, 1000)  # d = 0.9
    assert torch.allclose(ema.model[0].weight, start + 0.1)
    assert int(ema.model[1].num_batches_tracked) == 7 and not ema.model.training
    with pytest.raises(ValueError):
        WeightEMA(net, 1.0)


def test_ema_run_ships_the_average_and_resumes_the_raw_weights(tmp_path: Path) -> None:
    data = make_tiny_dataset(tmp_path / "data")
    run = tmp_path / "run"
    _train(data, run, "--epochs", "2", "--lr", "0.01", "--ema", "0.9")
    last = load_checkpoint(run / "last.pt")
    assert last["ema"] == 0.9 and set(last["train_state_dict"]) == set(last["state_dict"])
    key = "classifier.weight"
    assert not torch.equal(last["train_state_dict"][key], last["state_dict"][key])
    assert "train_state_dict" not in load_checkpoint(run / "best.pt")
    rows = _train(data, run, "--epochs", "3", "--lr", "0.01", "--ema", "0.9", "--resume")
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    with pytest.raises(SatsegError):
        train.main(["--data", str(data), "--out", str(tmp_path / "bad"), "--ema", "1.5"])


# --- labels -----------------------------------------------------------------------------------

# OSM way 106230775 (farmland near Karhula, Finland) in ../shared/data/osm/test.osm.pbf: its ring
# crosses itself, and burnt as it is the rasteriser's even-odd rule leaves part of it empty.
FARMLAND_WAY = "106230775"


def _farmland(shared_data: Path) -> ogr.Geometry:
    ds = ogr.Open(str(shared_data / "osm" / "test.osm.pbf"))
    layer = ds.GetLayerByName("multipolygons")
    layer.SetAttributeFilter(f"osm_way_id = '{FARMLAND_WAY}'")
    feat = layer.GetNextFeature()
    geom = feat.GetGeometryRef().Clone()
    assert not geom.IsValid()
    return geom


def test_invalid_osm_polygon_is_repaired_before_burning(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    geom = _farmland(shared_data)
    path = tmp_path / "farmland.geojson"
    path.write_text(json.dumps({
        "type": "FeatureCollection",
        "features": [{"type": "Feature", "properties": {"landuse": "farmland"},
                      "geometry": json.loads(geom.ExportToJson())}],
    }))  # fmt: skip
    minx, maxx, miny, maxy = geom.GetEnvelope()
    bbox = f"{minx - 0.001},{miny - 0.001},{maxx + 0.001},{maxy + 0.001}"
    out = tmp_path / "out"
    rc = run_cli(dataset_main, ["build", "--bbox", bbox, "--zoom", "17", "--classes",
                                str(ROOT / "training/classes/mine.json"), "--osm", str(path), "--out", str(out)])  # fmt: skip
    assert rc == 0
    err = capsys.readouterr().err
    # Every class but vegetation matched nothing here, and the builder names each.
    for name in ("residential", "commercial", "industrial", "building", "brownfield"):
        assert f"warning: class {name!r} (filter [" in err, name
    assert "warning: class 'vegetation'" not in err
    pixels = 0
    for label in (out / "labels" / "color").glob("*.png"):
        ds = gdal.Open(str(label))
        pixels += int((ds.GetRasterBand(1).ReadAsArray() == 4).sum())
        ds = None
    to_3857 = osr.CoordinateTransformation(_srs(4326), _srs(3857))
    fixed = repair_area(geom.Clone())
    assert fixed is not None and fixed.IsValid()
    fixed.Transform(to_3857)
    raw = geom.Clone()
    raw.Transform(to_3857)
    expected = fixed.GetArea() / pixel_size(17) ** 2
    # The burnt area is the repaired polygon's (edge pixels give a few %), well above the area of
    # the ring as it is (its shoelace area, 36 % less), which is about what was burnt before.
    assert pixels == pytest.approx(expected, rel=0.04)
    assert raw.GetArea() / pixel_size(17) ** 2 < 0.8 * pixels


def _srs(epsg: int) -> osr.SpatialReference:
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(epsg)
    srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    return srs


def test_repair_keeps_all_of_a_ring_that_wraps_twice() -> None:
    ring = ogr.CreateGeometryFromWkt("POLYGON((0 0,10 0,10 10,0 10,0 2,8 2,8 8,2 8,2 -2,0 -2,0 0))")
    assert not ring.IsValid()
    fixed = repair_area(ring)
    assert fixed is not None and fixed.IsValid() and fixed.GetArea() >= 100
    assert np.isclose(ring.MakeValid().GetArea(), 64)  # the linework repair alone loses the inner square
    assert repair_area(ogr.CreateGeometryFromWkt("POLYGON((0 0,1 1,0 0))")) is None


def test_load_dataset_groups_by_block(tmp_path: Path) -> None:
    data = make_tiny_dataset(tmp_path / "d")
    ds = load_dataset(data)
    assert ds.groups == [xyz_blocks(ds.ids)[i] for i in ds.ids]


@pytest.mark.parametrize("seed", range(6))
def test_split_of_real_oam_tiles_by_block_takes_close_to_the_share(shared_data: Path, seed: int) -> None:
    # The zoom-20 tiles of OpenAerialMap area1 and area2 as a dataset would list them: 2x2 blocks
    # of zoom-19 ground, as make_default_models.sh splits them.
    ids = []
    for area in ("area1", "area2"):
        for path in (shared_data / "oam-osm-buildings" / area).glob("OAM-*-20.png"):
            x, y, z = (int(v) for v in path.stem.split("-")[1:])
            ids.append(f"{z}-{x}-{y}")
    groups = [f"{int(i.split('-')[1]) >> 2}-{int(i.split('-')[2]) >> 2}" for i in ids]
    assert len(ids) == 212 and len(set(groups)) == 19
    train_idx, val_idx = split_indices(groups, 0.2, seed)
    assert abs(len(val_idx) / len(ids) - 0.2) < 0.01
    assert {groups[i] for i in train_idx}.isdisjoint({groups[i] for i in val_idx})


def test_fine_tuning_that_only_hurts_keeps_the_starting_weights(tmp_path: Path) -> None:
    data = make_tiny_dataset(tmp_path / "data")
    _train(data, tmp_path / "base", "--epochs", "3", "--lr", "0.01")
    base = load_checkpoint(tmp_path / "base" / "best.pt")
    # A rate of 50 wrecks the weights in the first step: no epoch beats where they started.
    _train(data, tmp_path / "ft", "--epochs", "1", "--lr", "50", "--init", str(tmp_path / "base" / "best.pt"))
    tuned = load_checkpoint(tmp_path / "ft" / "best.pt")
    assert tuned["epoch"] == 0 and load_checkpoint(tmp_path / "ft" / "last.pt")["epoch"] == 1
    for key, value in base["state_dict"].items():
        assert torch.equal(value, tuned["state_dict"][key]), key


def test_init_layers_encoder_keeps_only_the_encoder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--init-layers encoder: the encoder is the base's, decoder and classifier are a fresh seeded SegNet's."""
    from training.model import SegNet

    data = make_tiny_dataset(tmp_path / "data")
    _train(data, tmp_path / "base", "--epochs", "2", "--lr", "0.01")
    base = load_checkpoint(tmp_path / "base" / "best.pt")
    net = SegNet(3, 0.125)
    msg = train.init_weights(net, tmp_path / "base" / "best.pt", ["background", "red", "green"], "encoder")
    assert "encoder only" in msg
    torch.manual_seed(123)
    fresh = SegNet(3, 0.125).state_dict()
    torch.manual_seed(123)
    net = SegNet(3, 0.125)
    train.init_weights(net, tmp_path / "base" / "best.pt", ["background", "red", "green"], "encoder")
    for key, value in net.state_dict().items():
        expected = base["state_dict"][key] if key.startswith("encoder.") else fresh[key]
        assert torch.equal(value, expected), key
    assert not torch.equal(base["state_dict"]["classifier.weight"], fresh["classifier.weight"])
    # A run with it does not take the starting weights as the checkpoint to beat: they are half a model.
    capsys.readouterr()
    _train(
        data,
        tmp_path / "enc",
        "--epochs",
        "1",
        "--init",
        str(tmp_path / "base" / "best.pt"),
        "--init-layers",
        "encoder",
    )
    out = capsys.readouterr().out
    assert "encoder only" in out and "--init weights: validation" not in out
    assert load_checkpoint(tmp_path / "enc" / "best.pt")["epoch"] == 1


def test_encoder_lr_share_slows_only_the_encoder(tmp_path: Path) -> None:
    """--encoder-lr 0 keeps every encoder weight of the --init model while the new layers learn."""
    data = make_tiny_dataset(tmp_path / "data")
    _train(data, tmp_path / "base", "--epochs", "1", "--lr", "0.01")
    base = load_checkpoint(tmp_path / "base" / "best.pt")["state_dict"]
    init = ("--init", str(tmp_path / "base" / "best.pt"), "--init-layers", "encoder")
    _train(data, tmp_path / "frozen", "--epochs", "2", "--lr", "0.01", "--encoder-lr", "0", *init)
    ckpt = load_checkpoint(tmp_path / "frozen" / "last.pt")
    groups = ckpt["optimizer"]["param_groups"]
    assert [g["lr_share"] for g in groups] == [0.0, 1.0]
    assert groups[0]["lr"] == 0 and groups[1]["lr"] > 0
    from training.model import SegNet

    params = {n for n, _ in SegNet(3, 0.125).named_parameters()}  # BN running statistics still move
    tuned = ckpt["state_dict"]
    encoder = [k for k in params if k.startswith("encoder.")]
    assert encoder and all(torch.equal(tuned[k], base[k]) for k in encoder)
    assert not torch.equal(tuned["classifier.weight"], base["classifier.weight"])
    # A share between 0 and 1 moves the encoder too; resuming with another grouping is one line.
    _train(data, tmp_path / "slow", "--epochs", "1", "--lr", "0.01", "--encoder-lr", "0.1", *init)
    slow = load_checkpoint(tmp_path / "slow" / "best.pt")["state_dict"]
    assert not all(torch.equal(slow[k], base[k]) for k in encoder)
    argv = ["--data", str(data), "--width", "0.125", "--validation", "0.4", "--seed", "1"]
    with pytest.raises(SatsegError, match="resume it with the same --encoder-lr"):
        train.main([*argv, "--out", str(tmp_path / "slow"), "--epochs", "2", "--resume"])
    with pytest.raises(SatsegError, match="--encoder-lr must be between 0 and 1"):
        train.main([*argv, "--out", str(tmp_path / "bad"), "--encoder-lr", "2"])


def test_head_bn_feeds_the_classifier_before_the_relu_and_travels_with_the_weights(tmp_path: Path) -> None:
    from torch import nn

    from satseg_plugin.inference.errors import ModelError
    from training import export
    from training.checkpoint import model_from_checkpoint
    from training.model import SegNet

    relu, bn = SegNet(3, 0.125).eval(), SegNet(3, 0.125, head="bn").eval()
    assert relu.state_dict().keys() == bn.state_dict().keys()  # old weights load into either
    bn.load_state_dict(relu.state_dict())
    feats: dict[str, torch.Tensor] = {}
    for name, net in (("relu", relu), ("bn", bn)):
        net.classifier.register_forward_hook(lambda m, i, o, name=name: feats.__setitem__(name, i[0]))
        with torch.no_grad():
            net(torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0)))
    assert feats["relu"].min() >= 0 and feats["bn"].min() < 0
    assert torch.equal(feats["relu"], feats["bn"].clamp(min=0))  # the ReLU is the only difference
    with pytest.raises(ValueError, match="head must be one of relu, bn"):
        SegNet(3, 0.125, head="gelu")

    data = make_tiny_dataset(tmp_path / "data")
    _train(data, tmp_path / "bn", "--epochs", "1", "--head", "bn")
    ckpt = load_checkpoint(tmp_path / "bn" / "best.pt")
    assert ckpt["head"] == "bn" and isinstance(model_from_checkpoint(ckpt).decoder[-1][-1][2], nn.Identity)
    # The exported graph matches torch (export refuses otherwise), also from 32-px tiles.
    assert run_cli(export.main, [str(tmp_path / "bn" / "best.pt"), "--out", str(tmp_path / "bn.onnx")]) == 0
    assert (tmp_path / "bn.onnx").is_file()
    _train(data, tmp_path / "ft", "--epochs", "1", "--init", str(tmp_path / "bn" / "best.pt"))
    assert load_checkpoint(tmp_path / "ft" / "best.pt")["head"] == "bn"  # --init's head by default
    argv = ["--data", str(data), "--width", "0.125", "--validation", "0.4", "--seed", "1"]
    with pytest.raises(SatsegError, match=r"\(head bn\).*\(head relu\)"):
        train.main([*argv, "--out", str(tmp_path / "bn"), "--epochs", "2", "--resume", "--head", "relu"])
    # Checkpoints from before the option name no head: theirs is the ReLU one.
    del ckpt["head"]
    assert isinstance(model_from_checkpoint(ckpt).decoder[-1][-1][2], nn.ReLU)
    ckpt["head"] = "gelu"
    with pytest.raises(ModelError, match="names head 'gelu'"):
        model_from_checkpoint(ckpt)
