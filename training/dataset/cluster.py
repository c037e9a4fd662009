"""``build --cluster``: label burning and imagery fetch of a dataset, chunk by chunk on Dask.

The client reads the OSM file once over the bbox, as a single-process build
does, to find the tiles the classes touch and draw the seeded sample (the
sample needs every touching tile, so this step stays on the client). It
writes ``sample.txt``, cuts the sample into chunks of ``--chunk-tiles`` tiles
along a Hilbert curve (neighbouring tiles, so a chunk reads few features),
and runs one Dask task per chunk (``chunks.chunk_task``): burn the chunk's
labels, fetch the imagery of its filtered tiles. As chunks end it merges
their per-class pixel counts, filtered ids and download reports into the
same ``sample-filtered.txt``, ``skipped.csv`` and ``manifest.json`` a single
process writes (``build.labels_manifest``, ``build.record_download``); the
preview follows in ``build.run``.

The cluster helpers are ``segment --cluster``'s (``satseg_plugin.inference.daskrun``):
``local[:N]`` or ``tcp://HOST:PORT``, a dead worker's chunk retried on
another, cancel and Ctrl-C stopping queued and running chunks. A chunk that
fails all the same fails the build (exit 2) after the others finish; a rerun
keeps the images already fetched, as a single-process rerun does.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from satseg_plugin.inference.blocks import remove_partial
from satseg_plugin.inference.daskrun import ClusterError, connect, new_cancel_name, parse_cluster, run_tasks
from satseg_plugin.inference.errors import SatsegError
from satseg_plugin.inference.progress import ProgressBar
from satseg_plugin.inference.tileurl import TileTemplate, TokenError, redact

from .build import (
    LabelPlan,
    _Discard,
    _imagery_tiles,
    _Log,
    labels_manifest,
    log_labels,
    read_labels,
    record_download,
)
from .chunks import ChunkJob, ChunkResult, LabelSource, chunk_task
from .imagery import DownloadReport, check_any_fetched
from .manifest import read_manifest, write_ids, write_manifest
from .tiles import Tile

#: Tiles per chunk (one Dask task): enough to make the per-task overhead (about 0.1 s) and a
#: chunk's own OSM read small, few enough that many workers have work.
DEFAULT_CHUNK_TILES = 256


def hilbert_index(n: int, x: int, y: int) -> int:
    """Position of cell ``(x, y)`` on the Hilbert curve over an ``n`` x ``n`` grid (``n`` a power of 2)."""
    d = 0
    s = n // 2
    while s > 0:
        rx = 1 if x & s else 0
        ry = 1 if y & s else 0
        d += s * s * ((3 * rx) ^ ry)
        if ry == 0:  # rotate the quadrant so that the curve runs on
            if rx == 1:
                x, y = n - 1 - x, n - 1 - y
            x, y = y, x
        s //= 2
    return d


def plan_chunks(tiles: list[Tile], per_chunk: int) -> list[list[int]]:
    """Indices into ``tiles`` (one zoom) cut into chunks of ``per_chunk``: runs of a Hilbert curve.

    Consecutive tiles along the curve are neighbours, so a chunk covers a
    compact patch of ground (and reads few features); each chunk keeps the
    tiles in their order in ``tiles``.
    """
    if not tiles:
        return []
    x0, y0 = min(t[0] for t in tiles), min(t[1] for t in tiles)
    side = max(max(t[0] for t in tiles) - x0, max(t[1] for t in tiles) - y0) + 1
    n = 1 << max(0, (side - 1).bit_length())
    order = sorted(range(len(tiles)), key=lambda i: hilbert_index(n, tiles[i][0] - x0, tiles[i][1] - y0))
    return [sorted(order[k : k + per_chunk]) for k in range(0, len(order), per_chunk)]


def default_read(driver: str) -> str:
    """``chunk`` for vector tiles (an index by tile: a chunk reads only its own), else ``worker``.

    A .osm.pbf or GeoJSON file has no spatial index: every read scans the
    whole file, so a read per chunk costs a full scan per chunk
    (``benchmarks/bench_dataset_cluster.py``, docs/cluster.md).
    """
    return "chunk" if driver in ("MBTiles", "MVT") else "worker"


def check_cluster_args(args: argparse.Namespace) -> None:
    """One-line errors for ``--cluster`` values and options it cannot take, before any work."""
    parse_cluster(args.cluster)
    if args.raster:
        raise ClusterError("--raster runs in a single process only: leave out --cluster")


def plan_build(
    args: argparse.Namespace, template: TileTemplate | None, log: _Log
) -> tuple[LabelPlan | None, dict, list[ChunkJob]]:
    """``(label plan or None, manifest so far, chunk jobs)``; with ``--osm`` the sample is drawn and written."""
    out: Path = args.out.resolve()
    labels: LabelSource | None = None
    plan = None
    manifest: dict = {}
    if args.osm is not None:
        plan = read_labels(args, log)
        tiles = plan.sample
        (out / "labels" / "color").mkdir(parents=True, exist_ok=True)
        write_ids(out / "sample.txt", plan.ids)
        st = os.stat(args.osm)
        labels = LabelSource(
            osm=str(Path(args.osm).resolve()),
            osm_stat=(st.st_size, st.st_mtime_ns),
            classes=plan.config.raw,
            classes_path=str(args.classes),
            zoom=plan.zoom,
            trange=plan.trange,
            extent=plan.extent,
            min_labelled=args.min_labelled,
            read=args.osm_read or default_read(plan.source.driver),
        )
    else:
        manifest = read_manifest(
            out, kind="osm", hint="build the labels first (give --osm, --bbox and --classes)"
        )
        tiles = _imagery_tiles(out)
    cancel = new_cancel_name()
    jobs = [
        ChunkJob(
            index=k,
            tiles=tuple(tiles[i] for i in chunk),
            out=str(out),
            labels=labels,
            template=template,
            workers=args.workers,
            timeout=args.timeout,
            retries=args.retries,
            cancel_event=cancel,
        )
        for k, chunk in enumerate(plan_chunks(tiles, args.chunk_tiles))
    ]
    return plan, manifest, jobs


def run_chunks(client: Any, jobs: list[ChunkJob], out: Path, log: _Log) -> tuple[list[ChunkResult], dict]:
    """Run ``jobs`` on ``client``, one bar over their tiles; ``(results in chunk order, {failed chunk: reason})``."""
    results: dict[int, ChunkResult] = {}
    failed: dict[str, str] = {}
    if not jobs:
        return [], failed
    workers = len(client.scheduler_info().get("workers", {}))
    log(f"cluster: {len(jobs)} chunks of up to {max(len(j.tiles) for j in jobs)} tiles on {workers} workers")
    stream = _Discard() if log.quiet else None
    with ProgressBar(sum(len(j.tiles) for j in jobs), "tiles", stream=stream) as bar:

        def done(job: ChunkJob, result: ChunkResult | None, failure: str | None) -> None:
            if failure is None:
                results[job.index] = result
            else:
                failed[job.name] = failure
            bar.update(len(job.tiles))

        try:
            run_tasks(
                client,
                chunk_task,
                jobs,
                key=lambda job: f"satseg-{job.name}-{job.cancel_event}",
                cancel_name=jobs[0].cancel_event,
                on_done=done,
                fatal=(TokenError,),
            )
        finally:  # what a killed worker was writing: every task has ended, so none is live
            for folder in (out / "labels" / "color", out / "images"):
                if folder.is_dir():
                    remove_partial(folder)
    return [results[k] for k in sorted(results)], failed


def build_on_cluster(args: argparse.Namespace, log: _Log, template: TileTemplate | None) -> dict:
    """Labels (with ``--osm``) and imagery (with ``template``) of the dataset in ``args.out``; its manifest."""
    t_start = time.perf_counter()
    out: Path = args.out.resolve()
    with connect(args.cluster) as client:  # a scheduler that does not answer fails before the long read
        plan, manifest, jobs = plan_build(args, template, log)
        ordered, failed = run_chunks(client, jobs, out, log)
    if failed:
        name, reason = sorted(failed.items())[0]
        raise SatsegError(
            f"{len(failed)} of {len(jobs)} chunks failed ({name}: {log_safe(reason, template)}); "
            "rerun the same command to finish them (images already fetched are kept)"
        )
    if plan is not None:
        ids = plan.ids
        position = {tid: i for i, tid in enumerate(ids)}
        filtered = sorted((tid for r in ordered for tid in r.filtered), key=position.__getitem__)
        pixels = np.zeros(plan.config.num_classes, np.int64)
        for r in ordered:
            pixels += np.asarray(r.pixels, np.int64)
        write_ids(out / "sample-filtered.txt", filtered)
        log_labels(log, len(ids), len(filtered), args.min_labelled)
        manifest = labels_manifest(args, plan, pixels, filtered)
    if template is not None:
        manifest["source"] = template.public
        write_manifest(out, manifest)  # the labels are usable even if no image came
        report = DownloadReport(
            fetched=[i for r in ordered for i in r.fetched],
            kept=[i for r in ordered for i in r.kept],
            damaged=[i for r in ordered for i in r.damaged],
            skipped=[s for r in ordered for s in r.skipped],
        )
        check_any_fetched(template, sum(r.asked for r in ordered), report)
        manifest = record_download(out, manifest, report, log)
    read = [r.read_seconds for r in ordered if r.read_seconds]
    log(
        f"cluster: {len(jobs)} chunks in {time.perf_counter() - t_start:.1f} s"
        + (f" (OSM read on the workers: {len(read)} reads, {sum(read):.2f} s)" if read else "")
    )
    return manifest


def log_safe(text: str, template: TileTemplate | None) -> str:
    """``text`` with the imagery token masked (a failure's message may quote a URL)."""
    return redact(text, template.token if template else None)
