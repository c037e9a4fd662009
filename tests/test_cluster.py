"""segment --cluster: a real Dask LocalCluster of 2 worker processes, real tiles over loopback HTTP.

The blocks of a cluster run must mosaic into exactly what one process makes
(the blur model makes every window's border differ from its inside, so a
block that lacked a neighbour's window would show a seam), survive a worker
killed mid-run, and, rerun after an interruption, fetch only what the missing
blocks need.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import mercantile
import numpy as np
import pytest
from conftest import ROOT
from inference_helpers import NAMES, heatmap_probabilities, make_rgb_model, pattern_provider
from osgeo import gdal
from tileserver import TileServer

from satseg_plugin.inference.blocks import MARKER_NAME
from satseg_plugin.inference.cluster import (
    FAILED_BLOCKS_NAME,
    ClusterError,
    parse_cluster,
    plan_jobs,
    run_segment_cluster,
)
from satseg_plugin.inference.errors import Cancelled
from satseg_plugin.inference.segment import SegmentRequest, SegmentResult, run_segment
from satseg_plugin.inference.tileplan import HALF_WORLD, xyz_resolution, xyz_tiles_for

distributed = pytest.importorskip("distributed")

Z = 18
T0 = mercantile.tile(10.0, 45.0, Z)
RES = xyz_resolution(Z)
BLOCK = 256  # blocks of one tile's size: a small extent makes several, each of a few windows


def tile_rect(x0: float, y0: float, x1: float, y1: float) -> tuple[float, float, float, float]:
    return (
        -HALF_WORLD + x0 * 256 * RES,
        HALF_WORLD - y1 * 256 * RES,
        -HALF_WORLD + x1 * 256 * RES,
        HALF_WORLD - y0 * 256 * RES,
    )


#: 616 x 385 pixels off the tile grid: 3 x 2 blocks, the last ones partial.
BBOX = tile_rect(T0.x + 0.3, T0.y + 0.4, T0.x + 2.7, T0.y + 1.9)


@pytest.fixture(scope="module")
def client() -> Iterator[object]:
    cluster = distributed.LocalCluster(
        n_workers=2,
        processes=True,
        threads_per_worker=1,
        dashboard_address=None,
        host="127.0.0.1",
    )
    c = distributed.Client(cluster)
    yield c
    c.close()
    cluster.close()


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_rgb_model(tmp_path_factory.mktemp("m") / "blur.onnx", overlap=25, blur=True)


@pytest.fixture(scope="module")
def server() -> Iterator[TileServer]:
    with TileServer(pattern_provider) as s:
        yield s


def request(model: Path, url: str, out: Path, bbox: tuple = BBOX, **kw: object) -> SegmentRequest:
    return SegmentRequest(model=model, bbox=bbox, bbox_crs="EPSG:3857", tiles_url=url, out_dir=out, **kw)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def single(model: Path, server: TileServer, tmp_path_factory: pytest.TempPathFactory) -> SegmentResult:
    """The reference: one process, same model, extent and overlap."""
    return run_segment(request(model, server.template, tmp_path_factory.mktemp("single")))


def array(path: str | Path) -> np.ndarray:
    ds = gdal.Open(str(path))
    out = ds.ReadAsArray()
    ds = None
    return out


def assert_same_as_single(result: object, single: SegmentResult) -> None:
    np.testing.assert_array_equal(array(result.classes_path), array(single.classes_path))
    for name in NAMES:
        np.testing.assert_array_equal(array(result.heatmap_paths[name]), array(single.heatmap_paths[name]))
        heatmap_probabilities(result.heatmap_paths[name])  # the mosaic reads as 0..1, like the blocks
    assert result.counts == single.counts  # pixels and ground areas, to the last bit
    assert Path(result.counts_csv).read_text() == Path(single.counts_csv).read_text()


def no_partial_files(folder: Path) -> bool:
    return not [p for p in folder.rglob("*") if ".part." in p.name]


def test_cluster_mosaic_equals_one_process(
    client: object, model: Path, server: TileServer, single: SegmentResult, tmp_path: Path
) -> None:
    result = run_segment_cluster(
        request(model, server.template, tmp_path), client, block_size=BLOCK, cog=True
    )
    assert result.blocks_total == 6 and not result.blocks_failed and result.blocks_skipped == 0
    assert_same_as_single(result, single)
    assert len(np.unique(array(result.classes_path))) == 4  # every class occurs
    # The mosaic is a VRT over the blocks' own GeoTIFFs, styled like classes.tif.
    ds = gdal.Open(result.classes_path)
    assert ds.GetDriver().ShortName == "VRT"
    band = ds.GetRasterBand(1)
    assert band.GetNoDataValue() == 255 and band.GetRasterCategoryNames()[:4] == NAMES
    assert band.GetColorTable().GetColorEntry(1)[:3] == (255, 0, 0)
    assert ds.GetGeoTransform() == gdal.Open(single.classes_path).GetGeoTransform()
    ds = None
    blocks = sorted((tmp_path / "blocks").iterdir())
    assert len(blocks) == 6 and all((b / MARKER_NAME).is_file() for b in blocks)
    assert gdal.Open(str(blocks[0] / "classes.tif")).RasterXSize == BLOCK  # the core only
    # And one Cloud-Optimised GeoTIFF on request, the same pixels.
    cog = gdal.Open(result.cog_path)
    assert cog.GetMetadata("IMAGE_STRUCTURE").get("LAYOUT") == "COG"
    np.testing.assert_array_equal(cog.ReadAsArray(), array(single.classes_path))
    cog = None
    assert no_partial_files(tmp_path)


def test_worker_killed_mid_run_still_completes(
    client: object, model: Path, single: SegmentResult, tmp_path: Path
) -> None:
    killed: list[int] = []

    def on_block(_result: object, done: int, total: int) -> None:
        if killed or done >= total:
            return
        busy = [addr for addr, keys in client.processing().items() if keys]
        pids = client.run(os.getpid)
        for addr in busy:
            os.kill(pids[addr], signal.SIGKILL)  # no goodbye: the scheduler finds out on its own
            killed.append(pids[addr])
            break

    with TileServer(pattern_provider, delay=0.03) as s:  # blocks slow enough to be caught running
        result = run_segment_cluster(
            request(model, s.template, tmp_path), client, block_size=BLOCK, on_block=on_block
        )
    assert killed, "no worker was busy to be killed"
    assert not result.blocks_failed and result.blocks_total == 6
    assert_same_as_single(result, single)
    assert no_partial_files(tmp_path)
    client.wait_for_workers(2, timeout=60)  # the nanny brought a fresh worker up
    assert killed[0] not in client.run(os.getpid).values()


def test_rerun_after_interrupt_fetches_only_the_missing_blocks(
    client: object, model: Path, single: SegmentResult, tmp_path: Path
) -> None:
    done: list[int] = []
    with TileServer(pattern_provider, delay=0.03) as s:
        req = request(model, s.template, tmp_path)
        with pytest.raises(Cancelled):
            run_segment_cluster(
                req,
                client,
                block_size=BLOCK,
                on_block=lambda _r, n, _t: done.append(n),
                is_cancelled=lambda: len(done) >= 2,
            )
        assert no_partial_files(tmp_path)  # the blocks stopped mid-way left nothing behind
        finished = {p.parent.name for p in (tmp_path / "blocks").glob(f"*/{MARKER_NAME}")}
        assert 2 <= len(finished) < 6
        # What the missing blocks need: the tiles under each one's windows, once per block.
        plan, jobs = plan_jobs(req, BLOCK)
        expected: Counter = Counter()
        for job in jobs:
            if job.name not in finished:
                expected.update((z, x, y) for x, y, z in xyz_tiles_for(plan.grid, job.stripe.windows))
        s.requests.clear()
        result = run_segment_cluster(req, client, block_size=BLOCK)
        assert s.requests == expected
        assert result.blocks_skipped == len(finished) and not result.blocks_failed
        assert_same_as_single(result, single)
        # A third run finds every block done: no request, and no scheduler needed (none answers there).
        s.requests.clear()
        again = run_segment_cluster(req, "tcp://127.0.0.1:1", BLOCK)
        assert not s.requests
    assert again.blocks_skipped == 6 and again.counts == single.counts


def test_changed_request_redoes_blocks_and_damaged_block_is_redone(
    client: object, model: Path, server: TileServer, single: SegmentResult, tmp_path: Path
) -> None:
    run_segment_cluster(request(model, server.template, tmp_path), client, block_size=BLOCK)
    # A block file GDAL cannot open is not done, whatever its marker says.
    victim = sorted((tmp_path / "blocks").iterdir())[2] / "classes.tif"
    victim.write_bytes(b"not a tiff")
    result = run_segment_cluster(request(model, server.template, tmp_path), client, block_size=BLOCK)
    assert result.blocks_skipped == 5
    assert_same_as_single(result, single)
    # Another overlap makes other pixels: no block of the old run is reused.
    other = run_segment_cluster(
        request(model, server.template, tmp_path, overlap_percent=50), client, block_size=BLOCK
    )
    assert other.blocks_skipped == 0


def test_failed_block_is_reported_and_nodata(
    client: object, model: Path, server: TileServer, single: SegmentResult, tmp_path: Path
) -> None:
    (tmp_path / "blocks").mkdir()
    (tmp_path / "blocks" / "r0000_c0001").write_text("a file where the block's folder goes")
    result = run_segment_cluster(request(model, server.template, tmp_path), client, block_size=BLOCK)
    assert [b for b, _ in result.blocks_failed] == ["r0000_c0001"]
    assert "FileExistsError" in result.blocks_failed[0][1]
    assert (tmp_path / FAILED_BLOCKS_NAME).read_text().startswith("block,reason\nr0000_c0001,")
    classes, ref = array(result.classes_path), array(single.classes_path)
    assert (classes[:BLOCK, BLOCK : 2 * BLOCK] == 255).all()  # its area: nodata, not a hole
    assert (array(result.heatmap_paths["red"])[:BLOCK, BLOCK : 2 * BLOCK] == 255).all()
    keep = np.ones(ref.shape, bool)
    keep[:BLOCK, BLOCK : 2 * BLOCK] = False
    np.testing.assert_array_equal(classes[keep], ref[keep])
    assert sum(c.pixels for c in result.counts) == int(keep.sum())


def test_cli_cluster_and_no_dask_on_the_default_path(model: Path, server: TileServer, tmp_path: Path) -> None:
    bbox = ",".join(str(v) for v in BBOX)
    cmd = [sys.executable, "-m", "satseg_plugin.inference", "segment", "--model", str(model)]
    cmd += ["--bbox", bbox, "--bbox-crs", "EPSG:3857", "--tiles", server.template, "--no-heatmaps"]
    r = subprocess.run(
        [*cmd, "--out", str(tmp_path / "c"), "--cluster", "local:2", "--block-size", "256"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert "blocks [" in r.stderr and "6 blocks (0 done before, 0 failed)" in r.stdout
    assert (tmp_path / "c" / "classes.vrt").is_file() and (tmp_path / "c" / "pixel_counts.csv").is_file()
    # The single-process path never imports Dask.
    probe = (
        "import sys, runpy; sys.argv = ['x', *sys.argv[1:]];"
        "from satseg_plugin.inference.__main__ import main; main();"
        "assert 'distributed' not in sys.modules and 'dask' not in sys.modules, 'dask imported'"
    )
    r = subprocess.run(
        [sys.executable, "-c", probe, *cmd[3:], "--out", str(tmp_path / "s"), "--quiet"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "c" / "pixel_counts.csv").read_text() == (
        tmp_path / "s" / "pixel_counts.csv"
    ).read_text()


def test_cluster_addresses() -> None:
    assert parse_cluster("local:3") == ("local", 3)
    assert parse_cluster("local")[0] == "local" and parse_cluster(None)[1] == (os.cpu_count() or 1)
    assert parse_cluster("tcp://10.0.0.5:8786") == ("address", "tcp://10.0.0.5:8786")
    for bad in ("local:0", "10.0.0.5:8786", "local:two"):
        with pytest.raises(ClusterError):
            parse_cluster(bad)
