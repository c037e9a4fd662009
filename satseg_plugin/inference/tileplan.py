"""Where to segment: the output pixel grid of an extent, and the model windows over it.

For an XYZ source the grid is the Web Mercator (EPSG:3857) pixel grid of the
XYZ tiles at a zoom: its origin and pixel size are those of the tiles, and it
covers the extent snapped outwards to whole pixels. For a raster source it is
a grid in the raster's CRS at the model's resolution (``raster_grid``).

Windows are ``size`` pixels square at a stride of ``size - overlap``; the
first starts ``overlap // 2`` pixels before the grid so that every output pixel,
border pixels included, lies away from a window's weakest edge.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import mercantile
from osgeo import osr

from .errors import ExtentError, ParameterError

osr.UseExceptions()

#: Half the side of the Web Mercator square, in metres.
HALF_WORLD = 20037508.342789244
#: The side of an XYZ tile in pixels.
XYZ_TILE = 256
#: The latitude where Web Mercator (and so the XYZ grid) ends, north and south.
MAX_LATITUDE = 85.0511287798066
#: Window sides a SegNet takes (its five 2x2 poolings): exports accept, and runs choose, multiples of it.
WINDOW_STEP = 32
#: An XYZ tile as ``(x, y, z)``.
Tile = tuple[int, int, int]


def srs_from_user(text: str) -> osr.SpatialReference:
    """Return the SpatialReference of ``EPSG:n``, WKT, PROJ or any string OSR reads, in x/y order."""
    srs = osr.SpatialReference()
    try:
        srs.SetFromUserInput(text)
    except RuntimeError:
        raise ExtentError(f"unknown coordinate reference system {text!r}") from None
    srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    return srs


def transform_bounds(
    bbox: tuple[float, float, float, float], src: osr.SpatialReference, dst: osr.SpatialReference
) -> tuple[float, float, float, float]:
    """Return ``bbox`` reprojected, its edges densified so curved edges stay inside."""
    minx, miny, maxx, maxy = bbox
    ct = osr.CoordinateTransformation(src, dst)
    try:
        out = ct.TransformBounds(minx, miny, maxx, maxy, 21)
    except RuntimeError as exc:
        raise ExtentError(f"the extent {bbox} cannot be transformed: {exc}") from None
    if not all(math.isfinite(v) for v in out):
        raise ExtentError(f"the extent {bbox} lies outside what its CRS can transform")
    return tuple(out)  # type: ignore[return-value]


def check_bbox(bbox: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
    """Return ``bbox`` as floats; ``ExtentError`` unless it is four finite numbers with min < max."""
    try:
        minx, miny, maxx, maxy = (float(v) for v in bbox)
    except (TypeError, ValueError):
        raise ExtentError(f"an extent is four numbers minx, miny, maxx, maxy, not {bbox!r}") from None
    if not all(math.isfinite(v) for v in (minx, miny, maxx, maxy)):
        raise ExtentError(f"the extent {bbox} is not finite")
    if minx >= maxx or miny >= maxy:
        raise ExtentError(f"the extent {minx}, {miny}, {maxx}, {maxy} is empty (min must be below max)")
    return minx, miny, maxx, maxy


def _in_degrees(srs: osr.SpatialReference) -> bool:
    return bool(srs.IsGeographic()) and abs(srs.GetAngularUnits() - math.pi / 180) < 1e-12


def check_extent(
    bbox: tuple[float, float, float, float], crs: str | osr.SpatialReference
) -> tuple[float, float, float, float]:
    """``check_bbox``, and in a CRS of degrees: longitudes in -180..180, latitudes in -90..90.

    A longitude of 200 would otherwise wrap to -160 and ask for tiles on the far
    side of the world; a west edge in the east and an east edge in the west
    (170 .. -170) is a bbox across the antimeridian, which one extent cannot hold.
    """
    srs = srs_from_user(crs) if isinstance(crs, str) else crs
    if not _in_degrees(srs):
        return check_bbox(bbox)
    try:
        w, s, e, n = (float(v) for v in bbox)
    except (TypeError, ValueError):
        return check_bbox(bbox)  # its message
    if all(math.isfinite(v) for v in (w, s, e, n)):
        if not (-180 <= w <= 180 and -180 <= e <= 180):
            raise ExtentError(
                f"the extent's longitudes must lie in -180..180 (got {w:g}, {e:g}); "
                "is the order minlon,minlat,maxlon,maxlat?"
            )
        if not (-90 <= s <= 90 and -90 <= n <= 90):
            raise ExtentError(
                f"the extent's latitudes must lie in -90..90 (got {s:g}, {n:g}); "
                "is the order minlon,minlat,maxlon,maxlat?"
            )
        if w > 0 > e:  # 170 .. -170: the 20 degrees across 180, not 340 the other way
            raise ExtentError(
                f"the extent crosses the antimeridian (west {w:g} is east of east {e:g}): "
                "segment the two sides separately, up to 180 and from -180"
            )
    return check_bbox(bbox)


@dataclass(frozen=True)
class Grid:
    """An output pixel grid: ``width`` x ``height`` pixels, GDAL geotransform, CRS as WKT."""

    crs_wkt: str
    geotransform: tuple[float, float, float, float, float, float]
    width: int
    height: int

    @property
    def pixels(self) -> int:
        return self.width * self.height


@dataclass(frozen=True)
class XyzGrid(Grid):
    """A grid on the XYZ pixel grid at ``zoom``; column 0 is global pixel ``px0``, row 0 is ``py0``."""

    zoom: int = 0
    px0: int = 0
    py0: int = 0


def xyz_resolution(zoom: int) -> float:
    """Metres (EPSG:3857) per pixel of 256-pixel XYZ tiles at ``zoom``."""
    return 2 * HALF_WORLD / (XYZ_TILE * 2**zoom)


def zoom_for_resolution(resolution_m: float, latitude: float) -> int:
    """The zoom whose ground pixel size at ``latitude`` is closest to ``resolution_m``."""
    ground0 = xyz_resolution(0) * math.cos(math.radians(latitude))
    return max(0, min(24, round(math.log2(ground0 / resolution_m))))


def crs_resolution(srs: osr.SpatialReference, resolution_m: float, latitude: float) -> tuple[float, float]:
    """``(x, y)`` pixel size in ``srs``'s own units for ``resolution_m`` metres on the ground.

    A projected CRS in metres keeps ``resolution_m``; one in feet or other
    linear units converts it. A geographic CRS gets degrees (or its angular
    unit) at ``latitude``: the ellipsoid's radii of curvature there give the
    metres a unit of longitude and of latitude spans, so the pixels are square
    on the ground as they are in the training tiles.
    """
    if not srs.IsGeographic():
        unit = srs.GetLinearUnits() or 1.0
        return resolution_m / unit, resolution_m / unit
    a = srs.GetSemiMajor()
    inv_f = srs.GetInvFlattening()
    e2 = 0.0 if not inv_f else (2 - 1 / inv_f) / inv_f
    phi = math.radians(max(-89.9, min(89.9, latitude)))
    w = math.sqrt(1 - e2 * math.sin(phi) ** 2)
    per_radian_x = a / w * math.cos(phi)  # prime vertical radius times cos(latitude)
    per_radian_y = a * (1 - e2) / w**3  # meridional radius
    unit = srs.GetAngularUnits() or math.radians(1)  # radians per unit of the CRS
    return resolution_m / (per_radian_x * unit), resolution_m / (per_radian_y * unit)


def ground_pixel_size(srs: osr.SpatialReference, geotransform: Sequence[float], latitude: float) -> float:
    """Metres on the ground of a pixel of ``geotransform`` in ``srs`` (the mean of its width
    and height): ``crs_resolution`` the other way round. A projected CRS's units count as
    metres (feet convert); a geographic CRS's degrees are measured at ``latitude``."""
    gt = geotransform
    per_m_x, per_m_y = crs_resolution(srs, 1.0, latitude)
    return (math.hypot(gt[1], gt[4]) / per_m_x + math.hypot(gt[2], gt[5]) / per_m_y) / 2


def xyz_grid(bbox: tuple[float, float, float, float], bbox_crs: str, zoom: int) -> XyzGrid:
    """Return the zoom-``zoom`` XYZ pixel grid covering ``bbox`` (in ``bbox_crs``).

    The extent is clipped to the latitudes Web Mercator covers and snapped
    outwards to whole pixels. ``ExtentError`` when nothing is left, ``ParameterError``
    for a zoom outside 0..24.
    """
    if not 0 <= int(zoom) <= 24:
        raise ParameterError(f"zoom must be between 0 and 24, not {zoom}")
    zoom = int(zoom)
    src = srs_from_user(bbox_crs)
    bbox = check_extent(bbox, src)
    merc = srs_from_user("EPSG:3857")
    minx, miny, maxx, maxy = transform_bounds(bbox, src, merc) if not src.IsSame(merc) else bbox
    limit = mercantile.xy(0, MAX_LATITUDE)[1]
    minx, maxx = max(minx, -HALF_WORLD), min(maxx, HALF_WORLD)
    miny, maxy = max(miny, -limit), min(maxy, limit)
    if minx >= maxx or miny >= maxy:
        raise ExtentError(f"the extent {bbox} in {bbox_crs} lies outside the area XYZ tiles cover")
    res = xyz_resolution(zoom)
    eps = 1e-6  # an edge exactly on a pixel border must not add a pixel
    px0 = math.floor((minx + HALF_WORLD) / res + eps)
    px1 = math.ceil((maxx + HALF_WORLD) / res - eps)
    py0 = math.floor((HALF_WORLD - maxy) / res + eps)
    py1 = math.ceil((HALF_WORLD - miny) / res - eps)
    width, height = max(px1 - px0, 1), max(py1 - py0, 1)
    gt = (px0 * res - HALF_WORLD, res, 0.0, HALF_WORLD - py0 * res, 0.0, -res)
    return XyzGrid(merc.ExportToWkt(), gt, width, height, zoom, px0, py0)


@dataclass(frozen=True)
class Windows:
    """Square model windows over a grid, in grid pixel coordinates.

    Window ``(i, j)`` covers columns ``x0 + i * stride`` to ``+ size`` and rows
    ``y0 + j * stride`` to ``+ size``; ``nx`` by ``ny`` of them cover the grid.
    """

    size: int
    stride: int
    x0: int
    y0: int
    nx: int
    ny: int

    @property
    def count(self) -> int:
        return self.nx * self.ny

    @property
    def span_width(self) -> int:
        return self.size + (self.nx - 1) * self.stride

    @property
    def span_height(self) -> int:
        return self.size + (self.ny - 1) * self.stride


def plan_windows(width: int, height: int, size: int, overlap_percent: float) -> Windows:
    """Windows of ``size`` pixels overlapping by ``overlap_percent`` that cover ``width`` x ``height``.

    ``ParameterError`` for an overlap outside [0, 100).
    """
    if not 0 <= overlap_percent < 100:
        raise ParameterError(f"overlap must be a percent in [0, 100), not {overlap_percent}")
    overlap = min(round(size * overlap_percent / 100), size - 1)
    overlap -= overlap % 2  # an even overlap splits evenly around the grid
    stride = size - overlap
    pad = overlap // 2

    def count(n: int) -> int:
        return max(1, math.ceil((n + 2 * pad - size) / stride) + 1)

    return Windows(size, stride, -pad, -pad, count(width), count(height))


def overlap_pixels(size: int, percent: float) -> int:
    """The overlap in pixels of ``size``-pixel windows at ``percent`` (``plan_windows``' rounding)."""
    windows = plan_windows(size, size, size, percent)
    return windows.size - windows.stride


def fewest_pixels_windows(
    width: int, height: int, sizes: Sequence[int], overlap_percent: Callable[[int], float]
) -> Windows:
    """Of the windows of each side in ``sizes`` (each at ``overlap_percent(side)``) over ``width`` x
    ``height``, those that run the fewest pixels; among equals, the larger windows (fewer calls).

    Whole windows overshoot an extent's edges: on a 1920 x 1080 extent, with 36 px of overlap,
    512-px windows run 3.93 Mpx, 320-px ones 2.87 Mpx and 256-px ones 2.95 Mpx.
    """
    plans = [plan_windows(width, height, s, overlap_percent(s)) for s in sizes]
    return min(plans, key=lambda w: (w.count * w.size * w.size, -w.size))


def starts_inside(length: int, size: int, stride: int) -> list[int]:
    """Offsets of ``size``-pixel tiles every ``stride`` pixels that cover ``length`` without leaving it.

    Unlike ``plan_windows`` (which reads context past the edges), the last tile
    is moved back to end at ``length``, so every pixel is in a tile and none is
    padded: how a dataset is cut from a larger image. ``[0]`` when
    ``length <= size``.
    """
    if length <= size:
        return [0]
    starts = list(range(0, length - size + 1, stride))
    if starts[-1] + size < length:
        starts.append(length - size)
    return starts


@dataclass(frozen=True)
class Stripe:
    """Grid columns ``x0 .. x1`` (and rows ``y0 .. y1``) and the windows (a sub-grid of the run's) that cover them.

    A stripe of a single-process run spans every row (``y1`` None: to the grid's
    bottom); a block of a cluster run (``plan_blocks``) is a stripe of a few rows.
    """

    x0: int
    x1: int
    windows: Windows
    y0: int = 0
    y1: int | None = None


def _touching(first_pixel: int, stride: int, size: int, lo: int, hi: int, count: int) -> tuple[int, int]:
    """Indices ``first .. last`` of the windows (starting at ``first_pixel``) that touch pixels ``lo .. hi``."""
    first = max(0, math.ceil((lo - first_pixel - size + 1) / stride))
    last = min(count - 1, (hi - 1 - first_pixel) // stride)
    return first, last


def windows_touching(windows: Windows, x0: int, x1: int, y0: int, y1: int) -> Windows:
    """The sub-grid of ``windows`` that touch columns ``x0 .. x1`` and rows ``y0 .. y1``.

    Every pixel of that rectangle is then blended from exactly the windows it is
    blended from in the whole run, in the same order: the result is the same,
    bit for bit, and windows across a cut belong to both sides of it.
    """
    fx, lx = _touching(windows.x0, windows.stride, windows.size, x0, x1, windows.nx)
    fy, ly = _touching(windows.y0, windows.stride, windows.size, y0, y1, windows.ny)
    return Windows(
        windows.size,
        windows.stride,
        windows.x0 + fx * windows.stride,
        windows.y0 + fy * windows.stride,
        lx - fx + 1,
        ly - fy + 1,
    )


def plan_stripes(width: int, windows: Windows, max_width: int, block: int = 256) -> list[Stripe]:
    """Split the grid into vertical stripes of at most ``max_width`` columns, cut at ``block`` multiples.

    Each stripe keeps every window that touches it, so a pixel is blended from the
    same windows as without stripes (the windows across a cut belong to both stripes;
    ``SharedWindows`` runs them once). Cuts on block boundaries let each stripe
    write whole GeoTIFF blocks.
    """
    step = max(block, max_width // block * block)
    out = []
    height = windows.y0 + windows.span_height  # rows 0 .. this: the windows' own rows all stay
    for x0 in range(0, width, step):
        x1 = min(x0 + step, width)
        out.append(Stripe(x0, x1, windows_touching(windows, x0, x1, windows.y0, height)))
    return out


def plan_blocks(width: int, height: int, windows: Windows, side: int, block: int = 256) -> list[Stripe]:
    """Cut the grid into square blocks of ``side`` pixels (a multiple of ``block``), row by row.

    Each block carries every window that touches it (``windows_touching``): its
    own margin, so blocks segmented apart mosaic without seams.
    """
    step = max(block, side // block * block)
    out = []
    for y0 in range(0, height, step):
        y1 = min(y0 + step, height)
        for x0 in range(0, width, step):
            x1 = min(x0 + step, width)
            out.append(Stripe(x0, x1, windows_touching(windows, x0, x1, y0, y1), y0, y1))
    return out


def xyz_tiles_for(grid: XyzGrid, windows: Windows | None = None) -> list[mercantile.Tile]:
    """The XYZ tiles under the grid (or, given ``windows``, all the windows read), clipped to the world."""
    n = 2**grid.zoom
    if windows is None:
        left, top, width, height = grid.px0, grid.py0, grid.width, grid.height
    else:
        left, top = grid.px0 + windows.x0, grid.py0 + windows.y0
        width, height = windows.span_width, windows.span_height
    tx0, tx1 = max(left // XYZ_TILE, 0), min((left + width - 1) // XYZ_TILE, n - 1)
    ty0, ty1 = max(top // XYZ_TILE, 0), min((top + height - 1) // XYZ_TILE, n - 1)
    return [mercantile.Tile(x, y, grid.zoom) for y in range(ty0, ty1 + 1) for x in range(tx0, tx1 + 1)]


def xyz_tile_count(grid: XyzGrid) -> int:
    """How many XYZ tiles lie under the grid (``len(xyz_tiles_for(grid))`` without the list)."""
    n = 2**grid.zoom
    tx0, tx1 = max(grid.px0 // XYZ_TILE, 0), min((grid.px0 + grid.width - 1) // XYZ_TILE, n - 1)
    ty0, ty1 = max(grid.py0 // XYZ_TILE, 0), min((grid.py0 + grid.height - 1) // XYZ_TILE, n - 1)
    return (tx1 - tx0 + 1) * (ty1 - ty0 + 1)
