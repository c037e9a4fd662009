"""Clean classes: regions below a minimum ground area merged into their neighbours (GDAL sieve).

The sieve changes the class raster in place before its overviews are built and
before it is polygonized, and the pixel counts are then taken again from the
sieved raster, so the class raster, the polygons and the table all describe
the same pixels.
"""

from __future__ import annotations

import math

from osgeo import gdal

from .counts import CountAccumulator, row_pixel_areas
from .errors import SatsegError
from .tileplan import Grid

gdal.UseExceptions()

#: 4-connected regions, as the polygons are traced.
CONNECTEDNESS = 4
#: Rows read at a time when counting again.
COUNT_ROWS = 256


def min_area_pixels(grid: Grid, min_area_m2: float) -> int:
    """The sieve threshold in pixels: ``min_area_m2`` over the ground area of the grid's middle-row pixel.

    Regions of fewer pixels than this are merged into their largest neighbour.
    (On a Web Mercator grid a pixel's ground area changes with latitude; over an
    extent that one run covers the change is small, and one threshold keeps the
    sieve a single GDAL pass.)
    """
    if not math.isfinite(min_area_m2) or min_area_m2 < 0:
        raise SatsegError(f"the minimum region area must be 0 or more m², not {min_area_m2}")
    pixel = float(row_pixel_areas(grid)[grid.height // 2])
    return max(1, math.ceil(min_area_m2 / pixel - 1e-9))


def sieve(band: gdal.Band, threshold: int) -> None:
    """Merge regions of fewer than ``threshold`` pixels into their largest neighbour, in place.

    Nodata pixels (the band's mask) are neither merged nor merged into, so a small
    region with only nodata around it (cut off by missing imagery or the edge of a
    processing area) has no neighbour to join and stays.
    """
    if threshold > 1:
        gdal.SieveFilter(band, band.GetMaskBand(), band, threshold, CONNECTEDNESS)
        band.FlushCache()


def count_band(band: gdal.Band, grid: Grid, classes: int) -> CountAccumulator:
    """Count a class raster's pixels per row again (values >= ``classes`` are nodata)."""
    counter = CountAccumulator(grid, classes)
    for y in range(0, grid.height, COUNT_ROWS):
        rows = min(COUNT_ROWS, grid.height - y)
        counter.add(band.ReadAsArray(0, y, grid.width, rows), y)
    return counter
