"""Segment a region or a country on a Dask cluster: one task per block of the output grid.

``run_segment_cluster(req, cluster="local:4")`` plans the run like
``run_segment`` does (same grid, same windows), cuts the grid into square
blocks (``tileplan.plan_blocks``), skips the blocks a previous run finished
(``blocks.verified_result``), submits the others to Dask's distributed
scheduler (a ``LocalCluster`` of worker processes, or an existing scheduler
at ``tcp://HOST:PORT``) and, as they finish, sums their per-row class counts.
Then it mosaics the blocks' GeoTIFFs into ``classes.vrt`` and
``heatmap_<class>.vrt`` (and on request one Cloud-Optimised GeoTIFF,
``classes.tif``) and writes ``pixel_counts.csv``.

A worker that dies takes its block with it; the scheduler gives the block to
another worker (up to ``distributed.scheduler.allowed-failures`` times). A
block that fails all the same is listed in ``failed_blocks.csv`` and stays
nodata in the mosaic. Cancel (or Ctrl-C) sets a Dask ``Event`` the running
blocks check between batches, drops the queued ones and removes half-written
files. Dask is imported here only, and only when a run starts: the
single-process path never needs it.

For a remote scheduler, the workers must import ``satseg_plugin`` (the same
version), reach the imagery, and see the model and the output folder at the
same paths (a shared file system).
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from osgeo import gdal

from .atomic import atomic_path, write_text_atomic
from .blocks import (
    BLOCKS_DIR,
    BlockJob,
    BlockResult,
    remove_partial,
    segment_block,
    verified_result,
)
from .counts import COUNTS_NAME, ClassCount, CountAccumulator, write_counts_csv
from .daskrun import CancelFlag, ClusterError, connect, new_cancel_name, parse_cluster, run_tasks
from .errors import Cancelled, SatsegError, SourceError
from .outputs import (
    CLASS_NODATA,
    CLASSES_NAME,
    HEATMAP_NODATA,
    HEATMAP_SCALE,
    heatmap_names,
    style_class_band,
)
from .segment import ProgressFn, RunPlan, SegmentRequest, plan_run, single_process_options
from .sources import RasterSource, tile_name
from .tileplan import Grid, plan_blocks
from .tileurl import TokenError

gdal.UseExceptions()

#: Block side in pixels: 16 x 16 XYZ tiles. Larger blocks recompute less of their edges
#: (about 6 % more windows per side at 4096 px and 25 % overlap) but hold more in memory.
DEFAULT_BLOCK = 4096
FAILED_BLOCKS_NAME = "failed_blocks.csv"
COG_NAME = CLASSES_NAME  # the optional Cloud-Optimised GeoTIFF of the classes
CLASSES_VRT = "classes.vrt"


@dataclass
class ClusterResult:
    """What a cluster run wrote and measured; paths are None for outputs not asked for."""

    classes_path: str | None  # classes.vrt
    cog_path: str | None  # classes.tif (Cloud-Optimised) when asked for
    heatmap_paths: dict[str, str]  # {class: heatmap_<class>.vrt}
    counts_csv: str | None
    counts: list[ClassCount]
    class_names: list[str]
    class_colors: list[str]
    tiles_total: int
    blocks_total: int
    blocks_skipped: int  # done by an earlier run, verified and reused
    blocks_failed: list[tuple[str, str]] = field(default_factory=list)  # (block name, reason)
    tiles_failed: list[tuple[str, str]] = field(default_factory=list)
    grid: Grid | None = None
    block_results: list[BlockResult] = field(default_factory=list)
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)  # warnings about the result's quality, as a single run's


def _fingerprint(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def plan_jobs(
    req: SegmentRequest, block_size: int = DEFAULT_BLOCK, threads: int | None = None
) -> tuple[RunPlan, list[BlockJob]]:
    """``(plan, jobs)``: the run's plan and one ``BlockJob`` per block, row by row.

    Loads the model and checks the extent and source here, before any worker
    starts, so bad input fails as fast as in a single-process run.
    """
    if block_size < 256:
        raise ClusterError(f"blocks must be at least 256 pixels, not {block_size}")
    plan = plan_run(req, open_source=False, max_pixels=None, tile_set=False)
    if plan.model.channels != 3:
        raise ClusterError(f"a model of {plan.model.channels} image bands runs in a single process only")
    grid, meta = plan.grid, plan.model.metadata
    model = str(Path(req.model).resolve())
    out = Path(req.out_dir).resolve()
    raster = None
    stretch = None
    if req.raster_path:
        res = meta.resolution_cm / 100 if meta.resolution_cm else None
        raster = (str(Path(req.raster_path).resolve()), tuple(req.bbox), req.bbox_crs, res)
        # Bands of more than 8 bits: one stretch for the whole run, measured here, not in each block.
        source = RasterSource(*raster)
        try:
            stretch = source.stretch
            if note := source.stretch_note():
                plan.notes.append(note)
        finally:
            source.close()
        st = os.stat(raster[0])
        source_id: Any = {"raster": raster[0], "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    else:
        assert plan.template is not None
        source_id = {"tiles": plan.template.public, "tms": plan.template.tms}
    common = {
        "model_sha256": _fingerprint(model),
        "grid": [hashlib.sha256(grid.crs_wkt.encode()).hexdigest(), list(grid.geotransform)],
        "size": [grid.width, grid.height],
        "overlap": plan.overlap,
        "source": source_id,
        "classes": req.write_classes,
        "heatmaps": req.write_heatmaps,
        "generic_names": req.allow_generic_names,
    }
    cancel = new_cancel_name()
    jobs: list[BlockJob] = []
    stripes = plan_blocks(grid.width, grid.height, plan.windows, block_size)
    step = stripes[0].x1 - stripes[0].x0
    for stripe in stripes:
        w = stripe.windows
        row, col = stripe.y0 // step, stripe.x0 // step
        params = {
            **common,
            "block": [stripe.x0, stripe.y0, stripe.x1, stripe.y1],
            "windows": [w.size, w.stride, w.x0, w.y0, w.nx, w.ny],
        }
        jobs.append(
            BlockJob(
                row=row,
                col=col,
                stripe=stripe,
                grid=grid,
                overlap=plan.overlap,
                model=model,
                allow_generic_names=req.allow_generic_names,
                folder=str(out / BLOCKS_DIR / f"r{row:04d}_c{col:04d}"),
                class_names=tuple(meta.class_names),
                class_colors=tuple(meta.class_colors),
                write_classes=req.write_classes,
                write_heatmaps=req.write_heatmaps,
                params=params,
                template=plan.template,
                raster=raster,
                stretch=stretch,
                batch_size=plan.batch_size,
                fetch_workers=req.workers,
                timeout=req.timeout,
                retries=req.retries,
                cache_dir=str(Path(req.cache_dir).resolve()) if req.cache_dir else None,
                threads=threads,
                cancel_event=cancel,
            )
        )
    return plan, jobs


def block_task(job: BlockJob) -> BlockResult:
    """The Dask task of one block: ``segment_block`` stopped by the run's cancel ``Event``."""
    cancelled = CancelFlag(job.cancel_event)
    if cancelled():  # a block that starts after the cancel fetches nothing
        raise Cancelled("cancelled")
    return segment_block(job, cancelled)


def _build_vrt(path: Path, sources: Sequence[str], grid: Grid, nodata: float, setup: Callable) -> str:
    """Mosaic ``sources`` over the whole grid (no source: nodata) into ``path``, atomically."""
    x0, dx, _, y0, _, dy = grid.geotransform
    bounds = (x0, y0 + dy * grid.height, x0 + dx * grid.width, y0)
    with atomic_path(path) as tmp:
        ds = gdal.BuildVRT(
            str(tmp),
            list(sources),
            outputBounds=bounds,
            xRes=abs(dx),
            yRes=abs(dy),
            srcNodata=nodata,
            VRTNodata=nodata,
        )
        if ds is None:
            raise SatsegError(f"cannot build {path.name}")
        setup(ds.GetRasterBand(1))
        ds = None
    return str(path)


def _style_classes(names: Sequence[str], colors: Sequence[str]) -> Callable:
    def setup(band: Any) -> None:
        style_class_band(band, names, colors)

    return setup


def write_cog(vrt: str, path: Path) -> str:
    """One Cloud-Optimised GeoTIFF (tiled, DEFLATE, overviews inside) of the classes mosaic."""
    with atomic_path(path) as tmp:
        gdal.Translate(
            str(tmp),
            vrt,
            format="COG",
            creationOptions=["COMPRESS=DEFLATE", "PREDICTOR=2", "BIGTIFF=IF_SAFER", "RESAMPLING=NEAREST"],
        )
        aux = Path(f"{tmp}.aux.xml")
        if aux.exists():  # category names live in the PAM side file
            os.replace(aux, f"{path}.aux.xml")
    return str(path)


def _failed_csv(rows: Sequence[tuple[str, str]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["block", "reason"])
    w.writerows(rows)
    return buf.getvalue()


def run_segment_cluster(
    req: SegmentRequest,
    cluster: str | Any = "local",
    block_size: int = DEFAULT_BLOCK,
    cog: bool = False,
    progress: ProgressFn | None = None,
    is_cancelled: Callable[[], bool] | None = None,
    on_block: Callable[[BlockResult | None, int, int], None] | None = None,
    threads: int | None = None,
) -> ClusterResult:
    """Segment ``req`` block by block on a Dask cluster; same pixels and counts as ``run_segment``.

    ``cluster`` is ``local``, ``local:N``, ``tcp://HOST:PORT`` or a
    ``distributed.Client``. ``progress(fraction, message)`` and
    ``on_block(result or None if failed, done, total)`` are told after every
    block; ``is_cancelled()`` is checked at least every half second. Raises
    ``Cancelled`` (queued blocks dropped, running ones stopped, half-written
    files removed; finished blocks stay and a rerun skips them) and
    ``SourceError`` for a refused token or when no tile at all could be had.
    ``threads`` caps onnxruntime's threads per block (default: for ``local:N``
    the cores divided among the N workers, else onnxruntime's own choice).
    """
    single = single_process_options(req)
    if single:
        raise ClusterError(f"{', '.join(single)} run in a single process only: leave out --cluster for them")
    t_start = time.perf_counter()
    report = progress or (lambda _f, _m: None)
    cancelled = is_cancelled or (lambda: False)
    kind, value = ("client", 0) if not isinstance(cluster, str) else parse_cluster(cluster)
    if (
        threads is None and kind == "local"
    ):  # share the cores among the worker processes instead of fighting over them
        threads = max(1, (os.cpu_count() or 1) // int(value))
    plan, jobs = plan_jobs(req, block_size, threads)
    grid = plan.grid
    meta = plan.model.metadata
    names, colors = list(meta.class_names), list(meta.class_colors)
    out_dir = Path(req.out_dir)
    results: dict[str, BlockResult] = {}
    failed_blocks: dict[str, str] = {}
    todo: list[BlockJob] = []
    for job in jobs:
        found = verified_result(job)
        if found is not None:
            results[job.name] = found
        else:
            todo.append(job)
    total = len(jobs)
    skipped = len(results)
    report(skipped / total, f"{total} blocks, {skipped} done already")
    if on_block is not None and skipped:
        on_block(None, skipped, total)
    if todo:
        _run_blocks(todo, cluster, results, failed_blocks, total, report, cancelled, on_block)
    # Mosaic and counts.
    counter = CountAccumulator(grid, meta.num_classes)
    tiles_failed: dict[tuple[int, int, int], str] = {}
    for r in results.values():
        counter.add_rows(r.per_row, r.y0)
        tiles_failed.update(dict(r.failed))
    done_jobs = [j for j in jobs if j.name in results]
    if not done_jobs:
        reasons = sorted(set(failed_blocks.values()))
        raise SourceError(f"no block could be segmented ({'; '.join(reasons[:3])})")
    if plan.template is not None and len(tiles_failed) >= plan.tiles:
        reasons = sorted(set(tiles_failed.values()))
        raise SourceError(
            f"no imagery tile could be had ({len(tiles_failed)} tiles failed: {'; '.join(reasons[:3])})"
        )
    report(1.0, "mosaicking")
    classes_path = cog_path = None
    heatmaps: dict[str, str] = {}
    if req.write_classes:
        sources = [str(Path(j.folder) / CLASSES_NAME) for j in done_jobs]
        classes_path = _build_vrt(
            out_dir / CLASSES_VRT, sources, grid, CLASS_NODATA, _style_classes(names, colors)
        )
        if cog:
            cog_path = write_cog(classes_path, out_dir / COG_NAME)
    if req.write_heatmaps:
        for name, file in zip(names, heatmap_names(names), strict=True):
            sources = [str(Path(j.folder) / file) for j in done_jobs]

            def setup(band: Any, name: str = name) -> None:
                band.SetDescription(f"probability of {name}")
                band.SetScale(HEATMAP_SCALE)  # the blocks' bytes read as 0..1, like theirs
                band.SetOffset(0.0)

            heatmaps[name] = _build_vrt(
                out_dir / file.replace(".tif", ".vrt"), sources, grid, HEATMAP_NODATA, setup
            )
    counts = counter.table(names, colors)
    counts_csv = None
    if req.write_counts:
        counts_csv = str(out_dir / COUNTS_NAME)
        write_counts_csv(counts_csv, counts)
    failed_path = out_dir / FAILED_BLOCKS_NAME
    if failed_blocks:
        write_text_atomic(failed_path, _failed_csv(sorted(failed_blocks.items())))
    else:
        with contextlib.suppress(FileNotFoundError):
            failed_path.unlink()
    report(1.0, "done")
    return ClusterResult(
        classes_path=classes_path,
        cog_path=cog_path,
        heatmap_paths=heatmaps,
        counts_csv=counts_csv,
        counts=counts,
        class_names=names,
        class_colors=colors,
        tiles_total=plan.tiles,
        blocks_total=total,
        blocks_skipped=skipped,
        blocks_failed=sorted(failed_blocks.items()),
        tiles_failed=[(tile_name(t), r) for t, r in sorted(tiles_failed.items())],
        grid=grid,
        block_results=[results[j.name] for j in jobs if j.name in results],
        seconds=time.perf_counter() - t_start,
        notes=list(plan.notes),
    )


def _run_blocks(
    todo: list[BlockJob],
    cluster: str | Any,
    results: dict[str, BlockResult],
    failed_blocks: dict[str, str],
    total: int,
    report: ProgressFn,
    cancelled: Callable[[], bool],
    on_block: Callable[[BlockResult | None, int, int], None] | None,
) -> None:
    """Submit ``todo`` and collect the blocks as they finish; stop everything on cancel or a refused token."""

    def done(job: BlockJob, result: BlockResult | None, failure: str | None) -> None:
        if failure is None:
            results[job.name] = result
        else:
            failed_blocks[job.name] = failure
        n = len(results) + len(failed_blocks)
        report(n / total, f"{n}/{total} blocks")
        if on_block is not None:
            on_block(result, n, total)

    with connect(cluster) as client:
        run_tasks(
            client,
            block_task,
            todo,
            key=lambda job: f"satseg-block-{job.name}-{job.cancel_event}",  # row by row, as one process goes
            cancel_name=todo[0].cancel_event,
            on_done=done,
            cancelled=cancelled,
            cleanup=lambda job: remove_partial(job.folder),
            fatal=(TokenError,),
        )
