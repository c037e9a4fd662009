"""One chunk of ``build --cluster``: burn the labels of a few sampled tiles and fetch their imagery.

A ``ChunkJob`` holds plain, picklable values (the OSM file's path, the class
config as JSON, the tile grid, the imagery template with its token); Dask
runs ``chunk_task`` on a worker. The chunk draws its tiles' labels exactly as
a single-process build draws them (``build.draw_features``: the same read of
the bbox's extent, the same shapes), writes ``labels/color/<id>.png`` and,
for the tiles with enough labelled pixels, ``images/<id>.png`` (each file
under a temporary name, then renamed; images already on disk and intact are
kept), and returns its per-class pixel counts, filtered ids and download
report for the client to merge.

Where the features come from (``LabelSource.read``):

- ``worker``: each worker process reads and draws the whole bbox once and
  keeps it for every chunk it is given (``_worker_store``);
- ``chunk``: each chunk reads only the features meeting its own tiles
  (plus the margin a stroke reaches), each clipped as the whole read clips it.

Nothing here imports Dask except ``CancelFlag`` (``satseg_plugin.inference.daskrun``).
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from satseg_plugin.inference.atomic import write_bytes_atomic
from satseg_plugin.inference.daskrun import CancelFlag
from satseg_plugin.inference.errors import Cancelled
from satseg_plugin.inference.tileurl import TileTemplate

from .build import TILE_SIZE, class_counts, draw_features, label_extent
from .classes import ClassConfig, parse_config
from .imagery import Downloader
from .osm_source import OsmSource
from .render import LabelStore, encode_label_png
from .tiles import Tile, tile_id

READ_MODES = ("worker", "chunk")


@dataclass(frozen=True)
class LabelSource:
    """How a chunk draws its labels: the client's own read of the OSM file, repeated on the worker."""

    osm: str  # absolute path, the same on every worker (a shared file system)
    osm_stat: tuple[int, int]  # size and mtime_ns: a changed file is read again
    classes: Any  # the class config as JSON (``ClassConfig.raw``): the workers need no copy of the file
    classes_path: str
    zoom: int
    trange: tuple[int, int, int, int]  # the bbox's tiles
    extent: tuple[float, float, float, float]  # EPSG:3857, read and clipped to (build.label_extent)
    min_labelled: int
    read: str = "worker"  # READ_MODES

    def key(self) -> tuple:
        return (self.osm, self.osm_stat, json.dumps(self.classes, sort_keys=True), self.zoom, self.trange,
                self.extent)  # fmt: skip


@dataclass(frozen=True)
class ChunkJob:
    """The tiles of one chunk (in sample order) and what to make of them."""

    index: int
    tiles: tuple[Tile, ...]
    out: str  # the dataset folder, absolute
    labels: LabelSource | None  # None: only the imagery of an existing dataset's tiles
    template: TileTemplate | None  # None: labels only
    workers: int = 8
    timeout: float = 30.0
    retries: int = 3
    cancel_event: str | None = None  # the Dask Event that stops the run (daskrun.CancelFlag)

    @property
    def name(self) -> str:
        return f"chunk{self.index:05d}"


@dataclass
class ChunkResult:
    """What one chunk wrote; the client merges these into the dataset's lists and manifest."""

    index: int
    pixels: list[int] = field(default_factory=list)  # per class, over the chunk's filtered tiles
    filtered: list[str] = field(default_factory=list)  # ids with at least min_labelled labelled pixels
    fetched: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    damaged: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    asked: int = 0  # images not on disk before, asked of the service
    read_seconds: float = 0.0  # reading and drawing the OSM features (0: the worker's copy)
    seconds: float = 0.0
    worker_pid: int = 0


_cache_lock = threading.Lock()
_cache: dict[tuple, tuple[LabelStore, threading.Lock]] = {}


def _config(src: LabelSource) -> ClassConfig:
    return parse_config(src.classes, src.classes_path)


def _worker_store(src: LabelSource) -> tuple[LabelStore, threading.Lock, float]:
    """The whole bbox drawn once per worker process; ``(store, its lock, seconds spent reading now)``.

    A worker may run chunks in several threads: a store renders one tile at a
    time, under its lock. One store is kept (the latest run's), so a
    long-lived worker does not pile up the features of every run it served.
    """
    key = src.key()
    with _cache_lock:
        if key in _cache:
            return (*_cache[key], 0.0)
        t0 = time.perf_counter()
        source = OsmSource(src.osm)
        store, _read, _matched = draw_features(
            source, _config(src), src.zoom, src.trange, src.extent, find_tiles=False
        )
        _cache.clear()
        _cache[key] = (store, threading.Lock())
        return (*_cache[key], time.perf_counter() - t0)


def _chunk_store(src: LabelSource, tiles: tuple[Tile, ...]) -> tuple[LabelStore, threading.Lock, float]:
    """Only the features that can draw on ``tiles``, shaped as the whole read shapes them."""
    t0 = time.perf_counter()
    config = _config(src)
    xs, ys = [t[0] for t in tiles], [t[1] for t in tiles]
    within = label_extent(config, src.zoom, (min(xs), min(ys), max(xs), max(ys)))
    store, _read, _matched = draw_features(
        OsmSource(src.osm), config, src.zoom, src.trange, src.extent, within=within, find_tiles=False
    )
    return store, threading.Lock(), time.perf_counter() - t0


def build_chunk(job: ChunkJob, cancelled=lambda: False) -> ChunkResult:
    """Burn and fetch one chunk; ``Cancelled`` when ``cancelled()`` turns true (nothing half-written)."""
    t0 = time.perf_counter()
    out = Path(job.out)
    result = ChunkResult(job.index, worker_pid=os.getpid())
    image_tiles: list[Tile] = list(job.tiles)
    if job.labels is not None:
        src = job.labels
        if src.read == "chunk":
            store, lock, result.read_seconds = _chunk_store(src, job.tiles)
        else:
            store, lock, result.read_seconds = _worker_store(src)
        n = store.config.num_classes
        pixels = np.zeros(n, np.int64)
        labels_dir = out / "labels" / "color"
        image_tiles = []
        for x, y, z in job.tiles:
            if cancelled():
                raise Cancelled("cancelled")
            with lock:
                labels = store.render(x, y)
            counts = class_counts(labels, n)
            tid = tile_id((x, y, z))
            write_bytes_atomic(labels_dir / f"{tid}.png", encode_label_png(labels))
            if int(counts[1:].sum()) >= src.min_labelled:
                result.filtered.append(tid)
                image_tiles.append((x, y, z))
                pixels += counts
        result.pixels = [int(v) for v in pixels]
    if job.template is not None and image_tiles:

        def progress(_n: int) -> None:
            if cancelled():  # raised inside the download: it stops and removes what it started
                raise Cancelled("cancelled")

        downloader = Downloader(
            job.template,
            out / "images",
            workers=job.workers,
            timeout=job.timeout,
            retries=job.retries,
            tile_size=TILE_SIZE,
        )
        report = downloader.fetch(image_tiles, progress, require_any=False)
        result.fetched, result.kept = report.fetched, report.kept
        result.damaged, result.skipped = report.damaged, report.skipped
        result.asked = len(image_tiles) - len(report.kept)
    result.seconds = time.perf_counter() - t0
    return result


def chunk_task(job: ChunkJob) -> ChunkResult:
    """The Dask task of one chunk: ``build_chunk`` stopped by the run's cancel ``Event``."""
    cancelled = CancelFlag(job.cancel_event)
    if cancelled():  # a chunk that starts after the cancel writes nothing
        raise Cancelled("cancelled")
    return build_chunk(job, cancelled)


def clear_worker_cache() -> None:
    """Drop the worker's copy of the features (benchmarks measure a cold read with it)."""
    with _cache_lock, contextlib.suppress(Exception):
        _cache.clear()
