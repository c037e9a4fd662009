"""One block of a cluster run: fetch, infer, blend and write a square of the output grid.

A block is a ``Stripe`` of the run's grid (``tileplan.plan_blocks``) that
carries every window touching it, so its pixels are blended from exactly the
windows, in exactly the order, of a single-process run: the blocks mosaic
without seams and equal that run bit for bit. A block writes its own
``classes.tif`` and heatmaps (its core only) into ``blocks/r<row>_c<col>/``
and, last, ``block.json``: the parameters it was made with, its per-row class
counts and its failed tiles. A rerun trusts a block only when that marker
matches the new request and GDAL opens every file at the block's size.

Nothing here imports Dask: ``segment_block`` is a plain function that
``cluster.py`` submits as a task. Models are loaded once per worker process
(``cached_model``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from osgeo import gdal

from .atomic import write_text_atomic
from .counts import CountAccumulator
from .model import SegModel
from .outputs import CLASSES_NAME, EncodedRows, RunOutputs, heatmap_names
from .segment import segment_stripes
from .sources import RasterSource, Tile, XyzSource
from .stretch import Stretch
from .tileplan import XYZ_TILE, Grid, Stripe, XyzGrid
from .tileurl import TileTemplate

gdal.UseExceptions()

BLOCKS_DIR = "blocks"
MARKER_NAME = "block.json"
MARKER_SCHEMA = 1


@dataclass(frozen=True)
class BlockJob:
    """Everything a worker needs for one block: plain, picklable values, no open handles.

    ``params`` is what the block's marker records and a rerun compares: the
    model's fingerprint, the grid, the block's rectangle and windows, the
    overlap, the source (without its token) and the outputs asked for.
    """

    row: int
    col: int
    stripe: Stripe
    grid: Grid
    overlap: int
    model: str
    allow_generic_names: bool
    folder: str
    class_names: tuple[str, ...]
    class_colors: tuple[str, ...]
    write_classes: bool
    write_heatmaps: bool
    params: dict[str, Any]
    template: TileTemplate | None = None
    raster: tuple[str, tuple[float, float, float, float], str, float | None] | None = None
    stretch: Stretch | None = None  # the raster's, measured once for the run (``stretch``)
    batch_size: int = 4
    fetch_workers: int = 8
    timeout: float = 20.0
    retries: int = 2
    cache_dir: str | None = None
    threads: int | None = None  # onnxruntime threads per worker process
    cancel_event: str | None = None  # name of the Dask Event that stops the run (cluster.py)

    @property
    def name(self) -> str:
        return f"r{self.row:04d}_c{self.col:04d}"

    @property
    def files(self) -> list[str]:
        """The GeoTIFF names this block writes."""
        names = [CLASSES_NAME] if self.write_classes else []
        if self.write_heatmaps:
            names += heatmap_names(self.class_names)
        return names


@dataclass
class BlockResult:
    """What a block wrote and measured (kept in its marker, so a skipped block still counts)."""

    row: int
    col: int
    y0: int
    per_row: np.ndarray  # (rows, classes) int64 class counts of the block's own rows
    failed: list[tuple[Tile, str]] = field(default_factory=list)
    fetched: int = 0
    windows: int = 0
    seconds: float = 0.0
    model_load_seconds: float = 0.0  # 0 when the worker had the model already
    skipped: bool = False  # found done on disk, not run


# --- the model, once per worker process -----------------------------------------------------
_MODELS: dict[tuple, SegModel] = {}
_MODELS_LOCK = threading.Lock()


def cached_model(path: str, allow_generic_names: bool, threads: int | None) -> tuple[SegModel, float]:
    """The model at ``path``, loaded once per process (and again if the file changes); seconds spent loading."""
    st = os.stat(path)
    key = (os.path.abspath(path), st.st_size, st.st_mtime_ns, allow_generic_names, threads)
    with _MODELS_LOCK:
        model = _MODELS.get(key)
        if model is not None:
            return model, 0.0
        t0 = time.perf_counter()
        model = SegModel.load(path, allow_generic_names=allow_generic_names, threads=threads)
        _MODELS.clear()  # one model per worker: a new file replaces the old session
        _MODELS[key] = model
        return model, time.perf_counter() - t0


# --- geometry --------------------------------------------------------------------------------
def block_grid(grid: Grid, stripe: Stripe) -> Grid:
    """The sub-grid of ``grid`` under the block's own rectangle (same pixels, shifted origin)."""
    y1 = stripe.y1 if stripe.y1 is not None else grid.height
    x0, dx, rx, y0, ry, dy = grid.geotransform
    gt = (x0 + dx * stripe.x0 + rx * stripe.y0, dx, rx, y0 + ry * stripe.x0 + dy * stripe.y0, ry, dy)
    extra: dict[str, int] = {}
    if isinstance(grid, XyzGrid):
        extra = {"px0": grid.px0 + stripe.x0, "py0": grid.py0 + stripe.y0}
    return dataclasses.replace(
        grid, geotransform=gt, width=stripe.x1 - stripe.x0, height=y1 - stripe.y0, **extra
    )


def core_tiles(grid: Grid, stripe: Stripe) -> set[Tile] | None:
    """The XYZ tiles under the block's own pixels (its failures are the user's); None for rasters."""
    if not isinstance(grid, XyzGrid):
        return None
    sub = block_grid(grid, stripe)
    assert isinstance(sub, XyzGrid)
    n = 2**sub.zoom
    tx0, tx1 = max(sub.px0 // XYZ_TILE, 0), min((sub.px0 + sub.width - 1) // XYZ_TILE, n - 1)
    ty0, ty1 = max(sub.py0 // XYZ_TILE, 0), min((sub.py0 + sub.height - 1) // XYZ_TILE, n - 1)
    return {(x, y, sub.zoom) for y in range(ty0, ty1 + 1) for x in range(tx0, tx1 + 1)}


# --- done markers ----------------------------------------------------------------------------
def _marker(job: BlockJob, result: BlockResult) -> dict[str, Any]:
    return {
        "schema": MARKER_SCHEMA,
        "params": job.params,
        "files": job.files,
        "y0": result.y0,
        "per_row": result.per_row.tolist(),
        "failed": [[list(t), r] for t, r in result.failed],
        "fetched": result.fetched,
        "windows": result.windows,
        "seconds": result.seconds,
    }


def verified_result(job: BlockJob) -> BlockResult | None:
    """The block's stored result when it is done for this very request, else None.

    Done means: ``block.json`` parses, its parameters equal ``job.params``, and
    GDAL opens each of the block's GeoTIFFs at the block's size.
    """
    folder = Path(job.folder)
    try:
        marker = json.loads((folder / MARKER_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(marker, dict) or marker.get("schema") != MARKER_SCHEMA:
        return None
    # JSON turns tuples into lists: compare what the params look like after a round trip.
    if marker.get("params") != json.loads(json.dumps(job.params)) or marker.get("files") != job.files:
        return None
    sub = block_grid(job.grid, job.stripe)
    for name in job.files:
        try:
            ds = gdal.Open(str(folder / name))
        except RuntimeError:
            return None
        ok = ds is not None and (ds.RasterXSize, ds.RasterYSize) == (sub.width, sub.height)
        ds = None
        if not ok:
            return None
    try:
        per_row = np.asarray(marker["per_row"], np.int64).reshape(sub.height, len(job.class_names))
        failed = [((int(t[0]), int(t[1]), int(t[2])), str(r)) for t, r in marker["failed"]]
    except (KeyError, TypeError, ValueError, IndexError):
        return None
    return BlockResult(
        job.row,
        job.col,
        int(marker.get("y0", job.stripe.y0)),
        per_row,
        failed,
        int(marker.get("fetched", 0)),
        int(marker.get("windows", 0)),
        float(marker.get("seconds", 0.0)),
        skipped=True,
    )


def remove_partial(folder: str | os.PathLike[str]) -> int:
    """Remove half-written files (``.*.part.*``) a killed or cancelled block left; how many went."""
    gone = 0
    for leftover in Path(folder).glob(".*.part.*"):
        with contextlib.suppress(FileNotFoundError):
            leftover.unlink()
            gone += 1
    return gone


# --- the task --------------------------------------------------------------------------------
def _open_source(job: BlockJob) -> XyzSource | RasterSource:
    if job.template is not None:
        assert isinstance(job.grid, XyzGrid)
        return XyzSource(
            job.template, job.grid, job.fetch_workers, job.timeout, job.retries, cache_dir=job.cache_dir
        )
    assert job.raster is not None
    path, bbox, crs, res = job.raster
    return RasterSource(path, bbox, crs, res, stretch=job.stretch)


def segment_block(job: BlockJob, is_cancelled: Callable[[], bool] | None = None) -> BlockResult:
    """Segment one block and write its files and marker; ``Cancelled`` removes what it started.

    Files left by an earlier attempt (a worker killed mid-block) are removed
    first, and the old marker goes before anything is rewritten, so a marker
    always describes the files beside it.
    """
    t0 = time.perf_counter()
    cancelled = is_cancelled or (lambda: False)
    folder = Path(job.folder)
    folder.mkdir(parents=True, exist_ok=True)
    remove_partial(folder)
    with contextlib.suppress(FileNotFoundError):
        (folder / MARKER_NAME).unlink()
    model, load_s = cached_model(job.model, job.allow_generic_names, job.threads)
    sub = block_grid(job.grid, job.stripe)
    counter = CountAccumulator(sub, len(job.class_names))
    source = _open_source(job)
    outputs: RunOutputs | None = None
    try:
        outputs = RunOutputs(
            folder, sub, job.class_names, job.class_colors, job.write_classes, job.write_heatmaps
        )
        out = outputs
        bx, by = job.stripe.x0, job.stripe.y0

        def sink(rows: EncodedRows, y: int, x: int) -> None:
            counter.add(out.write_encoded(rows, y - by, x - bx), y - by)

        segment_stripes(
            model,
            source,
            [job.stripe],
            job.grid.height,
            job.overlap,
            job.batch_size,
            out.encode,
            sink,
            lambda _n: None,
            cancelled,
        )
        outputs.commit()
        outputs = None
        inside = core_tiles(job.grid, job.stripe)
        failed = sorted((t, r) for t, r in source.failed.items() if inside is None or t in inside)
        result = BlockResult(
            job.row,
            job.col,
            job.stripe.y0,
            counter.per_row,
            failed,
            source.fetched,
            job.stripe.windows.count,
            time.perf_counter() - t0,
            load_s,
        )
        write_text_atomic(folder / MARKER_NAME, json.dumps(_marker(job, result)))
        return result
    except BaseException:
        if outputs is not None:
            outputs.discard()
        raise
    finally:
        source.close()
