"""``python -m training.learn_area``: the whole "Train on this area" run on real imagery and real OSM labels.

Imagery: the real OpenAerialMap tiles of ``../shared/data/oam-osm-buildings/area1``
served over HTTP on 127.0.0.1; labels: the area's real ``labels.geojson``. The
extent is 4 x 2 zoom-19 tiles; every training here is a width-0.0625 SegNet for
one or two epochs over six tiles (seconds).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import mercantile
import numpy as np
import pytest
import torch
from osgeo import gdal
from tileserver import TileServer, oam_provider

from satseg_plugin.inference.cli import run_cli
from satseg_plugin.inference.imageio import read_image, to_rgb
from training.checkpoint import load_checkpoint, save_checkpoint
from training.data import normalize
from training.learn_area import REPORT_HEADER, heldout_block, main
from training.predictor import load_predictor

gdal.UseExceptions()
ROOT = Path(__file__).resolve().parents[1]
ZOOM = 19
#: zoom-19 tiles x 319292..319295, y 270960..270961 of area1: 8 tiles, all with imagery and buildings.
COLS, ROWS = range(319292, 319296), range(270960, 270962)
_W, _N = mercantile.bounds(COLS[0], ROWS[0], ZOOM)[0], mercantile.bounds(COLS[0], ROWS[0], ZOOM)[3]
_b = mercantile.bounds(COLS[-1], ROWS[-1], ZOOM)
BBOX = f"{_W + 1e-6:.7f},{_b.south + 1e-6:.7f},{_b.east - 1e-6:.7f},{_N - 1e-6:.7f}"
TINY = ["--max-epochs", "1", "--minutes", "2", "--patience", "1"]


@pytest.fixture(scope="module")
def area(shared_data: Path) -> Path:
    return shared_data / "oam-osm-buildings" / "area1"


@pytest.fixture(scope="module")
def server(area: Path):
    with TileServer(oam_provider(area)) as srv:
        yield srv


def cli(server: TileServer, area: Path, out: Path, *extra: str) -> list[str]:
    return [
        *("--bbox", BBOX, "--tiles", server.template, "--osm", str(area / "labels.geojson")),
        *("--out", str(out), *extra),
    ]


def run_subprocess(argv: list[str], **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "QT_QPA_PLATFORM": "offscreen"}
    return subprocess.Popen(
        [sys.executable, "-m", "training.learn_area", *argv],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw,
    )  # fmt: skip


@pytest.fixture(scope="module")
def scratch(server: TileServer, area: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A run from scratch (--base none) as the QGIS task starts it: a subprocess with --progress-json."""
    out = tmp_path_factory.mktemp("scratch")
    proc = run_subprocess(
        cli(
            server, area, out, "--base", "none", "--width", "0.0625", "--progress-json", "--ema", "0.9", *TINY
        )
    )
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    return {"out": out, "stdout": stdout, "stderr": stderr}


def tiles_of(folder: Path) -> list[str]:
    return (folder / "sample-filtered.txt").read_text().split()


def iou_by_hand(model: Path, heldout: Path) -> list[float]:
    """IoU per class of an ONNX model on the held-out PNGs: onnxruntime and numpy, not the package's metrics."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    inter, union = np.zeros(2), np.zeros(2)
    for tid in tiles_of(heldout):
        image, _ = to_rgb(read_image(heldout / "images" / f"{tid}.png"))
        label = read_image(heldout / "labels" / "color" / f"{tid}.png")[..., 0]
        pred = session.run(None, {"image": normalize(image[None])})[0][0].argmax(0)
        keep = label != 255
        for c in range(2):
            t, p = (label == c) & keep, (pred == c) & keep
            inter[c] += (t & p).sum()
            union[c] += (t | p).sum()
    return list(inter / union)


def read_report(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def test_run_leaves_model_report_card_and_dataset(scratch: dict) -> None:
    out: Path = scratch["out"]
    for name in ("model.onnx", "report.csv", "MODEL_CARD.md", "run/best.pt", "run/training_log.csv"):
        assert (out / name).is_file(), name
    assert read_image(out / "dataset" / "preview.png").shape[2] == 3
    assert len(tiles_of(out / "dataset")) == len(COLS) * len(ROWS)
    header, rows = read_report(out / "report.csv")
    assert header == REPORT_HEADER
    assert [r["class"] for r in rows] == ["background", "building", "mean"]
    by_hand = iou_by_hand(out / "model.onnx", out / "heldout")
    for row, expected in zip(rows, by_hand, strict=False):
        assert float(row["new_iou"]) == pytest.approx(expected, abs=1e-6)
        assert row["base_iou"] == "" and row["change"] == ""  # --base none: no before
        assert int(row["pixels"]) > 0
    assert float(rows[2]["new_iou"]) == pytest.approx(sum(by_hand) / 2, abs=1e-6)
    card = (out / "MODEL_CARD.md").read_text()
    assert "held-out" in card and "| building |" in card and "from scratch" in card
    assert f"**In short**: held-out mIoU {100 * float(rows[2]['new_iou']):.1f} %." in card
    finer = len([t for t in tiles_of(out / "train") if t.startswith(f"{ZOOM + 1}-")])
    assert f"{len(tiles_of(out / 'train'))} to train on ({finer} of them at zoom {ZOOM + 1})" in card
    assert (
        "IoU on the held-out block" in scratch["stderr"]
    )  # the table, printed (stderr under --progress-json)


def test_heldout_block_is_the_eastern_columns_and_never_trained_on(scratch: dict) -> None:
    out: Path = scratch["out"]
    train, held = tiles_of(out / "train"), tiles_of(out / "heldout")
    at_zoom = [t for t in train if t.startswith(f"{ZOOM}-")]
    finer = [t for t in train if t.startswith(f"{ZOOM + 1}-")]
    assert set(train).isdisjoint(held) and sorted(at_zoom + held) == sorted(tiles_of(out / "dataset"))
    x = lambda tid: int(tid.split("-")[1])  # noqa: E731
    assert min(map(x, held)) > max(map(x, at_zoom))  # one block, east of everything trained on
    assert {x(t) for t in held} == {COLS[-1]} and len(held) == 2  # 25 %: the nearest whole columns to 20 %
    # The finer tiles: the zoom-20 children of the training columns, none under the held-out block.
    assert sorted(finer) == sorted(t for t in tiles_of(out / "dataset-finer") if x(t) >> 1 != COLS[-1])
    assert len(finer) > len(at_zoom)  # area1 has zoom-20 imagery for most children (17 of 24 here)
    scenes = dict(line.split(",") for line in (out / "train" / "scenes.csv").read_text().split()[1:])
    for t in finer:  # a child validates or trains with its parent's 2 x 2 block
        _, cx, cy = (int(v) for v in t.split("-"))
        assert scenes[t] == f"{ZOOM}-{cx >> 2}-{cy >> 2}"
    ckpt = load_checkpoint(out / "run" / "best.pt")
    assert Path(ckpt["data"]) == (out / "train").resolve()
    assert ckpt["ema"] == 0.9  # --ema reached the training: the average is what was kept
    import h5py

    with h5py.File(out / "train" / "training.hdf5") as f:
        cached = {v.decode() if isinstance(v, bytes) else v for v in f["ids"][()]}
    assert cached == set(train) and cached.isdisjoint(held)


def test_heldout_block_share_and_errors() -> None:
    ids = [f"19-{x}-{y}" for x in range(10) for y in range(3)]
    train, held = heldout_block(ids)
    assert {int(t.split("-")[1]) for t in held} == {8, 9} and len(train) == 24
    with pytest.raises(Exception, match="tile column"):
        heldout_block(["19-5-1", "19-5-2"])


def test_progress_json_lines(scratch: dict) -> None:
    lines = [json.loads(line) for line in scratch["stdout"].splitlines()]  # every stdout line is JSON
    assert lines and all({"phase", "fraction", "message"} <= set(d) for d in lines)
    phases = [d["phase"] for d in lines]
    order = ["dataset", "train", "export", "score", "done"]
    assert [p for i, p in enumerate(phases) if i == 0 or phases[i - 1] != p] == order
    fractions = [d["fraction"] for d in lines]
    assert fractions == sorted(fractions) and fractions[0] == 0 and fractions[-1] == 1
    trained = [d for d in lines if d["phase"] == "train" and d.get("epoch")]
    assert trained and 0 <= trained[-1]["val_iou"] <= 1 and trained[-1]["seconds_left"] >= 0
    done = lines[-1]
    for key in ("model", "report", "card"):
        assert Path(done[key]).is_file(), key
    assert done["model"].endswith(".onnx")


def test_metadata_names_the_area_and_date(scratch: dict) -> None:
    import onnx

    from satseg_plugin.inference.metadata import parse_metadata

    proto = onnx.load(str(scratch["out"] / "model.onnx"), load_external_data=False)
    meta = parse_metadata({e.key: e.value for e in proto.metadata_props})
    assert meta.class_names == ["background", "building"] and meta.zoom == ZOOM
    area = json.loads(meta.extra["training_area"])
    assert area["crs"] == "EPSG:4326" and area["zoom"] == ZOOM
    assert area["bbox"] == pytest.approx([float(v) for v in BBOX.split(",")], abs=1e-9)
    date = json.loads(meta.extra["training_date"])
    assert meta.description and date in meta.description and BBOX.split(",")[0][:8] in meta.description


def test_finetune_with_other_classes_scores_the_base_before(
    scratch: dict, server: TileServer, area: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A base with a third class (never predicted): new classifier, base scored by class name; bbox in EPSG:3857."""
    ckpt = load_checkpoint(scratch["out"] / "run" / "best.pt")
    state = dict(ckpt["state_dict"])
    w, b = state["classifier.weight"], state["classifier.bias"]
    state["classifier.weight"] = torch.cat([w, torch.zeros_like(w[:1])])
    state["classifier.bias"] = torch.cat([b, torch.full_like(b[:1], -100.0)])
    base = tmp_path / "base.pt"
    keys = (
        "width",
        "tile_size",
        "zoom",
        "resolution_cm",
        "mean",
        "std",
    )  # weights only: no optimizer, no data
    save_checkpoint(
        base,
        {
            "state_dict": state, "class_names": ["background", "building", "road"],
            "class_colors": ["#000000", "#e31a1c", "#7f7f7f"], **{k: ckpt[k] for k in keys},
        },
    )  # fmt: skip
    w, s, e, n = (float(v) for v in BBOX.split(","))
    (x0, y0), (x1, y1) = mercantile.xy(w, s), mercantile.xy(e, n)
    out = tmp_path / "tuned"
    argv = ["--bbox", f"{x0},{y0},{x1},{y1}", "--bbox-crs", "EPSG:3857", "--tiles", server.template]
    argv += ["--osm", str(area / "labels.geojson"), "--base", str(base), "--out", str(out), *TINY]
    argv += ["--base-layers", "all", "--no-finer"]
    capsys.readouterr()
    assert run_cli(main, argv) == 0
    captured = capsys.readouterr()
    assert "new classifier" in captured.out + captured.err
    assert f"{base} (fine-tuned from it)" in (out / "MODEL_CARD.md").read_text()  # --base-layers all
    _, rows = read_report(out / "report.csv")
    _, before = read_report(scratch["out"] / "report.csv")
    assert tiles_of(out / "heldout") == tiles_of(scratch["out"] / "heldout")
    for row, old in zip(rows, before, strict=True):
        # The base is the scratch run's best.pt, whose export was scored there on the same block.
        assert float(row["base_iou"]) == pytest.approx(float(old["new_iou"]), abs=1e-4)
        assert float(row["change"]) == pytest.approx(float(row["new_iou"]) - float(row["base_iou"]), abs=1e-5)
    assert "IoU on the held-out block" in captured.out
    assert load_predictor(out / "model.onnx").class_names == ["background", "building"]


def errors_of(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, str]:
    capsys.readouterr()
    rc = run_cli(main, argv)
    return rc, capsys.readouterr().err


@pytest.mark.parametrize(
    "case",
    [
        "no-features",
        "closed-port",
        "no-tiles",
        "token",
        "zoom",
        "onnx-base",
        "bad-base",
        "no-base",
        "raster",
        "ema",
    ],
)
def test_bad_input_one_line_before_long_work(
    case: str,
    scratch: dict,
    server: TileServer,
    area: Path,
    shared_data: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "out"
    base = ["--base", str(scratch["out"] / "run" / "best.pt")]
    argv = cli(server, area, out, *base, *TINY)
    expect = {
        "no-features": "no feature",
        "closed-port": "cannot fetch imagery",
        "no-tiles": "no imagery from",
        "token": "token",
        "zoom": "zoom 19",
        "onnx-base": "torch weights",
        "bad-base": "not a satseg checkpoint",
        "no-base": "--base none",
        "raster": "no imagery over the extent",
        "ema": "--ema in [0, 1)",
    }[case]
    if case == "no-features":  # Kampala's buildings over Zanzibar's extent
        argv[argv.index("--osm") + 1] = str(shared_data / "oam-osm-buildings" / "area2" / "labels.geojson")
    elif case == "closed-port":
        argv[argv.index("--tiles") + 1] = "http://127.0.0.1:9/{z}/{x}/{y}.png"
    elif case == "no-tiles":
        argv[argv.index("--tiles") + 1] = server.url + "/nothing/{z}/{x}/{y}.png"
    elif case == "token":
        with TileServer(oam_provider(area), token="pk.right") as locked:
            argv[argv.index("--tiles") + 1] = locked.template
            rc, err = errors_of(capsys, argv)
    elif case == "zoom":
        argv += ["--zoom", "18"]
    elif case == "ema":
        argv += ["--ema", "1"]
    elif case == "onnx-base":
        lone = tmp_path / "lone.onnx"  # an ONNX model without its .pt beside it
        shutil.copy(ROOT / "models" / "satseg-buildings.onnx", lone)
        argv[argv.index("--base") + 1] = str(lone)
    elif case == "bad-base":
        junk = tmp_path / "junk.pt"
        torch.save({"weights": [1, 2, 3]}, junk)
        argv[argv.index("--base") + 1] = str(junk)
    elif case == "no-base":
        argv[argv.index("--base") + 1] = str(tmp_path / "missing.pt")
    elif case == "raster":  # a real raster far from the extent: one of area2's tiles, georeferenced
        name = next((shared_data / "oam-osm-buildings" / "area2").glob("OAM-*-19.png"))
        x, y = (int(v) for v in name.stem.split("-")[1:3])
        b = mercantile.xy_bounds(x, y, ZOOM)
        raster = tmp_path / "kampala.tif"
        gdal.Translate(
            str(raster), str(name), outputSRS="EPSG:3857", outputBounds=[b.left, b.top, b.right, b.bottom]
        )
        i = argv.index("--tiles")
        argv[i : i + 2] = ["--raster", str(raster)]
    if case != "token":
        rc, err = errors_of(capsys, argv)
    assert rc == 2, err
    lines = [line for line in err.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and expect in lines[0], err
    assert not (out / "run").exists() and not (out / "dataset" / "images").exists()  # no long work began


def test_ctrl_c_keeps_the_dataset_then_export_best_and_resume(
    server: TileServer, area: Path, tmp_path: Path
) -> None:
    out = tmp_path / "interrupted"
    argv = cli(server, area, out, "--base", "none", "--width", "0.0625", "--progress-json")
    proc = run_subprocess([*argv, "--max-epochs", "20", "--minutes", "5", "--patience", "20"])
    assert proc.stdout is not None
    try:
        for line in proc.stdout:  # wait until an epoch is done: best.pt exists
            doc = json.loads(line)
            if doc["phase"] == "train" and doc.get("epoch"):
                break
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, stderr
    assert "--export-best" in stderr and "kept" in stderr
    assert (out / "dataset" / "manifest.json").is_file() and (out / "run" / "last.pt").is_file()
    assert len(list((out / "dataset" / "images").glob("*.png"))) == len(COLS) * len(ROWS)
    assert not (out / "model.onnx").exists()
    assert not list(out.rglob("*.part*")) and not list(out.rglob(".*.tmp"))  # nothing half-written

    assert run_cli(main, ["--out", str(out), "--export-best"]) == 0
    _, rows = read_report(out / "report.csv")
    assert float(rows[1]["new_iou"]) == pytest.approx(
        iou_by_hand(out / "model.onnx", out / "heldout")[1], abs=1e-6
    )

    epochs_before = int(load_checkpoint(out / "run" / "last.pt")["epoch"])
    served = sum(server.requests.values())
    proc = run_subprocess([*argv, "--max-epochs", str(epochs_before + 1), "--minutes", "5"])
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    assert "resuming after epoch" in stderr and "8 already there" in stderr
    assert sum(server.requests.values()) - served <= 9  # only the probe: every image was kept
    assert int(load_checkpoint(out / "run" / "last.pt")["epoch"]) == epochs_before + 1
    done = json.loads(stdout.splitlines()[-1])
    assert done["phase"] == "done" and done["verdict"].startswith("held-out mIoU ")
    assert done["message"] == f"model {done['model']}: {done['verdict']}"


def test_dataset_from_a_raster_matches_the_tiles(area: Path, tmp_path: Path) -> None:
    """build --raster: a GeoTIFF in EPSG:4326 made of the real tiles gives back those tiles, warped."""
    from training.dataset.__main__ import main as dataset_main

    vrts = []
    for x in COLS:
        for y in ROWS:
            b = mercantile.xy_bounds(x, y, ZOOM)
            vrt = str(tmp_path / f"{x}-{y}.vrt")
            gdal.Translate(vrt, str(area / f"OAM-{x}-{y}-{ZOOM}.png"), format="VRT", outputSRS="EPSG:3857",
                           outputBounds=[b.left, b.top, b.right, b.bottom])  # fmt: skip
            vrts.append(vrt)
    mosaic = gdal.BuildVRT(str(tmp_path / "mosaic.vrt"), vrts)
    raster = tmp_path / "area.tif"
    gdal.Warp(str(raster), mosaic, dstSRS="EPSG:4326", format="GTiff", resampleAlg="bilinear")
    mosaic = None
    out = tmp_path / "data"
    argv = ["build", "--bbox", BBOX, "--zoom", str(ZOOM), "--osm", str(area / "labels.geojson")]
    argv += ["--classes", str(ROOT / "training" / "classes" / "buildings.json"), "--raster", str(raster)]
    assert run_cli(dataset_main, [*argv, "--out", str(out), "--quiet"]) == 0
    ids = tiles_of(out)
    assert len(ids) == len(COLS) * len(ROWS)
    assert json.loads((out / "manifest.json").read_text())["source"] == str(raster)
    for tid in ids:
        z, x, y = tid.split("-")
        got = read_image(out / "images" / f"{tid}.png").astype(float)
        want = to_rgb(read_image(area / f"OAM-{x}-{y}-{z}.png"))[0].astype(float)
        inner = (slice(4, -4), slice(4, -4))  # edges: the warp back and forth loses half a pixel
        assert np.abs(got[inner] - want[inner]).mean() < 12, tid
    before = {p.name: p.stat().st_mtime_ns for p in (out / "images").iterdir()}
    time.sleep(0.01)
    assert run_cli(dataset_main, [*argv, "--out", str(out), "--quiet"]) == 0
    assert {p.name: p.stat().st_mtime_ns for p in (out / "images").iterdir()} == before  # resumed: kept


def test_description_metadata_is_optional_and_round_trips() -> None:
    from satseg_plugin.inference.errors import SatsegError
    from satseg_plugin.inference.metadata import ModelMetadata, build_metadata, parse_metadata
    from training.export import parse_meta_option

    old = build_metadata(
        ModelMetadata(class_names=["background", "building"], class_colors=["#000000", "#e31a1c"])
    )
    assert "description" not in old and parse_metadata(old).description is None  # models from before
    props = build_metadata(
        ModelMetadata(
            class_names=["a"], class_colors=["#000000"], description="Zanzibar, 2026", extra={"k": "1"}
        )
    )
    assert json.loads(props["description"]) == "Zanzibar, 2026"  # a JSON string, as Deepness reads values
    meta = parse_metadata(props)
    assert meta.description == "Zanzibar, 2026" and meta.extra == {"k": "1"}
    assert parse_meta_option('training_date="2026-12-01"') == ("training_date", '"2026-12-01"')
    for bad in ("no-equals", "k=not json", "zoom=19", 'description="x"'):
        with pytest.raises(SatsegError):
            parse_meta_option(bad)


def test_imagery_without_the_finer_zoom_trains_on_the_run_zoom_alone(
    area: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A service whose tiles stop at zoom 19: the finer dataset is skipped with a line, not an error."""
    every = oam_provider(area)
    with TileServer(lambda z, x, y: every(z, x, y) if z <= ZOOM else None) as srv:
        out = tmp_path / "z19-only"
        capsys.readouterr()
        argv = cli(srv, area, out, "--base", "none", "--width", "0.0625", *TINY)
        assert run_cli(main, argv) == 0
    err = capsys.readouterr().err
    assert f"no tiles at zoom {ZOOM + 1}" in err and f"training on zoom {ZOOM} alone" in err
    assert tiles_of(out / "train") == [
        t for t in tiles_of(out / "dataset") if t not in tiles_of(out / "heldout")
    ]
    assert json.loads((out / "learn_area.json").read_text())["tiles"]["finer"] == 0


def test_verdict_says_when_the_base_does_better() -> None:
    """The done line's summary: the new mean IoU, and a plain warning when the base scored higher."""
    from training.learn_area import verdict

    def rows(base: str, new: str) -> list[dict[str, str]]:
        return [{"class": "mean", "pixels": "10", "base_iou": base, "new_iou": new, "change": ""}]

    assert verdict(rows("0.55", "0.61")) == "held-out mIoU 61.0 % (base model 55.0 %, +6.0 points)"
    worse = verdict(rows("0.55", "0.50"))
    assert worse.startswith("held-out mIoU 50.0 %, below the base model's 55.0 %: the base does better")
    assert verdict(rows("", "0.5")) == "held-out mIoU 50.0 %"  # from scratch: no base
    assert verdict(rows("", "")) == "no held-out pixel to score"
