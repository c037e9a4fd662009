"""build --cluster: what a chunk's OSM read costs, and a small real build on 1 and 2 workers.

    .venv/bin/python -m benchmarks.bench_dataset_cluster [--chunk-tiles 16] [--latency 0.0]

1. OSM read per worker or per chunk (``--osm-read``), on the real files of
   ``../shared/data``: ``osm/test.osm.pbf`` (Karhula, land use and 2219
   buildings, mine.json, zoom 18), ``osm/portugal-z17.mbtiles`` (OSM QA
   vector tiles, every line and area, zoom 18) and
   ``oam-osm-buildings/area1/labels.geojson`` (201 buildings, zoom 20). For
   each: the seconds to read and draw the whole bbox (what ``worker`` costs
   once per worker process) and each chunk's own read (what ``chunk`` costs
   once per chunk), in one process, the files cached by the OS.
2. A small real build, labels and imagery: the Zanzibar buildings of
   ``area1`` at zoom 20 with its real OpenAerialMap tiles from a loopback
   tile server, in one process and on a LocalCluster of 1 and 2 workers
   (started before the clock, its start-up printed apart).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from osgeo import ogr

from satseg_plugin.inference.cli import run_cli
from scripts.tileserver import TileServer, oam_provider
from training.dataset.__main__ import main as dataset_main
from training.dataset.build import _Log, read_labels
from training.dataset.chunks import LabelSource, _chunk_store, _worker_store, clear_worker_cache
from training.dataset.cluster import plan_chunks

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
AREA1 = SHARED / "oam-osm-buildings" / "area1"
MINE = ROOT / "training" / "classes" / "mine.json"
BUILDINGS = ROOT / "training" / "classes" / "buildings.json"
#: Every line and area of the vector tiles, drawn 3 px wide (OSM QA tiles of this extract are mostly roads).
EVERYTHING = [{"name": "osm", "color": "#010101", "stroke-width": "3", "filter": ""}]


def geojson_bbox(path: Path) -> str:
    ds = ogr.Open(str(path))
    w, e, s, n = ds.GetLayer(0).GetExtent()
    ds = None
    return f"{w},{s},{e},{n}"


def read_costs(name: str, osm: Path, classes: Path, bbox: str, zoom: int, chunk_tiles: int) -> None:
    """Print the whole-bbox read against the chunks' reads of one file."""
    args = argparse.Namespace(
        bbox=bbox, classes=classes, osm=osm, zoom=zoom, size=10**9, seed=0, min_labelled=1
    )
    plan = read_labels(args, _Log(quiet=True))
    st = osm.stat()
    src = LabelSource(str(osm), (st.st_size, st.st_mtime_ns), plan.config.raw, str(classes), plan.zoom,
                      plan.trange, plan.extent, 1)  # fmt: skip
    clear_worker_cache()
    t0 = time.perf_counter()
    _worker_store(src)
    whole = time.perf_counter() - t0
    clear_worker_cache()
    chunks = plan_chunks(plan.sample, chunk_tiles)
    reads = []
    for chunk in chunks:
        tiles = tuple(plan.sample[i] for i in chunk)
        t0 = time.perf_counter()
        _chunk_store(src, tiles)
        reads.append(time.perf_counter() - t0)
    total = sum(reads)
    print(
        f"   {name:<22} {len(plan.sample):5d} tiles {len(chunks):3d} chunks | whole bbox {whole:6.2f} s"
        f" | per chunk {total / len(reads):6.3f} s, all chunks {total:6.2f} s"
        f" | 2 workers: worker {2 * whole:6.2f} s, chunk {total:6.2f} s"
    )


def timed_build(*argv: object) -> float:
    t0 = time.perf_counter()
    rc = run_cli(dataset_main, ["build", *map(str, argv)])
    if rc != 0:
        raise SystemExit(f"build failed with status {rc}")
    return time.perf_counter() - t0


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--chunk-tiles", type=int, default=16, help="tiles per chunk in both parts (default: %(default)s)"
    )
    parser.add_argument(
        "--latency", type=float, default=0.0, help="seconds the tile server waits per request (default: 0)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds of part 2 (default: %(default)s)")
    parser.add_argument("--no-reads", action="store_true", help="skip part 1")
    args = parser.parse_args(argv)
    import distributed

    with tempfile.TemporaryDirectory() as tmp:
        everything = Path(tmp) / "everything.json"
        everything.write_text(json.dumps(EVERYTHING))
        geojson = AREA1 / "labels.geojson"
        if not args.no_reads:
            print(
                f"1. OSM read per worker (--osm-read worker) or per chunk (chunk), chunks of {args.chunk_tiles} tiles"
            )
            read_costs("test.osm.pbf", SHARED / "osm" / "test.osm.pbf", MINE, "26.93,60.52,26.97,60.54", 18,
                       args.chunk_tiles)  # fmt: skip
            read_costs("portugal-z17.mbtiles", SHARED / "osm" / "portugal-z17.mbtiles", everything,
                       "-9.492,38.823,-9.404,38.891", 18, args.chunk_tiles)  # fmt: skip
            read_costs(
                "area1 labels.geojson", geojson, BUILDINGS, geojson_bbox(geojson), 20, args.chunk_tiles
            )

        print(
            f"\n2. build of area1 at zoom 20 (labels + OAM imagery, loopback, {args.latency * 1000:.0f} ms/request)"
        )
        common = ["--bbox", geojson_bbox(geojson), "--zoom", "20", "--classes", BUILDINGS, "--osm", geojson]
        common += ["--quiet", "--preview-tiles", "0"]
        with TileServer(oam_provider(AREA1), delay=args.latency) as server:
            for r in range(args.rounds):  # interleaved: a load that drifts hits every variant alike
                out = Path(tmp) / "single"
                seconds = timed_build(*common, "--imagery", server.template, "--out", out)
                n = len((out / "sample-filtered.txt").read_text().split())
                shutil.rmtree(out, ignore_errors=True)
                print(
                    f"   round {r + 1}: one process        {seconds:6.2f} s  {n / seconds:6.1f} tiles/s  ({n} tiles)"
                )
                for workers in (1, 2):
                    t0 = time.perf_counter()
                    cluster = distributed.LocalCluster(
                        n_workers=workers, processes=True, threads_per_worker=1, dashboard_address=None,
                        host="127.0.0.1",
                    )  # fmt: skip
                    start = time.perf_counter() - t0
                    try:
                        out = Path(tmp) / f"cluster{workers}"
                        seconds = timed_build(
                            *common, "--imagery", server.template, "--out", out,
                            "--cluster", cluster.scheduler_address, "--chunk-tiles", args.chunk_tiles,
                        )  # fmt: skip
                    finally:
                        cluster.close()
                    shutil.rmtree(out, ignore_errors=True)
                    label = f"{workers} worker{'s' if workers > 1 else ''}"
                    print(
                        f"   round {r + 1}: cluster, {label:<9} {seconds:6.2f} s  {n / seconds:6.1f} tiles/s"
                        f"  (cluster start-up {start:.1f} s apart)"
                    )


if __name__ == "__main__":
    main()
