"""build --cluster: a real Dask LocalCluster of 2 worker processes, real OAM tiles and OSM buildings.

A cluster build must write exactly the dataset one process writes (label
PNGs byte for byte, the served images, sample lists, skipped.csv, manifest
and preview), keep on a rerun the images already fetched, and survive a
worker killed mid-run. The CLI reaches the test's cluster as a user reaches
a remote one, through its scheduler's tcp:// address.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import ROOT
from osgeo import ogr
from tileserver import TileServer

from satseg_plugin.inference import daskrun
from satseg_plugin.inference.cli import run_cli
from training.dataset.__main__ import main
from training.dataset.cluster import hilbert_index, plan_chunks
from training.dataset.tiles import parse_tile_id

distributed = pytest.importorskip("distributed")

BUILDINGS = ROOT / "training" / "classes" / "buildings.json"
CHUNK = "4"  # 23 labelled tiles: 6 chunks, so both workers have work


@pytest.fixture(scope="module")
def area(shared_data: Path) -> Path:
    return shared_data / "oam-osm-buildings" / "area2"  # Kampala: 206 buildings, 7 OAM tiles at zoom 19


@pytest.fixture(scope="module")
def argv(area: Path) -> list[str]:
    """The build of the buildings' bbox at zoom 19, less --imagery and --out."""
    ds = ogr.Open(str(area / "labels.geojson"))
    w, e, s, n = ds.GetLayer(0).GetExtent()
    ds = None
    return [
        *("build", "--bbox", f"{w},{s},{e},{n}", "--zoom", "19", "--classes", str(BUILDINGS)),
        *("--osm", str(area / "labels.geojson"), "--quiet"),
    ]


@pytest.fixture(scope="module")
def scheduler() -> Iterator[tuple[object, str]]:
    cluster = distributed.LocalCluster(
        n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None, host="127.0.0.1"
    )
    client = distributed.Client(cluster)
    yield client, cluster.scheduler_address
    client.close()
    cluster.close()


@pytest.fixture
def tiles(area2_server: TileServer) -> Iterator[TileServer]:
    """conftest's area2 server (every build names the same source), request counts cleared."""
    area2_server.requests.clear()
    yield area2_server
    area2_server.delay = 0.0


@pytest.fixture(scope="module")
def single(argv: list[str], area2_server: TileServer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The reference: the same build in one process."""
    out = tmp_path_factory.mktemp("single")
    assert run_cli(main, [*argv, "--imagery", area2_server.template, "--out", str(out)]) == 0
    return out


def manifest_of(out: Path) -> dict:
    manifest = json.loads((out / "manifest.json").read_text())
    manifest.pop("updated")
    return manifest


def files_of(out: Path) -> dict[str, bytes]:
    """Every file of a dataset but the manifest (its time stamp differs), by relative path."""
    return {
        str(p.relative_to(out)): p.read_bytes()
        for p in sorted(out.rglob("*"))
        if p.is_file() and p.name != "manifest.json"
    }


def assert_same_dataset(out: Path, single: Path) -> None:
    files, ref = files_of(out), files_of(single)
    assert sorted(files) == sorted(ref)  # no file more (no .part leftovers), none less
    for name in ref:
        assert files[name] == ref[name], name
    assert manifest_of(out) == manifest_of(single)


@pytest.mark.parametrize("read", ["worker", "chunk"])
def test_cluster_build_equals_one_process(
    scheduler: tuple, argv: list[str], single: Path, tiles: TileServer, tmp_path: Path, read: str
) -> None:
    _client, address = scheduler
    cmd = [*argv, "--imagery", tiles.template, "--out", str(tmp_path), "--cluster", address]
    assert run_cli(main, [*cmd, "--chunk-tiles", CHUNK, "--osm-read", read]) == 0
    assert_same_dataset(tmp_path, single)
    manifest = manifest_of(tmp_path)
    filtered = (tmp_path / "sample-filtered.txt").read_text().split()
    assert manifest["counts"]["sampled"] == 23 and manifest["counts"]["images_fetched"] == 7
    assert manifest["pixels_per_class"]["building"] > 0
    # Each labelled tile was asked once, by whichever worker had its chunk.
    assert tiles.requests == Counter((19, x, y) for x, y, _ in map(parse_tile_id, filtered))


def test_rerun_fetches_only_what_is_missing(
    scheduler: tuple, argv: list[str], single: Path, tiles: TileServer, tmp_path: Path
) -> None:
    _client, address = scheduler
    cmd = [*argv, "--imagery", tiles.template, "--out", str(tmp_path), "--cluster", address]
    cmd += ["--chunk-tiles", CHUNK]
    assert run_cli(main, cmd) == 0
    images = sorted((tmp_path / "images").glob("*.png"))
    assert len(images) == 7
    # An interrupted run: two images never came, one was cut short on disk.
    images[0].unlink()
    images[3].unlink()
    images[5].write_bytes(images[5].read_bytes()[:3000])
    missing = [images[0], images[3], images[5]]
    absent = [i["id"] for i in manifest_of(single)["skipped"]]  # not on the server: asked again
    tiles.requests.clear()
    assert run_cli(main, cmd) == 0
    expected = Counter((19, *parse_tile_id(p.stem)[:2]) for p in missing)
    expected.update((19, *parse_tile_id(i)[:2]) for i in absent)
    assert tiles.requests == expected
    counts = manifest_of(tmp_path)["counts"]
    assert (counts["images_kept"], counts["images_fetched"], counts["images_damaged"]) == (4, 3, 1)
    assert files_of(tmp_path) == files_of(single)
    # Imagery only (no --osm), on the cluster: everything is there, only the 404s are asked again.
    tiles.requests.clear()
    only = [
        *("build", "--imagery", tiles.template, "--out", str(tmp_path), "--quiet"),
        *("--cluster", address, "--chunk-tiles", CHUNK),
    ]
    assert run_cli(main, only) == 0
    assert tiles.requests == Counter((19, *parse_tile_id(i)[:2]) for i in absent)
    assert manifest_of(tmp_path)["counts"]["images_kept"] == 7


def test_worker_killed_mid_run_still_gives_the_whole_dataset(
    scheduler: tuple, argv: list[str], single: Path, tiles: TileServer, tmp_path: Path
) -> None:
    client, address = scheduler
    killed: list[int] = []
    stop = threading.Event()

    def killer() -> None:  # SIGKILL the first worker seen busy with a chunk: no goodbye
        while not stop.is_set() and not killed:
            busy = [addr for addr, keys in client.processing().items() if keys]
            if busy:
                pid = client.run(os.getpid)[busy[0]]
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            time.sleep(0.02)

    tiles.delay = 0.15  # chunks slow enough to be caught running
    cmd = [*argv, "--imagery", tiles.template, "--out", str(tmp_path), "--cluster", address]
    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    try:
        assert run_cli(main, [*cmd, "--chunk-tiles", CHUNK]) == 0
    finally:
        stop.set()
        thread.join(10)
    assert killed, "no worker was busy to be killed"
    assert_same_dataset(tmp_path, single)
    client.wait_for_workers(2, timeout=60)  # the nanny brought a fresh worker up
    assert killed[0] not in client.run(os.getpid).values()


def test_bad_cluster_values_are_one_line_errors(
    argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def error(*extra: str) -> str:
        capsys.readouterr()
        assert run_cli(main, [*argv, "--out", str(tmp_path / "d"), *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert "Traceback" not in err
        return err.splitlines()[-1]

    assert error("--cluster", "local:0") == "error: a local cluster needs at least 1 worker, not 0"
    assert error("--cluster", "10.0.0.5:8786") == (
        "error: --cluster takes local, local:N or a scheduler address tcp://HOST:PORT, not '10.0.0.5:8786'"
    )
    assert error("--cluster", "local:2", "--raster", str(tmp_path / "x.tif")) == (
        "error: --raster runs in a single process only: leave out --cluster"
    )
    monkeypatch.setattr(daskrun, "CONNECT_TIMEOUT", "1s")  # no scheduler listens on port 1
    assert error("--cluster", "tcp://127.0.0.1:1").startswith(
        "error: no Dask scheduler answers at tcp://127.0.0.1:1: "
    )
    assert not (tmp_path / "d" / "sample.txt").exists()  # it failed before reading the OSM file


def test_chunks_are_compact_runs_of_the_sample() -> None:
    # The Hilbert curve over 4 x 4 cells visits each once, each step to a neighbour.
    order = sorted(((x, y) for x in range(4) for y in range(4)), key=lambda c: hilbert_index(4, *c))
    assert len({hilbert_index(4, x, y) for x, y in order}) == 16
    assert all(abs(a[0] - b[0]) + abs(a[1] - b[1]) == 1 for a, b in itertools.pairwise(order))
    tiles = [(x, y, 19) for x in range(100, 108) for y in range(50, 58)]
    chunks = plan_chunks(tiles, 16)
    assert sorted(i for c in chunks for i in c) == list(range(64)) and all(len(c) == 16 for c in chunks)
    for c in chunks:  # 16 tiles of an 8 x 8 block along the curve: a 4 x 4 square
        xs, ys = {tiles[i][0] for i in c}, {tiles[i][1] for i in c}
        assert len(xs) == 4 and len(ys) == 4
        assert c == sorted(c)  # in sample order


def test_help_and_no_dask_without_cluster(argv: list[str], tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "training.dataset", "build", "--help"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "250"},
    )  # fmt: skip
    text = " ".join(done.stdout.split())
    for words in (
        "--cluster [local[:N] | tcp://HOST:PORT] burn the labels and fetch the imagery chunk by chunk on Dask",
        "sampled tiles per chunk, one Dask task each (default: 256)",
        "--osm-read {worker,chunk}",
        "With --cluster the labels are burned and the imagery fetched chunk by chunk",
    ):
        assert words in text, words
    # The single-process build never imports Dask.
    probe = (
        "import sys; from training.dataset.__main__ import main; main(sys.argv[1:]);"
        "assert 'distributed' not in sys.modules and 'dask' not in sys.modules, 'dask imported'"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe, *argv, "--out", str(tmp_path), "--preview-tiles", "0"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
