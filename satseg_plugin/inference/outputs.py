"""The GeoTIFFs of a run, written strip by strip and renamed into place only when complete.

``classes.tif``: uint8 class indices, a colour table with the class colours,
the class names as the band's category names, 255 = nodata. One
``heatmap_<class>.tif`` per class: the probability in 8 bits, stored as 0..254
with the band scale ``1/254`` and offset 0 (so GDAL's unscaled reading and
QGIS show 0..1, in steps of 0.004), 255 = nodata. All are tiled,
DEFLATE-compressed and, when larger than ``OVERVIEW_MIN_SIDE``, carry overviews
so QGIS draws them fast at any scale.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import sys
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import numpy as np
from osgeo import gdal

from .metadata import parse_hex_color
from .runfolder import probe_write
from .tileplan import Grid

gdal.UseExceptions()

CLASS_NODATA = 255
#: Heatmaps store ``round(p * HEATMAP_STEPS)``; 255, one above 1.0, is nodata.
HEATMAP_STEPS = 254
HEATMAP_SCALE = 1 / HEATMAP_STEPS
HEATMAP_NODATA = 255
CLASSES_NAME = "classes.tif"
BLOCK = 256
#: 8-bit heatmaps compress 4 times faster than float32 ones did, to a fifth of the bytes (two
#: 2048x2048 real heatmaps: 133 against 568 ms, 5.0 against 27.2 MB, GDAL 3.6, under load).
#: DEFLATE level 6 costs 4 times level 1's time for 3 % fewer bytes, PREDICTOR=2 14 % more time
#: for 6 % fewer, NUM_THREADS=2 slows it on 2 busy cores: fast DEFLATE, no predictor.
#: ZSTD would be faster again, but older GIS software cannot read it.
_HEATMAP_OPTIONS = ["ZLEVEL=1"]
_CREATE = ["TILED=YES", f"BLOCKXSIZE={BLOCK}", f"BLOCKYSIZE={BLOCK}", "COMPRESS=DEFLATE", "BIGTIFF=IF_SAFER"]


#: The longest class part of a heatmap's file name, in UTF-8 bytes.
MAX_NAME_BYTES = 80


def heatmap_name(class_name: str) -> str:
    """``heatmap_<class>.tif`` with the class name made safe for any file system.

    >>> heatmap_name("blue roof")
    'heatmap_blue_roof.tif'

    A name longer than ``MAX_NAME_BYTES`` (in UTF-8; file systems allow 255 bytes, and the
    temporary name adds some) is cut and given 8 hex digits of its SHA-1, so that two long names
    that start alike still get two files.
    """
    safe = re.sub(r"[^\w.-]+", "_", class_name, flags=re.UNICODE).strip("_") or "class"
    if len(safe.encode("utf-8")) > MAX_NAME_BYTES:
        cut = safe.encode("utf-8")[: MAX_NAME_BYTES - 9].decode("utf-8", "ignore")
        safe = f"{cut}_{hashlib.sha1(class_name.encode('utf-8')).hexdigest()[:8]}"
    return f"heatmap_{safe}.tif"


def heatmap_names(class_names: Sequence[str]) -> list[str]:
    """``heatmap_name`` of every class, made distinct: a later class whose file name (compared
    without case, as Windows and macOS do) is taken gets ``_2``, ``_3``, ...

    >>> heatmap_names(["blue roof", "blue_roof", "Blue roof"])
    ['heatmap_blue_roof.tif', 'heatmap_blue_roof_2.tif', 'heatmap_Blue_roof_3.tif']
    """
    taken: set[str] = set()
    out = []
    for name in class_names:
        file = heatmap_name(name)
        stem, n = file[: -len(".tif")], 1
        while file.lower() in taken:
            n += 1
            file = f"{stem}_{n}.tif"
        taken.add(file.lower())
        out.append(file)
    return out


def most_probable(probabilities: np.ndarray) -> np.ndarray:
    """``probabilities.argmax(axis=0)`` as uint8 (the first class wins a tie), a class at a time.

    Two passes over each class's plane instead of a reduction across planes: 5 ms rather
    than 13 ms for two classes on a strip of 476 x 2,048 pixels, work that shares the cores
    with the model.

    >>> most_probable(np.array([[0.2, 0.5, 0.9], [0.8, 0.5, 0.1]], np.float32))
    array([1, 0, 0], dtype=uint8)
    """
    best = probabilities[0].copy()
    classes = np.zeros(best.shape, np.uint8)
    for i in range(1, probabilities.shape[0]):
        higher = probabilities[i] > best
        classes[higher] = i
        np.maximum(best, probabilities[i], out=best)
    return classes


def quantize_probability(probability: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """A heatmap's bytes: ``round(p * HEATMAP_STEPS)`` where ``valid``, else ``HEATMAP_NODATA``.

    >>> quantize_probability(np.array([0.0, 0.5, 1.0, 0.7], np.float32), np.array([1, 1, 1, 0], bool))
    array([  0, 127, 254, 255], dtype=uint8)
    """
    scaled = probability * np.float32(HEATMAP_STEPS) + np.float32(0.5)
    np.clip(scaled, 0, HEATMAP_STEPS, out=scaled)  # a blend's rounding may pass 1.0 by an ulp
    out = scaled.astype(np.uint8)
    out[~valid] = HEATMAP_NODATA
    return out


class EncodedRows(NamedTuple):
    """Output rows as the files store them: a quarter of float32 probabilities' bytes or less."""

    #: ``(rows, width)`` class indices, ``CLASS_NODATA`` where invalid
    classes: np.ndarray
    #: ``(rows, width)`` heatmap bytes (``quantize_probability``), one per heatmap written, in class order
    heatmaps: tuple[np.ndarray, ...]

    @staticmethod
    def concat(parts: Sequence[EncodedRows]) -> EncodedRows:
        """The rows of ``parts``, one below the other."""
        if len(parts) == 1:
            return parts[0]
        heatmaps = zip(*(p.heatmaps for p in parts), strict=True)
        return EncodedRows(
            np.concatenate([p.classes for p in parts]), tuple(np.concatenate(h) for h in heatmaps)
        )


def style_class_band(band: gdal.Band, names: Sequence[str], colors: Sequence[str]) -> None:
    """Palette, category names and description of a class raster's band, as QGIS and GDAL show them.

    One colour per class, ``CLASS_NODATA`` transparent and named "nodata":
    the single-process outputs and a cluster run's blocks and mosaic look alike.
    """
    table = gdal.ColorTable()
    for i, color in enumerate(colors):
        table.SetColorEntry(i, (*parse_hex_color(color), 255))
    table.SetColorEntry(CLASS_NODATA, (0, 0, 0, 0))
    band.SetRasterColorTable(table)
    band.SetRasterColorInterpretation(gdal.GCI_PaletteIndex)
    band.SetRasterCategoryNames([*names, *[""] * (CLASS_NODATA - len(names)), "nodata"])
    band.SetDescription("class")


#: Rasters up to this many pixels a side get no overviews. GDAL draws the whole of one on a
#: 1,000-px view as fast without them (3 ms at 2,048 px, 5 at 3,072: DEFLATE 8-bit tiles, 1 MB
#: block cache), while building them took 0.11 s of a 6.5 s run of 8 x 8 tiles; at 4,096 px the
#: view took 446 ms without them and 2 ms with them.
OVERVIEW_MIN_SIDE = 3072


def overview_factors(width: int, height: int, smallest: int = 256) -> list[int]:
    """Overview factors 2, 4, 8, ... until the overview fits in ``smallest`` pixels.

    None for a raster of at most ``OVERVIEW_MIN_SIDE`` pixels a side.
    """
    if max(width, height) <= OVERVIEW_MIN_SIDE:
        return []
    factors, f = [], 2
    while max(width, height) / (f // 2) > smallest:
        factors.append(f)
        f *= 2
    return factors


class _Raster:
    """One GeoTIFF being written under a temporary name beside its final path."""

    def __init__(self, final: Path, grid: Grid, dtype: int, options: Sequence[str] = ()) -> None:
        self.final = final
        self.tmp = final.with_name(f".{final.stem}.{uuid.uuid4().hex[:8]}.part.tif")
        self.ds = gdal.GetDriverByName("GTiff").Create(
            str(self.tmp), grid.width, grid.height, 1, dtype, [*_CREATE, *options]
        )
        self.ds.SetGeoTransform(grid.geotransform)
        self.ds.SetProjection(grid.crs_wkt)
        self.band = self.ds.GetRasterBand(1)
        self._pending: dict[int, list] = {}  # column -> [first row, row arrays not yet written]

    def write(self, rows: np.ndarray, y: int, x: int = 0) -> None:
        """Take rows ``y..`` at column ``x`` (each column range gets its rows in order).

        Whole rows of blocks go to disk at once and leave GDAL's block cache (by
        default 5 % of RAM), so memory does not grow with the extent, and no block
        is compressed twice.
        """
        pending = self._pending.setdefault(x, [y, []])
        if not pending[1]:
            pending[0] = y
        pending[1].append(rows)
        cut = (y + rows.shape[0]) // BLOCK * BLOCK
        if cut > pending[0]:
            data = np.concatenate(pending[1]) if len(pending[1]) > 1 else pending[1][0]
            k = cut - pending[0]
            self.band.WriteArray(data[:k], x, pending[0])
            self._flush_cache()
            pending[1] = [data[k:]] if k < data.shape[0] else []
            pending[0] = cut

    def _drain(self) -> None:
        for x, (y, parts) in self._pending.items():
            if parts:
                self.band.WriteArray(np.concatenate(parts), x, y)
        self._pending.clear()

    def flush(self) -> gdal.Band:
        """Write every row taken so far and return the band (still open, writable)."""
        self._drain()
        self._flush_cache()
        return self.band

    def _flush_cache(self) -> None:
        """``FlushCache``: a write error raises, and so does a side file GDAL could not save
        (the class names' ``.aux.xml``: a mere warning in GDAL), with the disk's reason."""
        with _gdal_warnings() as warnings:
            self.ds.FlushCache()
        lost = [w for w in warnings if "Unable to save auxiliary information" in w]
        if lost:
            raise probe_write(self.tmp.parent) or RuntimeError(lost[0])

    def finish(self, resampling: str) -> None:
        """Build overviews and close; the file stays under its temporary name.

        ``RunOutputs.commit`` sets the overviews' compression and GDAL's block cache around it.
        """
        self._drain()
        factors = overview_factors(self.ds.RasterXSize, self.ds.RasterYSize)
        if factors:
            self.ds.BuildOverviews(resampling, factors)
        # A write error (a full disk) raises here; at closing GDAL could only print it, and the
        # damaged file would be published.
        self._flush_cache()
        self.band = None
        self.ds = None

    def discard(self) -> None:
        self.band = None
        with _closing_quietly():  # after a full disk the close fails too: the file goes anyway
            self.ds = None
        for leftover in (self.tmp, Path(f"{self.tmp}.aux.xml"), Path(f"{self.tmp}.ovr")):
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()

    def publish(self) -> None:
        aux = Path(f"{self.tmp}.aux.xml")
        if aux.exists():  # GTiff keeps category names in the PAM side file
            os.replace(aux, f"{self.final}.aux.xml")
        os.replace(self.tmp, self.final)


@contextlib.contextmanager
def _gdal_warnings():
    """Collect the GDAL warnings of the block (this thread's) instead of printing them."""
    seen: list[str] = []

    def handler(level: int, _code: int, message: str) -> None:
        if level == gdal.CE_Warning:
            seen.append(message)

    gdal.PushErrorHandler(handler)
    try:
        yield seen
    finally:
        gdal.PopErrorHandler()


@contextlib.contextmanager
def _closing_quietly():
    """Close datasets whose files are removed next without GDAL's messages about what it could
    not write, printed as warnings and as "Exception ignored" tracebacks from the destructor."""
    hook = sys.unraisablehook
    sys.unraisablehook = (
        lambda unraisable: None if isinstance(unraisable.exc_value, RuntimeError) else hook(unraisable)
    )
    gdal.PushErrorHandler("CPLQuietErrorHandler")
    try:
        yield
    finally:
        gdal.PopErrorHandler()
        sys.unraisablehook = hook


@contextlib.contextmanager
def _config(key: str, value: str):
    old = gdal.GetConfigOption(key)
    gdal.SetConfigOption(key, value)
    try:
        yield
    finally:
        gdal.SetConfigOption(key, old)


#: GDAL's block cache while overviews are built. By default the cache may take 5 % of RAM,
#: and overview building fills it with the whole raster: 0.9 GB for 2,000 tiles (measured).
#: It fills whatever cap it gets: 16 MB rather than 64 cut the end of a 1,000-tile run from
#: 383-390 to 360-361 MB peak at the same overview time within noise (two runs each; a single
#: 32000 x 2048 overview build: +20 MB instead of +68, 0.9 to 1.0 s either way).
OVERVIEW_CACHE_BYTES = 16 * 2**20


@contextlib.contextmanager
def _small_block_cache():
    """Cap GDAL's (process-wide) block cache for a moment; blocks above the cap are written out."""
    old = gdal.GetCacheMax()
    gdal.SetCacheMax(min(old, OVERVIEW_CACHE_BYTES))
    try:
        yield
    finally:
        gdal.SetCacheMax(old)


class RunOutputs:
    """The class raster and heatmaps of one run, written strip by strip.

    ``encode(probabilities, valid)`` turns ``(C, rows, width)`` probabilities into
    the files' bytes, ``write_encoded(rows, y)`` writes them as output rows
    ``y..``; ``commit()`` builds overviews and renames every file into
    place; ``discard()`` removes every temporary file (on error or cancel).
    ``need_classes`` keeps a class raster for ``commit``'s ``postprocess`` (sieve,
    polygons) even when ``write_classes`` is False; it is then never published.
    """

    def __init__(
        self,
        out_dir: str | os.PathLike[str],
        grid: Grid,
        class_names: Sequence[str],
        class_colors: Sequence[str],
        write_classes: bool = True,
        write_heatmaps: bool = True,
        need_classes: bool = False,
    ) -> None:
        self.out_dir = Path(out_dir)
        self.publish_classes = write_classes
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.class_names = list(class_names)
        self.classes: _Raster | None = None
        self.heatmaps: dict[str, _Raster] = {}
        try:
            if write_classes or need_classes:
                self.classes = _Raster(self.out_dir / CLASSES_NAME, grid, gdal.GDT_Byte, ["PREDICTOR=2"])
                self.classes.band.SetNoDataValue(CLASS_NODATA)
                style_class_band(self.classes.band, self.class_names, class_colors)
            if write_heatmaps:
                for name, file in zip(self.class_names, heatmap_names(self.class_names), strict=True):
                    r = _Raster(self.out_dir / file, grid, gdal.GDT_Byte, _HEATMAP_OPTIONS)
                    r.band.SetNoDataValue(HEATMAP_NODATA)
                    r.band.SetScale(HEATMAP_SCALE)
                    r.band.SetOffset(0.0)
                    r.band.SetDescription(f"probability of {name}")
                    self.heatmaps[name] = r
        except BaseException:
            self.discard()
            raise

    @property
    def _all(self) -> list[_Raster]:
        return [r for r in (self.classes, *self.heatmaps.values()) if r is not None]

    def encode(self, probabilities: np.ndarray, valid: np.ndarray) -> EncodedRows:
        """``(C, rows, width)`` probabilities as the files store them (the class indices always: counts need them).

        Done where the rows are blended, so what waits for the writer thread is bytes, not floats.
        """
        classes = most_probable(probabilities)
        classes[~valid] = CLASS_NODATA
        heatmaps = tuple(
            quantize_probability(probabilities[i], valid)
            for i, name in enumerate(self.class_names)
            if name in self.heatmaps
        )
        return EncodedRows(classes, heatmaps)

    def write_encoded(self, rows: EncodedRows, y: int, x: int = 0) -> np.ndarray:
        """Write encoded rows from ``y`` at column ``x``; return their class indices."""
        if self.classes is not None:
            self.classes.write(rows.classes, y, x)
        for raster, part in zip(self.heatmaps.values(), rows.heatmaps, strict=True):
            raster.write(part, y, x)
        return rows.classes

    def commit(
        self, postprocess: Callable[[gdal.Band], None] | None = None
    ) -> tuple[str | None, dict[str, str]]:
        """Finish every file and rename it into place; return ``(classes path, {class: heatmap path})``.

        ``postprocess(band)`` gets the complete class raster's band (writable, no
        overviews yet) first: the sieve changes it in place, the polygons read it.
        """
        try:
            if postprocess is not None and self.classes is not None:
                postprocess(self.classes.flush())
            if self.classes is not None and not self.publish_classes:
                self.classes.discard()  # only needed for postprocess
                self.classes = None
        except BaseException:
            self.discard()
            raise
        jobs = [(r, "AVERAGE") for r in self.heatmaps.values()]
        if self.classes is not None:
            jobs.insert(0, (self.classes, "NEAREST"))
        try:
            # Each file's overviews are independent, and GDAL lets go of the GIL while it
            # builds them: one thread per core finishes them side by side.
            workers = max(1, min(len(jobs), os.cpu_count() or 1))
            with (
                _config("COMPRESS_OVERVIEW", "DEFLATE"),
                _small_block_cache(),
                ThreadPoolExecutor(workers, thread_name_prefix="satseg-ovr") as pool,
            ):
                for done in [pool.submit(r.finish, resampling) for r, resampling in jobs]:
                    done.result()
        except BaseException:
            self.discard()
            raise
        for r in self._all:
            r.publish()
        classes = str(self.classes.final) if self.classes is not None else None
        return classes, {name: str(r.final) for name, r in self.heatmaps.items()}

    def discard(self) -> None:
        for r in self._all:
            r.discard()
