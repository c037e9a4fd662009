"""Imagery sources that hand out the pixels of an output grid, strip by strip.

``XyzSource`` fetches XYZ tiles over HTTP(S) with a pool of threads, with
timeouts, retries with backoff and an optional on-disk cache (verified before
reuse); a tile must arrive whole, be 256 x 256 and decode cleanly
(``tilefetch``). A tile that cannot be had becomes nodata and is listed, an HTTP 401/403 stops the run
with a message about the token; tiles are RGB. ``RasterSource`` reads any raster
GDAL opens (GeoTIFF, VRT, a WMS/XYZ description...) warped onto the grid, the
bands the model takes in its order (``raster_bands``: RGB, RGB + near-infrared...);
bands of more than 8 bits are stretched to 0..255 (``stretch``).

Both offer ``prefetch(y, h, x, w)`` (start fetching those rows and columns) and
``read(y, h, x, w)`` (``(pixels, valid)``: ``(h, w, channels)`` uint8 and
``(h, w)`` bool, False for nodata and for pixels outside the source). What
``segment`` reads fits a grid ``tileplan`` planned; ``ExtentError`` for an
extent outside a raster, ``SourceError`` for a raster or service that cannot
be used (a run parameter out of range is ``params``' ``ParameterError``).
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import threading
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
from osgeo import gdal

from .atomic import write_bytes_atomic
from .errors import ExtentError, SourceError
from .imageio import to_rgb
from .stretch import Stretch, raster_stretch, stretch_note
from .tilefetch import MAX_BODY_BYTES, ThreadSessions, TileFailure, check_tile, fetch_tile
from .tileplan import (
    XYZ_TILE,
    Grid,
    Tile,
    XyzGrid,
    check_extent,
    crs_resolution,
    ground_pixel_size,
    srs_from_user,
    transform_bounds,
)
from .tileurl import TileTemplate, TokenError, redact

gdal.UseExceptions()


def tile_name(tile: Tile) -> str:
    """``z/x/y`` as users and logs name a tile."""
    x, y, z = tile
    return f"{z}/{x}/{y}"


class XyzSource:
    """XYZ tiles of ``template`` on an ``XyzGrid``; failed tiles are recorded in ``failed``."""

    def __init__(
        self,
        template: TileTemplate,
        grid: XyzGrid,
        workers: int = 8,
        timeout: float = 20.0,
        retries: int = 2,
        backoff: float = 0.5,
        cache_dir: str | os.PathLike[str] | None = None,
        max_bytes: int = MAX_BODY_BYTES,
    ) -> None:
        self.template = template
        self.grid = grid
        self.timeout = timeout
        self.retries = max(0, retries)
        self.backoff = backoff
        self.max_bytes = max_bytes
        self.failed: dict[Tile, str] = {}
        self.fetched = 0
        self.cache_refetched = 0  # cached tiles that were damaged and fetched again
        self._cache = None
        if cache_dir is not None:
            # One folder per service: the template without its token, hashed.
            key = hashlib.sha256(template.public.encode()).hexdigest()[:16]
            self._cache = Path(cache_dir) / key
        self._lock = threading.Lock()
        self._http = ThreadSessions("satseg/0.1 (QGIS plugin)", pool_maxsize=2)
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="satseg-xyz")
        self._futures: dict[Tile, Future] = {}
        # Decoded (rgb, valid) by tile; valid None where the whole tile is (most tiles: a quarter less to hold).
        self._tiles: dict[Tile, tuple[np.ndarray, np.ndarray | None] | None] = {}

    # --- fetching (worker threads) ----------------------------------------------------------
    def _cache_path(self, tile: Tile) -> Path | None:
        if self._cache is None:
            return None
        x, y, z = tile
        return self._cache / str(z) / str(x) / f"{y}.tile"

    def _download(self, tile: Tile) -> tuple[bytes, np.ndarray]:
        """The tile's bytes and pixels (``fetch_tile``); ``TokenError`` on 401/403, else ``TileUnavailable``."""
        return fetch_tile(
            self._http.get(), self.template, tile, f"tile {tile_name(tile)}", XYZ_TILE,
            self.timeout, self.retries, self.backoff, self._stop, self.max_bytes,
        )  # fmt: skip

    def _load(self, tile: Tile) -> tuple[np.ndarray, np.ndarray | None]:
        """Decoded ``(rgb, valid)`` of a tile (valid None: every pixel), from the cache (verified first) or the service."""
        cached = self._cache_path(tile)
        if cached is not None and cached.is_file():
            try:
                return _compact(
                    to_rgb(check_tile(cached.read_bytes(), f"cached tile {tile_name(tile)}", XYZ_TILE))
                )
            except (TileFailure, OSError):
                with self._lock:  # damaged on disk: fetched again and replaced
                    self.cache_refetched += 1
                with contextlib.suppress(OSError):
                    cached.unlink()
        data, pixels = self._download(tile)
        if cached is not None:
            write_bytes_atomic(cached, data)  # only tiles that decoded cleanly are kept
        return _compact(to_rgb(pixels))

    # --- strips (calling thread) ------------------------------------------------------------
    def _tiles_of_rows(self, y: int, h: int, x: int, w: int) -> list[Tile]:
        g = self.grid
        n = 2**g.zoom
        ty0, ty1 = max((g.py0 + y) // XYZ_TILE, 0), min((g.py0 + y + h - 1) // XYZ_TILE, n - 1)
        tx0, tx1 = max((g.px0 + x) // XYZ_TILE, 0), min((g.px0 + x + w - 1) // XYZ_TILE, n - 1)
        return [(tx, ty, g.zoom) for ty in range(ty0, ty1 + 1) for tx in range(tx0, tx1 + 1)]

    def prefetch(self, y: int, h: int, x: int, w: int) -> None:
        """Start fetching the tiles under rows ``y..y+h`` and columns ``x..x+w`` of the grid.

        Column by column, left to right: a strip's first windows can run while the rest arrive.
        """
        for tile in sorted(self._tiles_of_rows(y, h, x, w)):  # (x, y, z): by column
            if tile not in self._futures and tile not in self._tiles and tile not in self.failed:
                self._futures[tile] = self._pool.submit(self._load, tile)

    def _get(self, tile: Tile) -> tuple[np.ndarray, np.ndarray | None] | None:
        if tile in self.failed:
            return None
        if tile not in self._tiles:
            fut = self._futures.pop(tile, None) or self._pool.submit(self._load, tile)
            try:
                self._tiles[tile] = fut.result()
                self.fetched += 1
            except LookupError as exc:
                self._tiles[tile] = None
                self.failed[tile] = str(exc)
            except TokenError:
                self.close()
                raise
        return self._tiles[tile]

    def read(
        self, y: int, h: int, x: int, w: int, keep: tuple[int, int] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(rgb, valid)`` of grid rows ``y..y+h`` and columns ``x..x+w`` (outside the world or failed: invalid).

        ``keep`` (grid columns ``x0, x1``; default: this read's) is the span whose tiles
        stay in memory for the next strip: a strip read in several parts keeps them all.
        """
        g = self.grid
        rgb = np.zeros((h, w, 3), np.uint8)
        valid = np.zeros((h, w), bool)
        gy, gx = g.py0 + y, g.px0 + x  # global pixel of the strip's corner
        for tile in self._tiles_of_rows(y, h, x, w):
            got = self._get(tile)
            if got is None:
                continue
            trgb, tvalid = got
            tx, ty, _ = tile
            # Overlap of the tile [tx*256, +256) with the strip [gx, gx+w), in global pixels.
            c0, c1 = max(tx * XYZ_TILE, gx), min((tx + 1) * XYZ_TILE, gx + w)
            r0, r1 = max(ty * XYZ_TILE, gy), min((ty + 1) * XYZ_TILE, gy + h)
            if c0 >= c1 or r0 >= r1:
                continue
            dst = (slice(r0 - gy, r1 - gy), slice(c0 - gx, c1 - gx))
            src = (
                slice(r0 - ty * XYZ_TILE, r1 - ty * XYZ_TILE),
                slice(c0 - tx * XYZ_TILE, c1 - tx * XYZ_TILE),
            )
            rgb[dst] = trgb[src]
            valid[dst] = True if tvalid is None else tvalid[src]
        # Strips move down a stripe of columns, then on to the next stripe: tiles above
        # this strip or outside its columns are not read again (failures stay recorded).
        k0, k1 = keep if keep is not None else (x, x + w)
        top, left, right = gy // XYZ_TILE, (g.px0 + k0) // XYZ_TILE, (g.px0 + k1 - 1) // XYZ_TILE
        for tile in [t for t in self._tiles if t[1] < top or not left <= t[0] <= right]:
            del self._tiles[tile]
        return rgb, valid

    def close(self) -> None:
        """Stop fetching; queued downloads are dropped, running ones finish."""
        self._stop.set()
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._futures.clear()
        self._http.close()


def _compact(decoded: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray | None]:
    rgb, valid = decoded
    return rgb, None if valid.all() else valid


def _gdal_error(exc: Exception) -> str:
    # GDAL's messages quote the dataset name, which may be a URL with a key (/vsicurl/, WMS).
    return redact(str(exc).strip().splitlines()[0]) if str(exc).strip() else type(exc).__name__


def choose_bands(
    src: gdal.Dataset, shown: str, bands: Sequence[int] | None, channels: int
) -> tuple[list[int], int | None]:
    """The raster bands (1-based) feeding a model of ``channels`` input bands, and its alpha band.

    Only a band whose colour interpretation says alpha is alpha: the fourth band of an
    RGB + near-infrared raster is data. ``bands`` chooses them in the model's order;
    by default the raster's first data bands (one grey band repeated for an RGB model).
    """
    count = src.RasterCount
    alphas = [
        b for b in range(1, count + 1) if src.GetRasterBand(b).GetColorInterpretation() == gdal.GCI_AlphaBand
    ]
    alpha = alphas[-1] if alphas else None
    data = [b for b in range(1, count + 1) if b not in alphas]
    if bands:
        chosen = [int(b) for b in bands]
        bad = [b for b in chosen if not 1 <= b <= count]
        if bad:
            raise SourceError(f"the raster {shown} has bands 1 to {count}, not {', '.join(map(str, bad))}")
        if len(chosen) != channels:
            raise SourceError(
                f"the model takes {channels} bands but {len(chosen)} were chosen ({', '.join(map(str, chosen))})"
            )
        return chosen, (alpha if alpha not in chosen else None)
    if channels == 3 and len(data) in (1, 2):
        return [data[0]] * 3, alpha  # grey imagery for an RGB model
    if len(data) < channels:
        raise SourceError(
            f"the raster {shown} has {len(data)} image band(s) and the model takes {channels}: choose "
            "the bands to use (--bands 1,2,3,4 in the model's order)"
        )
    return data[:channels], alpha


class RasterSource:
    """A GDAL raster (any format, any CRS) warped onto a grid in its own CRS.

    The grid's pixel size is ``resolution_m`` on the ground when the model gives
    one, in the raster's CRS units (``crs_resolution``: degrees at the extent's
    latitude for a geographic CRS, feet for a CRS in feet), else the raster's own.
    Bands of more than 8 bits are stretched to 0..255 (``stretch``) by the
    ``stretch`` given, else by the one measured over the whole raster at the first read.
    """

    def __init__(
        self,
        path: str,
        bbox: tuple[float, float, float, float],
        bbox_crs: str,
        resolution_m: float | None,
        bands: Sequence[int] | None = None,
        channels: int = 3,
        stretch: Stretch | None = None,
    ) -> None:
        shown = redact(str(path))  # a GDAL name may be a URL with a key in it
        try:
            src = gdal.Open(str(path))
        except RuntimeError as exc:
            raise SourceError(f"cannot open the raster {shown}: {_gdal_error(exc)}") from None
        self.bands, alpha = choose_bands(src, shown, bands, channels)
        self.channels = channels
        kinds = {src.GetRasterBand(b).DataType for b in self.bands}
        names = ", ".join(sorted(gdal.GetDataTypeName(k) for k in kinds))
        if any(gdal.DataTypeIsComplex(k) for k in kinds):
            raise SourceError(f"the raster {shown} holds complex ({names}) values, not imagery")
        if len(kinds) > 1:  # the warp would give them all one type and cut the wider ones
            raise SourceError(
                f"the chosen bands of the raster {shown} hold values of different types ({names}); "
                "convert them to one type first (gdal_translate -ot)"
            )
        #: The type name of the bands' values ("Byte", "UInt16", "Float32", ...).
        self.kind = names
        self._stretch = stretch
        wkt = src.GetProjection()
        gt = src.GetGeoTransform(can_return_null=True)
        if not wkt or gt is None:
            raise SourceError(f"the raster {shown} has no georeferencing (CRS and geotransform)")
        srs = srs_from_user(wkt)
        native = not resolution_m
        bbox = check_extent(bbox, bbox_crs)
        minx, miny, maxx, maxy = transform_bounds(bbox, srs_from_user(bbox_crs), srs)
        latitude = (miny + maxy) / 2 if srs.IsGeographic() else 0.0
        #: The raster's own pixel size on the ground, in metres (``scale_note`` compares it).
        self.native_m = ground_pixel_size(srs, gt, latitude)
        if native:
            xres, yres = abs(gt[1]), abs(gt[5])
        else:  # a geographic or feet CRS too: the model's ground pixel size in the raster's units
            xres, yres = crs_resolution(srs, float(resolution_m), latitude)  # type: ignore[arg-type]
        # Clip to the raster: segmenting where there is no imagery only makes nodata.
        rx0, ry1 = gt[0], gt[3]
        rx1, ry0 = gt[0] + gt[1] * src.RasterXSize, gt[3] + gt[5] * src.RasterYSize
        minx, maxx = max(minx, min(rx0, rx1)), min(maxx, max(rx0, rx1))
        miny, maxy = max(miny, min(ry0, ry1)), min(maxy, max(ry0, ry1))
        if minx >= maxx or miny >= maxy:
            raise ExtentError(f"the extent does not overlap the raster {shown}")
        if native and gt[2] == 0 and gt[4] == 0:
            # Snap to the raster's own pixels so they are read as they are, not resampled.
            minx = rx0 + math.floor((minx - rx0) / xres + 1e-9) * xres
            maxx = rx0 + math.ceil((maxx - rx0) / xres - 1e-9) * xres
            maxy = ry1 - math.floor((ry1 - maxy) / yres + 1e-9) * yres
            miny = ry1 - math.ceil((ry1 - miny) / yres - 1e-9) * yres
        aligned = not native
        self._name = f"/vsimem/satseg-warp-{os.getpid()}-{id(self)}.vrt"
        self._bands_name = f"/vsimem/satseg-bands-{os.getpid()}-{id(self)}.vrt"
        try:
            # The model's bands in its order, then the raster's alpha band (if it has one) last,
            # where the warper takes it for the source's alpha.
            picked = gdal.Translate(
                self._bands_name, src, format="VRT", bandList=[*self.bands, *([alpha] if alpha else [])]
            )
            if alpha:
                picked.GetRasterBand(len(self.bands) + 1).SetColorInterpretation(gdal.GCI_AlphaBand)
            self.ds = gdal.Warp(
                self._name,
                picked,
                format="VRT",
                outputBounds=(minx, miny, maxx, maxy),
                xRes=xres,
                yRes=yres,
                targetAlignedPixels=aligned,
                dstAlpha=True,
                resampleAlg="bilinear",
                srcAlpha=bool(alpha),
            )
        except RuntimeError as exc:
            raise SourceError(f"cannot warp the raster {shown}: {_gdal_error(exc)}") from None
        self.grid = Grid(wkt, tuple(self.ds.GetGeoTransform()), self.ds.RasterXSize, self.ds.RasterYSize)  # type: ignore[arg-type]
        self.path = path
        self.shown = shown
        self.failed: dict[Tile, str] = {}
        self.fetched = 0

    def prefetch(self, y: int, h: int, x: int, w: int) -> None:
        """GDAL reads on demand; nothing to start."""

    def read(
        self, y: int, h: int, x: int, w: int, keep: tuple[int, int] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(pixels, valid)`` of grid rows ``y..y+h`` and columns ``x..x+w``; outside the raster: invalid.

        ``pixels`` has the model's ``channels`` bands, in its order; nodata and the alpha band's
        transparent pixels are invalid.

        ``keep`` is ``XyzSource.read``'s; GDAL keeps no tiles here.
        """
        rgb = np.zeros((h, w, self.channels), np.uint8)
        valid = np.zeros((h, w), bool)
        r0, r1 = max(y, 0), min(y + h, self.grid.height)
        c0, c1 = max(x, 0), min(x + w, self.grid.width)
        if r0 >= r1 or c0 >= c1:
            return rgb, valid
        try:
            data = self.ds.ReadAsArray(c0, r0, c1 - c0, r1 - r0)  # (bands, rows, cols), last band alpha
        except RuntimeError as exc:
            raise SourceError(f"cannot read the raster {self.shown}: {_gdal_error(exc)}") from None
        pixels = np.moveaxis(data, 0, -1)  # the chosen bands, then the warper's alpha
        dst = (slice(r0 - y, r1 - y), slice(c0 - x, c1 - x))
        stretch = self.stretch
        rgb[dst] = (
            pixels[..., : self.channels] if stretch is None else stretch.apply(pixels[..., : self.channels])
        )
        valid[dst] = pixels[..., -1] > 0
        self.fetched += 1
        return rgb, valid

    @property
    def stretch(self) -> Stretch | None:
        """The stretch of bands of more than 8 bits, None for 8-bit ones (measured once, when first asked)."""
        if self._stretch is None and self.kind != "Byte":
            src = None
            try:
                src = gdal.Open(str(self.path))
                self._stretch = raster_stretch(src, self.bands)
            except (RuntimeError, ValueError) as exc:
                raise SourceError(f"cannot measure the values of the raster {self.shown}: {exc}") from None
            finally:
                src = None  # closes the dataset
        return self._stretch

    def stretch_note(self) -> str | None:
        """What the user is told of the stretch of the bands, or None for 8-bit imagery."""
        return None if self.kind == "Byte" else stretch_note(self.kind, self.stretch)

    def close(self) -> None:
        """Release the warped dataset (GDAL must not outlive its in-memory VRT)."""
        self.ds = None
        for name in (self._name, self._bands_name):
            with contextlib.suppress(RuntimeError):
                gdal.Unlink(name)
