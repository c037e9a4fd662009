"""``build --imagery``: real downloads from a loopback tile server, with real faults.

Every test serves the real OpenAerialMap tiles of ``../shared/data/oam-osm-buildings/area1``
over HTTP on 127.0.0.1 (tests/tileserver.py) for a dataset whose labels were built
from the area's real ``labels.geojson``.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from tileserver import TileServer, oam_provider

from satseg_plugin.inference.cli import run_cli
from satseg_plugin.inference.imageio import read_image, to_rgb
from training.dataset.__main__ import main
from training.dataset.tiles import parse_tile_id

ROOT = Path(__file__).resolve().parents[1]
BUILDINGS = ROOT / "training" / "classes" / "buildings.json"
ZOOM = 20
TOKEN = "pk.secret-token-0123456789"


@pytest.fixture(scope="module")
def area(shared_data: Path) -> Path:
    return shared_data / "oam-osm-buildings" / "area1"


@pytest.fixture(scope="module")
def labelled(area: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A labels-only dataset (no --imagery) of area1 at zoom 20."""
    out = tmp_path_factory.mktemp("labelled")
    argv = ["build", "--bbox", "39.2407374,-6.0676402,39.2459659,-6.042157", "--zoom", str(ZOOM)]
    argv += ["--classes", str(BUILDINGS), "--osm", str(area / "labels.geojson"), "--out", str(out), "--quiet"]
    assert run_cli(main, argv) == 0
    assert not (out / "images").exists()
    return out


def served_ids(area: Path, ids: list[str]) -> list[str]:
    """The ids of ``ids`` whose imagery the area has (labels reach beyond the imagery)."""
    return [t for t in ids if (area / "OAM-{1}-{2}-{0}.png".format(*t.split("-"))).is_file()]


@pytest.fixture
def full(labelled: Path, tmp_path: Path) -> Path:
    """A fresh copy of the labels-only dataset, to fetch imagery into."""
    return Path(shutil.copytree(labelled, tmp_path / "full"))


@pytest.fixture
def data(labelled: Path, area: Path, tmp_path: Path) -> Path:
    """As ``full``, with sample-filtered.txt cut to the tiles the server has, so every failure is one we cause."""
    out = Path(shutil.copytree(labelled, tmp_path / "data"))
    ids = served_ids(area, ids_of(out))
    (out / "sample-filtered.txt").write_text("".join(f"{t}\n" for t in ids))
    return out


def fetch(capsys: pytest.CaptureFixture[str], data: Path, url: str, *extra: str) -> tuple[int, str]:
    """``build --out DATA --imagery URL``: the imagery of an existing dataset; (status, stderr)."""
    capsys.readouterr()
    rc = run_cli(main, ["build", "--out", str(data), "--imagery", url, *extra])
    return rc, capsys.readouterr().err


def ids_of(data: Path) -> list[str]:
    return (data / "sample-filtered.txt").read_text().split()


def served(area: Path, tid: str) -> np.ndarray:
    x, y, z = parse_tile_id(tid)
    return to_rgb(read_image(area / f"OAM-{x}-{y}-{z}.png"))[0]


def all_text(folder: Path) -> str:
    """Every file under ``folder`` as text (binary bytes decoded leniently): where a token could leak."""
    return "".join(p.read_bytes().decode("latin-1") for p in folder.rglob("*") if p.is_file())


def skipped_rows(data: Path) -> dict[str, str]:
    rows = list(csv.reader(io.StringIO((data / "skipped.csv").read_text())))
    assert rows[0] == ["id", "reason"]
    return dict(rows[1:])


def test_labels_only_dataset_has_no_imagery_fields(labelled: Path) -> None:
    manifest = json.loads((labelled / "manifest.json").read_text())
    assert manifest["source"] is None and manifest["skipped"] == []
    assert "images" not in manifest["counts"]
    assert len(ids_of(labelled)) > 100


def test_fetch_imagery_of_existing_labels_with_progress(
    full: Path, area: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with TileServer(oam_provider(area)) as server:
        url = server.template
        rc, err = fetch(capsys, full, url, "--preview-tiles", "4")
    assert rc == 0, err
    ids = ids_of(full)
    have = served_ids(area, ids)
    assert 50 < len(have) < len(ids)
    # Every tile the server has is fetched, its pixels those of the served tile.
    assert sorted(p.stem for p in (full / "images").glob("*.png")) == sorted(have)
    for tid in have[:: max(1, len(have) // 10)]:
        assert np.array_equal(read_image(full / "images" / f"{tid}.png"), served(area, tid))
    # The labelled tiles beyond the imagery are skipped and listed as 404, in skipped.csv and the manifest.
    assert skipped_rows(full) == {t: "not found (HTTP 404)" for t in ids if t not in have}
    manifest = json.loads((full / "manifest.json").read_text())
    assert manifest["source"] == url
    assert manifest["counts"]["images"] == manifest["counts"]["images_fetched"] == len(have)
    assert manifest["counts"]["images_skipped"] == len(ids) - len(have) == len(manifest["skipped"])
    # Not a terminal: the progress bar prints lines of the form "imagery [###...] n/total".
    bars = [line for line in err.splitlines() if line.startswith("imagery [")]
    assert bars and bars[-1].split()[2] == f"{len(ids)}/{len(ids)}", err
    assert f"imagery: {len(have)} fetched, 0 already there, {len(ids) - len(have)} skipped" in err


def test_preview_overlays_labels_in_class_colours(
    data: Path, area: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with TileServer(oam_provider(area)) as server:
        rc, err = fetch(capsys, data, server.template, "--preview-tiles", "6", "--quiet")
    assert rc == 0, err
    sheet = read_image(data / "preview.png")
    # 6 tiles in 4 columns: 2 rows of 256 px cells with 4 px gaps.
    assert sheet.shape == (2 * 256 + 3 * 4, 4 * 256 + 5 * 4, 3)
    first = ids_of(data)[0]
    cell = sheet[4 : 4 + 256, 4 : 4 + 256].astype(int)
    image = read_image(data / "images" / f"{first}.png").astype(int)
    labels = read_image(data / "labels" / "color" / f"{first}.png")[..., 0]
    assert labels.any() and not labels.all()
    # Background shows the imagery unchanged; building pixels are tinted towards #e31a1c.
    assert np.array_equal(cell[labels == 0], image[labels == 0])
    inside = labels == 1
    red = np.array([0xE3, 0x1A, 0x1C])
    assert (np.abs(cell[inside] - red).sum(axis=1) <= np.abs(image[inside] - red).sum(axis=1)).all()
    assert (cell[inside] != image[inside]).any(axis=1).mean() > 0.9


def test_token_is_sent_but_never_shown_or_stored(
    data: Path, area: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MapboxAccessToken", TOKEN)
    with TileServer(oam_provider(area), token=TOKEN) as server:
        server.faults[(ZOOM, *parse_tile_id(ids_of(data)[0])[:2])] = 404  # a skipped tile's reason is stored
        url = server.template
        rc, err = fetch(capsys, data, url)
    assert rc == 0, err
    assert len(list((data / "images").glob("*.png"))) == len(ids_of(data)) - 1
    assert TOKEN not in err and TOKEN not in all_text(data)
    assert json.loads((data / "manifest.json").read_text())["source"] == url


def test_token_written_into_the_url_is_removed_from_the_manifest(
    data: Path, area: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MapboxAccessToken", raising=False)
    with TileServer(oam_provider(area), token=TOKEN) as server:
        url = server.template
        rc, err = fetch(capsys, data, f"{url}?access_token={TOKEN}")
    assert rc == 0, err
    assert TOKEN not in err and TOKEN not in all_text(data)
    assert json.loads((data / "manifest.json").read_text())["source"] == url


@pytest.mark.parametrize(
    ("env", "words"),
    [
        (None, "needs an access token (HTTP 401): set the environment variable MapboxAccessToken"),
        (
            "pk.wrong-token-987",
            "refused the access token (HTTP 401): check the token in the environment variable "
            "MapboxAccessToken (is it valid and allowed for this service?)",
        ),
    ],
)
def test_401_stops_at_once_with_a_word_about_the_token(
    data: Path,
    area: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    env: str | None,
    words: str,
) -> None:
    if env is None:
        monkeypatch.delenv("MapboxAccessToken", raising=False)
    else:
        monkeypatch.setenv("MapboxAccessToken", env)
    with TileServer(oam_provider(area), token=TOKEN) as server:
        rc, err = fetch(capsys, data, server.template)
        asked = sum(server.requests.values())
    assert rc == 2 and err.strip().splitlines()[-1] == f"error: the imagery service {words}", err
    assert env is None or env not in err
    # Stopped at once: a few requests in flight, not one per tile; nothing was stored.
    assert asked < len(ids_of(data)) / 3, asked
    assert not list((data / "images").glob("*"))


def test_403_on_one_tile_stops_the_run(data: Path, area: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ids = ids_of(data)
    with TileServer(oam_provider(area)) as server:
        server.faults[(ZOOM, *parse_tile_id(ids[0])[:2])] = 403
        rc, err = fetch(capsys, data, server.template, "--workers", "1")
    assert rc == 2 and "error: the imagery service needs an access token (HTTP 403)" in err, err
    assert len(list((data / "images").glob("*.png"))) < len(ids) / 3


def test_404_undecodable_and_failing_tiles_are_skipped_and_listed(
    data: Path, area: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ids = ids_of(data)
    missing, corrupt, failing, slow = ids[1], ids[5], ids[9], ids[13]
    with TileServer(oam_provider(area)) as server:
        for tid, fault in ((missing, 404), (corrupt, "corrupt"), (failing, 503), (slow, 3.0)):
            server.faults[(ZOOM, *parse_tile_id(tid)[:2])] = fault
        rc, err = fetch(capsys, data, server.template, "--retries", "1", "--timeout", "0.5", "--quiet")
        tries = server.requests[(ZOOM, *parse_tile_id(failing)[:2])]
    assert rc == 0, err
    rows = skipped_rows(data)
    # A server slower than --timeout: the request times out, is retried, then the tile is listed.
    reason = rows.pop(slow)
    assert reason.startswith("ReadTimeout: ") and reason.endswith("(read timeout=0.5) (after 2 tries)"), (
        reason
    )
    assert rows == {
        missing: "not found (HTTP 404)",
        corrupt: "not a readable image (33 bytes) (after 2 tries)",  # a damaged body is asked for again
        failing: "HTTP 503 (after 2 tries)",
    }
    assert tries == 2  # one retry after the 503
    images = {p.stem for p in (data / "images").glob("*.png")}
    assert images == set(ids) - {missing, corrupt, failing, slow}
    manifest = json.loads((data / "manifest.json").read_text())
    assert {s["id"] for s in manifest["skipped"]} == {missing, corrupt, failing, slow}
    assert manifest["counts"]["images_skipped"] == 4
    # The next run asks again for what is missing, and only for that.
    with TileServer(oam_provider(area)) as server:
        rc, err = fetch(capsys, data, server.template, "--quiet")
        asked = dict(server.requests)
    assert rc == 0, err
    assert sorted(f"{z}-{x}-{y}" for z, x, y in asked) == sorted([missing, corrupt, failing, slow])
    assert skipped_rows(data) == {}


def test_subdomains_fill_s(data: Path, area: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """{s} takes the --subdomains in turn: here two servers' ports, so each server sees its share."""
    with TileServer(oam_provider(area)) as even, TileServer(oam_provider(area)) as odd:
        ports = f"{even.url.rsplit(':', 1)[1]},{odd.url.rsplit(':', 1)[1]}"
        url = "http://127.0.0.1:{s}/{z}/{x}/{y}.png"
        rc, err = fetch(capsys, data, url, "--subdomains", ports, "--quiet")
    assert rc == 0, err
    assert even.requests and odd.requests
    assert all((x + y) % 2 == 0 for _z, x, y in even.requests)
    assert all((x + y) % 2 == 1 for _z, x, y in odd.requests)
    assert len(even.requests) + len(odd.requests) == len(ids_of(data))
    assert json.loads((data / "manifest.json").read_text())["source"] == url


def test_tms_rows_with_minus_y(data: Path, area: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A TMS server numbers rows from the south; {-y} asks for the right tile."""
    oam = oam_provider(area)
    with TileServer(lambda z, x, y: oam(z, x, (1 << z) - 1 - y)) as server:
        rc, err = fetch(capsys, data, server.url + "/{z}/{x}/{-y}.png", "--quiet")
    assert rc == 0, err
    ids = ids_of(data)
    assert len(list((data / "images").glob("*.png"))) == len(ids)
    for tid in ids[:: max(1, len(ids) // 10)]:
        assert np.array_equal(read_image(data / "images" / f"{tid}.png"), served(area, tid))


def test_tilejson_url_with_token(
    data: Path, area: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SATSEG_TEST_TOKEN", TOKEN)
    with TileServer(oam_provider(area), token=TOKEN) as server:
        url = server.template
        rc, err = fetch(
            capsys, data, server.url + "/tiles.json", "--token-env", "SATSEG_TEST_TOKEN", "--quiet"
        )
    assert rc == 0, err
    assert len(list((data / "images").glob("*.png"))) == len(ids_of(data))
    assert json.loads((data / "manifest.json").read_text())["source"] == url
    assert TOKEN not in all_text(data)


@pytest.mark.parametrize(
    ("path", "words"),
    [
        ("/nothing.json", "the TileJSON document http://127.0.0.1:PORT/nothing.json answered HTTP 404"),
        ("/0/0/0.png", "is neither an XYZ template (no {z}/{x}/{y}) nor a TileJSON document"),
    ],
)
def test_bad_tilejson_is_explained(
    data: Path, area: Path, capsys: pytest.CaptureFixture[str], path: str, words: str
) -> None:
    tile = (area / "OAM-1277168-1083840-21.png").read_bytes()
    with TileServer(lambda z, x, y: tile) as server:
        rc, err = fetch(capsys, data, server.url + path)
        words = words.replace("http://127.0.0.1:PORT", server.url)
    assert rc == 2 and err.startswith("error: ") and words in err, err


def test_no_server_is_explained(data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with TileServer(lambda z, x, y: None) as server:
        url = server.template
    # The server is gone: every tile fails to connect; the run says so instead of an empty success.
    rc, err = fetch(capsys, data, url, "--retries", "0", "--timeout", "2")
    assert rc == 2 and f"error: no tile could be fetched from {url}: ConnectionError" in err, err


def test_interrupted_download_leaves_nothing_half_written_and_resumes(
    data: Path, area: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Ctrl-C (a real SIGINT) in the middle of a real download; the next run fetches only what is missing."""
    ids = ids_of(data)
    images = data / "images"
    with TileServer(oam_provider(area), delay=0.05) as server:
        cmd = [sys.executable, "-m", "training.dataset", "build", "--out", str(data)]
        cmd += ["--imagery", server.template, "--workers", "2", "--quiet"]
        proc = subprocess.Popen(cmd, cwd=ROOT, stderr=subprocess.PIPE, text=True)
        try:
            # Wait (not a timing assertion) until part of the imagery is on disk.
            for _ in range(600):
                if images.is_dir() and len(list(images.glob("*.png"))) >= 10:
                    break
                time.sleep(0.05)
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
        first = dict(server.requests)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    kept = sorted(p.stem for p in images.glob("*.png"))
    assert 10 <= len(kept) < len(ids)
    # Nothing half-written: no temporary files, every image whole.
    assert [p.name for p in data.rglob("*") if ".part" in p.name] == []
    for tid in kept:
        assert np.array_equal(read_image(images / f"{tid}.png"), served(area, tid))
    with TileServer(oam_provider(area)) as server:
        rc, err = fetch(capsys, data, server.template, "--quiet")
        second = dict(server.requests)
    assert rc == 0, err
    assert sorted(p.stem for p in images.glob("*.png")) == sorted(ids)
    # Tiles already on disk are not asked for again.
    assert not set(second) & {(ZOOM, *parse_tile_id(t)[:2]) for t in kept}
    assert len(second) == len(ids) - len(kept)
    assert set(first) | set(second) >= {(ZOOM, *parse_tile_id(t)[:2]) for t in ids}
    counts = json.loads((data / "manifest.json").read_text())["counts"]
    assert counts["images_kept"] == len(kept) and counts["images_fetched"] == len(ids) - len(kept)


def test_interrupted_label_build_leaves_no_partial_files(area: Path, tmp_path: Path) -> None:
    """SIGINT while labels are written (about 1300 tiles at zoom 22): every label file on disk is whole."""
    out = tmp_path / "d"
    cmd = [sys.executable, "-m", "training.dataset", "build", "--out", str(out), "--zoom", "22"]
    cmd += ["--bbox", "39.2407374,-6.0676402,39.2459659,-6.042157", "--classes", str(BUILDINGS)]
    cmd += ["--osm", str(area / "labels.geojson"), "--quiet"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, cwd=ROOT, stderr=subprocess.PIPE, text=True, env=env)
    labels = out / "labels" / "color"
    try:
        for _ in range(1200):
            if labels.is_dir() and len(list(labels.glob("*.png"))) >= 5:
                break
            time.sleep(0.01)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert [p.name for p in out.rglob("*") if ".part" in p.name] == []
    for p in labels.glob("*.png"):
        assert read_image(p).shape == (256, 256, 3)
