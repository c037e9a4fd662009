"""Segment an extent: plan windows, fetch imagery, run the model, blend, write, count.

The pipeline goes strip by strip (one row of windows at a time): while the
model runs on a strip, the next strip's tiles are already being fetched, and
the rows the previous strip finished, encoded as the files store them, are
being compressed into the GeoTIFFs and counted in a writer thread (GDAL lets
go of the GIL while it compresses). At most one strip waits for the writer,
so memory stays bounded by the extent's width.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from osgeo import gdal

from . import heap
from .blend import BandBlender
from .clean import count_band, min_area_pixels, sieve
from .counts import COUNTS_NAME, ClassCount, CountAccumulator, write_counts_csv
from .errors import Cancelled, ExtentError, ParameterError, SourceError
from .mask import AreaMask
from .model import SegModel
from .nodata_fill import fill_nodata
from .outputs import EncodedRows, RunOutputs
from .params import batch_for, check_request
from .runfolder import output_folder
from .sharedwindows import SharedWindows
from .sources import RasterSource, XyzSource, tile_name
from .staging import publish, staging_folder
from .strips import AreaFn, Strip, prefetch_strip
from .tileplan import (
    WINDOW_STEP,
    Grid,
    Stripe,
    Windows,
    check_bbox,
    check_extent,
    fewest_pixels_windows,
    overlap_pixels,
    plan_stripes,
    srs_from_user,
    transform_bounds,
    xyz_grid,
    xyz_tile_count,
    xyz_tiles_for,
    zoom_for_resolution,
)
from .tileurl import DEFAULT_TOKEN_ENV, TileTemplate, resolve_template
from .vectors import VECTORS_NAME, polygonize_classes

ProgressFn = Callable[[float, str], None]

#: Refuse extents beyond this many output pixels: a slip of the zoom, not a real request.
MAX_PIXELS = 2_000_000_000


@dataclass
class SegmentRequest:
    """What to segment, with what, and where the results go.

    Exactly one of ``tiles_url`` (an XYZ template or TileJSON URL, a token may be
    in it or in the environment variable ``token_env``) and ``raster_path`` (any
    raster GDAL opens). ``bbox`` is ``(minx, miny, maxx, maxy)`` in ``bbox_crs``.
    ``zoom`` None means the model's. ``overlap_percent`` None means the model's.
    ``window`` is the side of the model windows in pixels, a multiple of 32 (a
    model with a fixed input size runs that size only); None: the side from 256
    px up to the model's that covers the extent with the fewest pixels.
    ``write_vectors`` adds ``classes.gpkg`` (one polygon per region of a class);
    ``min_area_m2`` merges regions below that ground area into their neighbours
    in the class raster, the polygons and the counts alike; ``simplify_m``
    simplifies the polygons with that tolerance in ground metres.
    ``mask_path`` (a vector file) limits the run to its polygons: windows that
    touch none are not run, pixels outside are nodata and not counted.
    ``bands`` (raster sources) picks the raster bands for the model's input
    channels, in its order; default: the model's ``input_bands``, else the
    raster's first image bands (alpha only where the band says it is alpha).
    """

    model: str | os.PathLike[str]
    bbox: tuple[float, float, float, float]
    bbox_crs: str = "EPSG:4326"
    tiles_url: str | None = None
    raster_path: str | None = None
    zoom: int | None = None
    out_dir: str | os.PathLike[str] = "."
    write_classes: bool = True
    write_heatmaps: bool = True
    write_counts: bool = True
    overlap_percent: float | None = None
    window: int | None = None
    batch_size: int | None = None  # windows per model call; None: ``batch_for(window)``
    cache_dir: str | os.PathLike[str] | None = None
    token_env: str = DEFAULT_TOKEN_ENV
    token_any_host: bool = False  # send the token also to another host a TileJSON document names
    allow_generic_names: bool = False
    workers: int = 8
    # Columns processed at once: bounds memory whatever the extent's width. 2,048 held 33 to 46 MB
    # less at 1,000 tiles but ran 2.6 to 3.3 % slower (benchmarks/README.md, issue 11).
    stripe_width: int = 4096
    timeout: float = 20.0
    retries: int = 2
    write_vectors: bool = False
    min_area_m2: float | None = None
    simplify_m: float | None = None
    mask_path: str | os.PathLike[str] | None = None  # processing area: a vector file's polygons
    bands: Sequence[int] | None = None  # raster bands (1-based) for the model's channels, in its order


#: Request options a cluster run (``cluster.py``) does not do: they need the whole class raster at once.
SINGLE_PROCESS_OPTIONS = {
    "write_vectors": "--vectors",
    "min_area_m2": "--min-area",
    "simplify_m": "--simplify",
    "mask_path": "--mask",
    "bands": "--bands",
}


def window_sizes(model: SegModel, asked: int | None) -> list[int]:
    """The window sides a run may choose from: ``[asked]`` (``--window``), else the model's and smaller.

    A model with a dynamic input runs any multiple of 32 from half its window (not
    below 256 px, the XYZ tile) up to its window: ``fewest_pixels_windows`` picks
    the one that covers the extent with the fewest pixels. ``ParameterError`` when
    the model's input is fixed at another size than ``asked``, or ``asked`` is not
    a multiple of 32 (SegNet's five poolings, and most segmentation networks').
    """
    largest = model.window_size
    if asked is None:
        if model.fixed_size is not None or largest % WINDOW_STEP:
            return [largest]
        return list(range(min(largest, max(256, largest // 2)), largest + 1, WINDOW_STEP))
    if asked != largest and model.fixed_size is not None:
        raise ParameterError(
            f"{model.path.name} takes {model.window_size}-px windows only (a fixed input size), not {asked}"
        )
    if asked % WINDOW_STEP and asked != largest:
        raise ParameterError(
            f"the window must be a multiple of {WINDOW_STEP} px (e.g. 256 or 512), not {asked}"
        )
    return [asked]


def _overlap_for(model: SegModel, asked: float | None) -> Callable[[int], float]:
    """Overlap in percent of a window of each side: ``asked`` as it is, else the model's margin in pixels."""
    if asked is not None:
        return lambda _size: float(asked)
    percent = model.metadata.tiles_overlap
    margin = overlap_pixels(model.window_size, percent)
    return lambda size: percent if size == model.window_size else 100 * margin / size


def single_process_options(req: SegmentRequest) -> list[str]:
    """The CLI names of the options of ``req`` that only a single-process run does."""
    return [flag for attr, flag in SINGLE_PROCESS_OPTIONS.items() if getattr(req, attr, None)]


@dataclass
class SegmentResult:
    """What a run wrote and measured; paths are None for outputs not asked for."""

    classes_path: str | None
    heatmap_paths: dict[str, str]
    counts_csv: str | None
    counts: list[ClassCount]
    class_names: list[str]
    class_colors: list[str]
    tiles_total: int
    tiles_failed: list[tuple[str, str]] = field(default_factory=list)
    grid: Grid | None = None
    windows: int = 0
    vectors_path: str | None = None  # classes.gpkg, when asked for
    polygons: int = 0  # its features
    min_area_pixels: int = 0  # the sieve threshold used (0: no sieve)
    windows_run: int = 0  # windows the model ran: those with imagery under them
    window_size: int = 0  # their side in pixels, as the run chose it (``fewest_pixels_windows``)
    # Warnings on the result's quality: ``scale_note``, ``stretch.stretch_note``.
    notes: list[str] = field(default_factory=list)


@dataclass
class RunPlan:
    """What a request comes to: model, output grid, windows, and the source (resolved, or opened)."""

    model: SegModel
    grid: Grid
    windows: Windows
    overlap: int
    tiles: int
    batch_size: int  # windows per model call: the request's, else ``batch_for`` the windows
    source: XyzSource | RasterSource | None = None
    inside: set[tuple[int, int, int]] | None = None  # XYZ tiles under the grid itself
    template: TileTemplate | None = None  # the resolved XYZ template (token in it), for XYZ sources
    area: AreaMask | None = None  # the processing area on the grid, when the request has a mask
    notes: list[str] = field(default_factory=list)  # for ``SegmentResult.notes``


#: A raster this many times coarser than the model's resolution gets a note with its result.
COARSE_RATIO = 2.0


def scale_note(native_m: float, model_m: float | None) -> str | None:
    """A warning when imagery of ``native_m`` metres per pixel is much coarser than the
    ``model_m`` a model was trained at: read enlarged, it cannot show what the model looks
    for (roof edges at 1 m imagery for a 0.3 m model). Finer imagery is resampled down to
    the model's scale and needs no note."""
    if not model_m or native_m <= COARSE_RATIO * model_m:
        return None
    return (
        f"the raster's pixels are {native_m:.2g} m on the ground, {native_m / model_m:.1f} times the "
        f"model's {model_m:.2g} m: it is read enlarged, and what its pixels do not show the model "
        "cannot find; expect a poorer result (a model trained at the raster's resolution fits better)"
    )


def _check_source(req: SegmentRequest) -> None:
    if bool(req.tiles_url) == bool(req.raster_path):
        raise SourceError("give exactly one imagery source: a tile URL or a raster file")


def _zoom(req: SegmentRequest, model: SegModel) -> int:
    if req.zoom is not None:
        return int(req.zoom)
    if model.metadata.zoom is not None:
        return int(model.metadata.zoom)
    if model.metadata.resolution_cm:
        bbox = check_bbox(req.bbox)
        lonlat = transform_bounds(bbox, srs_from_user(req.bbox_crs), srs_from_user("EPSG:4326"))
        return zoom_for_resolution(model.metadata.resolution_cm / 100, (lonlat[1] + lonlat[3]) / 2)
    raise ParameterError(f"{model.path.name} names no zoom or resolution: choose a zoom")


def plan_run(
    req: SegmentRequest,
    open_source: bool,
    max_pixels: int | None = MAX_PIXELS,
    tile_set: bool = True,
    model: SegModel | None = None,
    template: TileTemplate | None = None,
) -> RunPlan:
    """Load the model, check the extent and source, and plan the grid and windows of ``req``.

    The parameters are checked against their spec first (``params.check_request``:
    ``ParameterError``). ``max_pixels`` None lifts the size limit (a cluster run
    cuts any extent into blocks); ``tile_set`` False skips the set of tiles under
    the grid, which a country-sized extent cannot afford in memory. ``model`` and
    ``template`` are those of an earlier plan of the same request (``count_tiles``
    before ``run_segment``): neither the model is loaded nor a TileJSON document
    fetched again.
    """
    _check_source(req)
    check_request(req)
    if model is None:
        model = SegModel.load(req.model, allow_generic_names=req.allow_generic_names)
    check_extent(req.bbox, req.bbox_crs)  # before the network or any file
    sizes = window_sizes(model, req.window)
    overlap_for = _overlap_for(model, req.overlap_percent)
    if req.tiles_url and (model.channels != 3 or req.bands):
        raise SourceError(
            f"{model.path.name} takes {model.channels} image bands; XYZ tiles are RGB: segment a raster "
            "file that has the bands"
            if model.channels != 3
            else "bands are chosen for raster files; XYZ tiles are RGB"
        )
    notes: list[str] = []
    if req.tiles_url:
        if template is None:
            template = resolve_template(req.tiles_url, req.token_env, token_any_host=req.token_any_host)
        grid = xyz_grid(req.bbox, req.bbox_crs, _zoom(req, model))
        if max_pixels is not None and grid.pixels > max_pixels:
            raise ExtentError(
                f"the extent is {grid.width:,} x {grid.height:,} pixels at zoom {grid.zoom}: "
                "zoom in, or choose a lower zoom"
            )
        windows = fewest_pixels_windows(grid.width, grid.height, sizes, overlap_for)
        # What the user asked for; the tiles around it that windows read for context are not counted.
        inside = {tuple(t) for t in xyz_tiles_for(grid)} if tile_set else None
        tiles = xyz_tile_count(grid)
        source = (
            XyzSource(template, grid, req.workers, req.timeout, req.retries, cache_dir=req.cache_dir)
            if open_source
            else None
        )
    else:
        res = model.metadata.resolution_cm / 100 if model.metadata.resolution_cm else None
        bands = req.bands or model.metadata.input_bands
        source = RasterSource(str(req.raster_path), req.bbox, req.bbox_crs, res, bands, model.channels)
        try:  # the stretch of wider bands is measured once, for the run, not for a count
            stretched = source.stretch_note() if open_source else None
        except BaseException:
            source.close()
            raise
        notes = [n for n in (scale_note(source.native_m, res), stretched) if n]
        grid = source.grid
        windows = fewest_pixels_windows(grid.width, grid.height, sizes, overlap_for)
        tiles = windows.count
        inside = None
        if not open_source:
            source.close()
            source = None
        template = None
    try:
        area = AreaMask(req.mask_path, grid) if req.mask_path else None
    except BaseException:
        if source is not None:
            source.close()
        raise
    overlap = windows.size - windows.stride
    batch = batch_for(windows.size, req.batch_size)
    return RunPlan(model, grid, windows, overlap, tiles, batch, source, inside, template, area, notes)


def count_tiles(req: SegmentRequest) -> int:
    """How many imagery tiles (XYZ) or model windows (raster) ``run_segment(req)`` will need.

    Loads the model and checks the source, so a bad model or URL fails here,
    before any long work.
    """
    return plan_run(req, open_source=False).tiles


#: How finished rows are stored: ``encode(probabilities (C, rows, cols), valid (rows, cols))``.
RowEncoder = Callable[[np.ndarray, np.ndarray], EncodedRows]

#: Where finished rows go, encoded: ``sink(rows, y, x)`` in grid pixels.
RowSink = Callable[[EncodedRows, int, int], None]

#: Rows blended and encoded at a time: the float probabilities of a strip never exist at once.
ENCODE_ROWS = 64


def infer_windows(
    model: SegModel,
    strip: Strip,
    batch_size: int,
    cancelled: Callable[[], bool] = lambda: False,
    on_batch: Callable[[int], None] = lambda _n: None,
    shared: SharedWindows | None = None,
) -> Iterator[tuple[int, int, np.ndarray, np.ndarray]]:
    """Stage *infer*: ``(x, y, probabilities (C, size, size), valid (size, size))`` of each window.

    The windows at ``strip.positions`` go through the model ``batch_size`` at a
    time, each read (``Strip.read_to``) just before its batch; a window with no
    imagery to write is neither run nor yielded. ``on_batch(n)`` after each batch
    and for each window left out, ``Cancelled`` when ``cancelled()`` turns true
    before a batch. With ``shared``, a window the previous stripe kept is taken,
    not run, and one the next stripe runs too is kept for it. Windows come out
    in ``positions``'s order either way, so they blend in the same order. Pixels
    without imagery are given their window's imagery mirrored at its edge
    (``fill_nodata``) before the model sees them.
    """
    size, x0 = strip.windows.size, strip.windows.x0
    ready: dict[tuple[int, int], np.ndarray] = {}
    if shared is not None:
        ready = {pos: kept for pos in strip.positions if (kept := shared.take(*pos)) is not None}
        if ready:
            on_batch(len(ready))
    todo = deque(pos for pos in strip.positions if pos not in ready)
    left_out: set[tuple[int, int]] = set()
    for pos in strip.positions:
        if pos not in ready and pos not in left_out:
            if cancelled():
                raise Cancelled("cancelled")
            batch: list[tuple[int, int]] = []
            while todo and len(batch) < batch_size:
                x, y = todo.popleft()
                strip.read_to(x + size)
                if strip.has_imagery(x):
                    batch.append((x, y))
                else:  # tiles the service lacks, beyond a raster's edge: a pixel's validity
                    # is the same in every window that reads it, so all this one covers is nodata
                    left_out.add((x, y))
                    on_batch(1)
            if batch:
                cols = [x - x0 for x, _ in batch]
                windows = [
                    fill_nodata(strip.pixels[:, c : c + size], strip.imagery[:, c : c + size]) for c in cols
                ]
                probs = model.run(model.normalize(np.stack(windows)))
                for (x, y), p in zip(batch, probs, strict=True):
                    ready[(x, y)] = p
                    if shared is not None and shared.wants(x, y):
                        shared.put(x, y, p)
                on_batch(len(batch))
        if pos in left_out:
            continue
        strip.read_to(pos[0] + size)  # a window the previous stripe ran is read here
        c = pos[0] - x0
        yield pos[0], pos[1], ready.pop(pos), strip.valid[:, c : c + size]


def blend_windows(blender: BandBlender, windows: Iterable[tuple[int, int, np.ndarray, np.ndarray]]) -> None:
    """Stage *blend*: add each ``(x, y, probabilities, valid)`` window to ``blender``."""
    for x, y, p, v in windows:
        blender.add(p, v, x, y)


def final_encoded(
    blender: BandBlender, stripe: Stripe, j: int, next_row: int, y_end: int, encode: RowEncoder
) -> tuple[EncodedRows, int] | None:
    """The rows strip ``j`` of ``stripe`` finished, encoded: ``(encode(probabilities, valid), first row)``, or None.

    Rows above the next strip's top get no more windows: they are final, and
    the band moves past them. Only the stripe's own columns and its rows from
    ``next_row`` (the first not yet handed out) to ``y_end`` are returned.
    They are blended and encoded ``ENCODE_ROWS`` rows at a time, so a strip's
    float probabilities (15 MB for two classes over 4,096 columns) never exist whole.
    """
    w = stripe.windows
    strip_y = w.y0 + j * w.stride
    final_until = strip_y + w.stride if j + 1 < w.ny else strip_y + w.size
    rows = min(final_until - blender.top, blender.size)
    top = blender.top
    lo, hi = max(top, next_row), min(top + rows, y_end)
    c0 = stripe.x0 - w.x0  # the stripe's first column inside the band
    cols = slice(c0, c0 + stripe.x1 - stripe.x0)
    parts = [
        encode(*blender.blended(r, min(r + ENCODE_ROWS, hi - top), cols))
        for r in range(lo - top, hi - top, ENCODE_ROWS)
    ]
    blender.advance(rows)
    return (EncodedRows.concat(parts), lo) if parts else None


def segment_stripes(
    model: SegModel,
    source: XyzSource | RasterSource,
    stripes: Sequence[Stripe],
    height: int,
    overlap: int,
    batch_size: int,
    encode: RowEncoder,
    sink: RowSink,
    on_batch: Callable[[int], None],
    cancelled: Callable[[], bool],
    area: AreaFn | None = None,
) -> None:
    """Fetch, infer and blend ``stripes`` in turn and hand each one's finished rows to ``sink``.

    The stage every run shares, single-process (stripes over the whole height)
    and on a cluster (one block, a stripe of a few rows, per task): for each
    strip, ``Strip`` (read as its windows run), ``infer_windows``, ``blend_windows`` and
    ``final_encoded`` (rows through ``encode``, ``RunOutputs.encode``). Only
    the stripe's own columns ``x0 .. x1`` and rows ``y0 .. y1`` (``y1`` None:
    to ``height``, the grid's) reach ``sink``, in order; ``sink`` (write and
    count) runs in a writer thread, one strip in flight at most.
    ``on_batch(n)`` is told after every model batch (and of windows skipped);
    ``Cancelled`` when ``cancelled()`` turns true between batches.
    ``area(y, h, x, w)`` (a processing area, ``AreaMask.mask``) limits the run:
    a strip or window with no pixel in it is neither fetched nor run nor
    blended, and pixels outside it are invalid. A pixel inside gets exactly the
    value of a run without ``area`` (every window that covers it touches the area).
    """
    classes = model.metadata.num_classes
    writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="satseg-writer")
    written: Future[None] | None = None  # the strip the writer is on
    shared = SharedWindows() if len(stripes) > 1 else None  # windows across a cut run once
    try:
        for k, stripe in enumerate(stripes):
            w = stripe.windows
            if shared is not None:
                shared.advance(w, stripes[k + 1].windows if k + 1 < len(stripes) else None)
            y_end = min(stripe.y1, height) if stripe.y1 is not None else height
            blender = BandBlender(classes, w.size, overlap, w.x0, w.span_width, w.y0)
            prefetch_strip(source, w, w.y0, area)
            next_row = stripe.y0  # first output row of this stripe not yet written
            for j in range(w.ny):
                strip_y = w.y0 + j * w.stride
                if j + 1 < w.ny:  # fetch the next strip while this one runs
                    prefetch_strip(source, w, strip_y + w.stride, area)
                elif k + 1 < len(stripes):  # or the next stripe's first strip
                    nxt = stripes[k + 1].windows
                    prefetch_strip(source, nxt, nxt.y0, area)
                if area is not None and cancelled():  # strips outside the area run no batch that would check
                    raise Cancelled("cancelled")
                strip = Strip(source, w, j, model.channels, area)  # read as its windows run
                if len(strip.positions) < w.nx:
                    if cancelled():
                        raise Cancelled("cancelled")
                    on_batch(w.nx - len(strip.positions))  # windows outside the area count as done
                blend_windows(blender, infer_windows(model, strip, batch_size, cancelled, on_batch, shared))
                del strip  # not held while the next strip is fetched
                done = final_encoded(blender, stripe, j, next_row, y_end, encode)
                if done is not None:
                    rows, lo = done
                    if written is not None:
                        written.result()  # one strip in flight at most; its errors surface here
                        heap.release_free_heap()  # the last strip's arrays are gone: no creep over a run
                    written = writer.submit(sink, rows, lo, stripe.x0)
                    next_row = lo + rows.classes.shape[0]
        if written is not None:
            written.result()
            written = None
    except BaseException:
        if written is not None:  # let the writer finish with the files before they go
            written.exception()
        raise
    finally:
        writer.shutdown(wait=True)
        if shared is not None:
            shared.close()


def failed_inside(source: XyzSource | RasterSource, inside: set[tuple[int, int, int]] | None) -> list:
    """The failed tiles a user asked for, sorted: a context tile beyond the extent only weakens the edge."""
    return sorted((t, r) for t, r in source.failed.items() if inside is None or t in inside)


def run_segment(
    req: SegmentRequest,
    progress: ProgressFn | None = None,
    is_cancelled: Callable[[], bool] | None = None,
    prepared: RunPlan | None = None,
) -> SegmentResult:
    """Segment ``req.bbox`` and write the outputs asked for into ``req.out_dir``.

    ``progress(fraction, message)`` is called after every batch; ``is_cancelled()``
    is checked between batches and, when true, the run stops with ``Cancelled``
    and removes every file it had started. Tiles that cannot be had become
    nodata (255 in the class raster and in the heatmaps) and are listed in the
    result; a refused token stops the run with ``SourceError``. ``prepared``, a
    ``plan_run`` of the same request (the dialog's tile count), gives its model
    and resolved tile template: neither is loaded or fetched again.

    The folder is one run's at a time (``runfolder.output_folder``: a second run
    into it gets ``FolderBusy``, what killed runs left is removed, a full or
    read-only disk is a ``SatsegError``), and its files are one run's: they are
    written into a staging folder and moved into place together, replacing the
    earlier run's (``staging``).
    """
    with output_folder(req.out_dir) as folder, staging_folder(folder) as staging:
        result = _run_segment(dataclasses.replace(req, out_dir=staging), progress, is_cancelled, prepared)
        moved = publish(staging, folder)

        def final(path: str | None) -> str | None:
            return None if path is None else moved.get(str(path), str(folder / Path(path).name))

        return dataclasses.replace(
            result,
            classes_path=final(result.classes_path),
            heatmap_paths={k: final(v) for k, v in result.heatmap_paths.items()},
            counts_csv=final(result.counts_csv),
            vectors_path=final(result.vectors_path),
        )


def _run_segment(
    req: SegmentRequest,
    progress: ProgressFn | None = None,
    is_cancelled: Callable[[], bool] | None = None,
    prepared: RunPlan | None = None,
) -> SegmentResult:
    """``run_segment`` into the (staging) folder ``req.out_dir``, which exists.

    The stages in order: *plan* (``plan_run``), then strip by strip *fetch*,
    *infer*, *blend* and *encode* (``segment_stripes``, ``RunOutputs.encode``) with
    *write* and *count* of the finished rows in the writer thread
    (``RunOutputs.write_encoded``, ``CountAccumulator.add``), then the whole-raster
    steps (``_finish``: sieve, polygons, overviews) and the table (``_write_counts``).
    """
    report = progress or (lambda _f, _m: None)
    cancelled = is_cancelled or (lambda: False)
    plan = plan_run(
        req,
        open_source=True,
        model=prepared.model if prepared is not None else None,
        template=prepared.template if prepared is not None else None,
    )
    source = plan.source
    assert source is not None
    meta = plan.model.metadata
    counter = CountAccumulator(plan.grid, meta.num_classes)
    sieve_px = min_area_pixels(plan.grid, req.min_area_m2) if req.min_area_m2 else 0
    vectors_tmp = Path(req.out_dir) / f".{Path(VECTORS_NAME).stem}.{uuid.uuid4().hex[:8]}.part.gpkg"
    outputs: RunOutputs | None = None
    try:
        outputs = RunOutputs(
            Path(req.out_dir),
            plan.grid,
            list(meta.class_names),
            list(meta.class_colors),
            req.write_classes,
            req.write_heatmaps,
            need_classes=req.write_vectors or sieve_px > 1,
        )
        out = outputs
        stripes = plan_stripes(plan.grid.width, plan.windows, req.stripe_width)
        total = sum(stripe.windows.count for stripe in stripes)
        done = 0
        report(0.0, f"segmenting {total} windows ({plan.tiles} tiles)")

        def on_batch(n: int) -> None:
            nonlocal done
            done += n
            report(done / total, f"segmented {done}/{total} windows")

        def write_and_count(rows: EncodedRows, y: int, x: int) -> None:
            counter.add(out.write_encoded(rows, y, x), y)

        segment_stripes(
            plan.model,
            source,
            stripes,
            plan.grid.height,
            plan.overlap,
            plan.batch_size,
            out.encode,
            write_and_count,
            on_batch,
            cancelled,
            area=plan.area.mask if plan.area is not None else None,
        )
        if cancelled():
            raise Cancelled("cancelled")
        failed = _failed_tiles(plan)
        classes_path, heatmaps, vectors_path, polygons, counter = _finish(
            req, plan, outputs, counter, sieve_px, vectors_tmp, report, cancelled
        )
        outputs = None
        counts, counts_csv = _write_counts(req, plan, counter)
        report(1.0, "done")
        return SegmentResult(
            classes_path=classes_path,
            heatmap_paths=heatmaps,
            counts_csv=counts_csv,
            counts=counts,
            class_names=list(meta.class_names),
            class_colors=list(meta.class_colors),
            tiles_total=plan.tiles,
            tiles_failed=[(tile_name(t), r) for t, r in failed],
            grid=plan.grid,
            windows=total,
            windows_run=plan.model.windows_run,
            window_size=plan.windows.size,
            vectors_path=vectors_path,
            polygons=polygons,
            min_area_pixels=sieve_px,
            notes=list(plan.notes),
        )
    except BaseException:
        if outputs is not None:
            outputs.discard()
        with contextlib.suppress(FileNotFoundError):
            vectors_tmp.unlink()
        raise
    finally:
        source.close()


def _failed_tiles(plan: RunPlan) -> list:
    """The failed tiles the user asked for; ``SourceError`` when not one tile could be had."""
    assert plan.source is not None
    failed = failed_inside(plan.source, plan.inside)
    if failed and len(failed) >= plan.tiles:
        reasons = sorted({r for _, r in failed})
        raise SourceError(
            f"no imagery tile could be had ({len(failed)} tiles failed: {'; '.join(reasons[:3])})"
        )
    return failed


def _finish(
    req: SegmentRequest,
    plan: RunPlan,
    outputs: RunOutputs,
    counter: CountAccumulator,
    sieve_px: int,
    vectors_tmp: Path,
    report: ProgressFn,
    cancelled: Callable[[], bool],
) -> tuple[str | None, dict[str, str], str | None, int, CountAccumulator]:
    """The steps that need the whole class raster: sieve, polygons, overviews; then commit the rasters.

    Returns ``(classes path, heatmap paths, polygons path, polygons, counter)``; after a
    sieve, the counter counts what the class raster shows.
    """
    meta = plan.model.metadata
    polygons = 0

    def postprocess(band: gdal.Band) -> None:
        nonlocal counter, polygons
        if sieve_px > 1:
            report(1.0, f"merging regions under {sieve_px} pixels into their neighbours")
            sieve(band, sieve_px)
            counter = count_band(band, plan.grid, meta.num_classes)  # the table counts what the raster shows
        if req.write_vectors:
            report(1.0, "tracing the polygons")
            polygons = polygonize_classes(
                band, plan.grid, list(meta.class_names), vectors_tmp, req.simplify_m, is_cancelled=cancelled
            ).features

    report(1.0, "writing overviews")
    classes_path, heatmaps = outputs.commit(postprocess)
    vectors_path = None
    if req.write_vectors:
        vectors_path = str(Path(req.out_dir) / VECTORS_NAME)
        os.replace(vectors_tmp, vectors_path)
    return classes_path, heatmaps, vectors_path, polygons, counter


def _write_counts(
    req: SegmentRequest, plan: RunPlan, counter: CountAccumulator
) -> tuple[list[ClassCount], str | None]:
    """Stage *count*, its end: the table of ``counter`` and, when asked for, its CSV."""
    meta = plan.model.metadata
    counts = counter.table(list(meta.class_names), list(meta.class_colors))
    counts_csv = None
    if req.write_counts:
        counts_csv = str(Path(req.out_dir) / COUNTS_NAME)
        write_counts_csv(counts_csv, counts)
    return counts, counts_csv


def describe_plan(req: SegmentRequest) -> str:
    """One line about what ``req`` would do (grid size, zoom, windows, tiles)."""
    plan = plan_run(req, open_source=False)
    g = plan.grid
    zoom = f" at zoom {g.zoom}" if hasattr(g, "zoom") else ""
    res = abs(g.geotransform[1])
    return (
        f"{g.width} x {g.height} pixels{zoom} ({res:.3g} units/px), {plan.windows.count} windows of "
        f"{plan.windows.size} px, {plan.tiles} tiles"
    )


__all__ = [
    "ClassCount",
    "RunPlan",
    "SegmentRequest",
    "SegmentResult",
    "Strip",
    "blend_windows",
    "count_tiles",
    "describe_plan",
    "final_encoded",
    "infer_windows",
    "plan_run",
    "prefetch_strip",
    "run_segment",
    "segment_stripes",
    "single_process_options",
]
