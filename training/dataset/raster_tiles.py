"""XYZ-grid imagery tiles cut from a local raster (GeoTIFF, VRT, anything GDAL opens).

``RasterTiles(path, tiles)`` warps the raster once (a virtual GDAL warp, nothing
computed up front) onto the Web Mercator pixel grid of the tiles' zoom, over the
tiles' range; ``fetch`` then reads each tile's 256 x 256 window and writes
``images/<z-x-y>.png`` as ``Downloader.fetch`` does: the same ``DownloadReport``,
tiles already on disk kept (resume), tiles the raster does not cover at all
listed as skipped, every file written under a temporary name and renamed.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from osgeo import gdal

from satseg_plugin.inference.errors import SourceError
from satseg_plugin.inference.imageio import to_rgb, write_png
from satseg_plugin.inference.stretch import Stretch, raster_stretch

from .imagery import DownloadReport
from .tiles import Tile, pixel_size, tile_id, tiles_extent

gdal.UseExceptions()


def _gdal_error(exc: RuntimeError) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


class RasterTiles:
    """The tiles ``tiles`` (one zoom) of the raster at ``path``.

    Raises ``SourceError`` when the raster cannot be opened, is not grey or
    RGB(A), has no georeferencing, or covers none of the tiles. Bands of more
    than 8 bits are stretched to 0..255 (``stretch``).
    """

    def __init__(self, path: str | os.PathLike[str], tiles: Sequence[Tile], tile_size: int = 256) -> None:
        self.path = Path(path)
        self.tile_size = tile_size
        if not tiles:
            raise SourceError("no tiles to cut from the raster")
        zooms = {z for _, _, z in tiles}
        if len(zooms) != 1:
            raise SourceError(f"tiles of one zoom expected, not {sorted(zooms)}")
        self.zoom = zooms.pop()
        try:
            src = gdal.Open(str(self.path))
        except RuntimeError as exc:
            raise SourceError(f"cannot open the raster {self.path}: {_gdal_error(exc)}") from None
        if src.RasterCount not in (1, 3, 4):
            raise SourceError(
                f"the raster {self.path} has {src.RasterCount} bands; satseg needs RGB (3 or 4) or grey"
            )
        kind = src.GetRasterBand(1).DataType
        if gdal.DataTypeIsComplex(kind):
            raise SourceError(f"the raster {self.path} holds complex values, not imagery")
        #: Bands of more than 8 bits: their one stretch to 0..255 (None for 8-bit bands).
        self.stretch: Stretch | None = None
        if kind != gdal.GDT_Byte:
            try:
                self.stretch = raster_stretch(src, range(1, min(src.RasterCount, 3) + 1))
            except ValueError as exc:
                raise SourceError(f"cannot stretch the raster {self.path} to 8 bits: {exc}") from None
        if not src.GetProjection() or src.GetGeoTransform(can_return_null=True) is None:
            raise SourceError(f"the raster {self.path} has no georeferencing (CRS and geotransform)")
        xs, ys = [t[0] for t in tiles], [t[1] for t in tiles]
        self.origin = (min(xs), min(ys))
        trange = (min(xs), min(ys), max(xs), max(ys))
        res = pixel_size(self.zoom, tile_size)
        self._name = f"/vsimem/satseg-raster-tiles-{os.getpid()}-{id(self)}.vrt"
        try:
            # The range's edges lie on the zoom's pixel grid, so this grid is the XYZ pixel grid.
            self.ds = gdal.Warp(
                self._name,
                src,
                format="VRT",
                dstSRS="EPSG:3857",
                outputBounds=tiles_extent(trange, self.zoom),
                xRes=res,
                yRes=res,
                dstAlpha=True,
                resampleAlg="bilinear",
            )
        except RuntimeError as exc:
            raise SourceError(
                f"cannot warp the raster {self.path} to the tile grid: {_gdal_error(exc)}"
            ) from None

    def read(self, tile: Tile) -> np.ndarray | None:
        """The tile's RGB pixels (``[S, S, 3]`` uint8, black where the raster has none), or ``None`` if empty."""
        x, y, _ = tile
        s = self.tile_size
        try:
            data = self.ds.ReadAsArray((x - self.origin[0]) * s, (y - self.origin[1]) * s, s, s)
        except RuntimeError as exc:
            raise SourceError(f"cannot read the raster {self.path}: {_gdal_error(exc)}") from None
        pixels = np.moveaxis(data, 0, -1)  # (rows, cols, bands), the last band the warp's alpha
        if not (pixels[..., -1] > 0).any():
            return None
        bands = pixels[..., :-1]
        if self.stretch is not None:  # the image bands; nodata is the warp's alpha, below
            bands = self.stretch.apply(bands[..., :3])
        rgb, _ = to_rgb(bands)
        rgb[pixels[..., -1] == 0] = 0
        return rgb

    def fetch(
        self,
        tiles: Sequence[Tile],
        out_dir: str | os.PathLike[str],
        progress: Callable[[int], None] | None = None,
    ) -> DownloadReport:
        """Write ``out_dir/<id>.png`` for each tile the raster covers; tiles on disk are kept."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        report = DownloadReport()
        for tile in tiles:
            path = out / f"{tile_id(tile)}.png"
            if path.is_file():
                report.kept.append(tile_id(tile))
            else:
                rgb = self.read(tile)
                if rgb is None:
                    report.skipped.append((tile_id(tile), "empty (outside the raster)"))
                else:
                    write_png(path, rgb)
                    report.fetched.append(tile_id(tile))
            if progress:
                progress(1)
        return report

    def close(self) -> None:
        """Release the warped dataset and its in-memory VRT."""
        self.ds = None
        gdal.Unlink(self._name)

    def __enter__(self) -> RasterTiles:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
