"""segment --cluster: throughput with 1 and 2 Dask workers, and what each block costs on top.

    .venv/bin/python -m benchmarks.bench_cluster [--tiles 8] [--block 512] [--model models/satseg-buildings.onnx]

Real OpenAerialMap tiles (any address maps to one of the real zoom-19 tiles
of ../shared/data/oam-osm-buildings/area1) from a loopback tile server, the
shipped default model, classes and counts (no heatmaps). Printed:

1. tiles/s of one process (``run_segment``) and of a LocalCluster of 1 and
   of 2 worker processes (``run_segment_cluster``), each on a fresh output
   folder; the cluster's start-up (scheduler, worker processes) apart.
2. Per-block overhead: the model load (once per worker process, on its first
   block), scheduling (wall time of the run beyond the blocks' own seconds
   divided among the workers, per block), and block-edge recomputation (the
   windows the blocks run, over those one process runs: windows across a
   block edge run on both sides), for this run's block and for the default.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from benchmarks.bench_segment import ROOT, extent, real_tile_provider
from satseg_plugin.inference.cluster import DEFAULT_BLOCK, plan_jobs, run_segment_cluster
from satseg_plugin.inference.segment import SegmentRequest, plan_run, run_segment
from scripts.tileserver import TileServer


def edge_overhead(req: SegmentRequest, block: int) -> tuple[int, int, float]:
    """Windows one process runs, windows the blocks run, and the ratio."""
    plan = plan_run(req, open_source=False, max_pixels=None, tile_set=False)
    _, jobs = plan_jobs(req, block)
    blocks = sum(j.stripe.windows.count for j in jobs)
    return plan.windows.count, blocks, blocks / plan.windows.count


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiles", type=int, default=8, help="the extent is TILES x TILES zoom-19 tiles")
    p.add_argument("--block", type=int, default=512, help="block side in pixels for the timed runs")
    p.add_argument("--model", default=str(ROOT / "models" / "satseg-default.onnx"), help="ONNX model")
    p.add_argument("--workers", default="1,2", help="worker counts to time, comma-separated")
    args = p.parse_args()
    n = args.tiles
    with TileServer(real_tile_provider()) as server, tempfile.TemporaryDirectory() as tmp:

        def req(name: str) -> SegmentRequest:
            return SegmentRequest(
                model=args.model,
                bbox=extent(n, n),
                bbox_crs="EPSG:3857",
                tiles_url=server.template,
                out_dir=Path(tmp) / name,
                write_heatmaps=False,
            )

        tiles = n * n
        t0 = time.perf_counter()
        run_segment(req("single"))
        single = time.perf_counter() - t0
        print(f"extent: {tiles} tiles ({n} x {n}, zoom 19), model {Path(args.model).name}, classes + counts")
        print(f"one process (run_segment):        {tiles / single:6.2f} tiles/s ({single:.1f} s)")
        from distributed import Client, LocalCluster

        for workers in (int(w) for w in args.workers.split(",")):
            t0 = time.perf_counter()
            cluster = LocalCluster(
                n_workers=workers,
                threads_per_worker=1,
                processes=True,
                dashboard_address=None,
                host="127.0.0.1",
            )
            client = Client(cluster)
            startup = time.perf_counter() - t0
            try:
                t0 = time.perf_counter()
                res = run_segment_cluster(
                    req(f"c{workers}"),
                    client,
                    block_size=args.block,
                    threads=max(1, (os.cpu_count() or 1) // workers),  # as local:N does
                )
                wall = time.perf_counter() - t0
            finally:
                client.close()
                cluster.close()
            blocks = res.block_results
            busy = sum(b.seconds for b in blocks)
            loads = [b.model_load_seconds for b in blocks if b.model_load_seconds > 0]
            sched = max(0.0, wall * workers - busy) / len(blocks)
            print(
                f"cluster, {workers} worker(s):            {tiles / wall:6.2f} tiles/s ({wall:.1f} s, "
                f"{len(blocks)} blocks of {args.block} px; start-up {startup:.1f} s apart)"
            )
            print(
                f"  per block: {busy / len(blocks):.2f} s on the worker, model load "
                f"{(sum(loads) / max(len(loads), 1)):.2f} s x {len(loads)} (once per worker), "
                f"scheduling and idle {sched:.3f} s"
            )
        for block in sorted({args.block, 1024, 2048, DEFAULT_BLOCK}):
            big = n if block <= args.block else max(n, 4 * block // 256)
            r = SegmentRequest(
                model=args.model,
                bbox=extent(big, big),
                bbox_crs="EPSG:3857",
                tiles_url=server.template,
                out_dir=Path(tmp) / "plan",
            )
            one, blocks_w, ratio = edge_overhead(r, block)
            print(
                f"block-edge recomputation, {block:5d} px blocks over {big} x {big} tiles: "
                f"{blocks_w} windows against {one} ({100 * (ratio - 1):.1f} % more)"
            )


if __name__ == "__main__":
    main()
