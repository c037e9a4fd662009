"""The XYZ tile grid in EPSG:3857: tile ranges, touching tiles and seeded sampling.

Tile ``(x, y, z)`` covers ``mercantile.xy_bounds(x, y, z)``; ids are ``z-x-y``.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Iterable

import mercantile
from osgeo import ogr

from satseg_plugin.inference.errors import ExtentError
from satseg_plugin.inference.tileplan import HALF_WORLD, MAX_LATITUDE, XYZ_TILE, Tile, xyz_resolution


def tile_id(tile: Tile) -> str:
    """``z-x-y``, the id of a tile in file names and sample lists."""
    x, y, z = tile
    return f"{z}-{x}-{y}"


def parse_tile_id(text: str) -> Tile:
    """Inverse of ``tile_id``; ``ValueError`` for anything else."""
    z, x, y = (int(v) for v in text.strip().split("-"))
    return x, y, z


def parse_bbox(text: str) -> tuple[float, float, float, float]:
    """Parse ``minlon,minlat,maxlon,maxlat`` (WGS84 degrees); ``ExtentError`` when it is not one."""
    parts = [p.strip() for p in str(text).split(",")]
    if len(parts) != 4:
        raise ExtentError(f"--bbox needs four numbers minlon,minlat,maxlon,maxlat, not {text!r}")
    try:
        w, s, e, n = (float(p) for p in parts)
    except ValueError:
        raise ExtentError(f"--bbox needs four numbers minlon,minlat,maxlon,maxlat, not {text!r}") from None
    if not all(math.isfinite(v) for v in (w, s, e, n)):
        raise ExtentError(f"--bbox has a value that is not a finite number: {text!r}")
    if not (-180 <= w <= 180 and -180 <= e <= 180):
        raise ExtentError(
            f"--bbox longitudes must lie in -180..180 (got {w}, {e}); is the order minlon,minlat,maxlon,maxlat?"
        )
    if not (-MAX_LATITUDE <= s <= MAX_LATITUDE and -MAX_LATITUDE <= n <= MAX_LATITUDE):
        raise ExtentError(
            f"--bbox latitudes must lie in -85.05..85.05 (got {s}, {n}); is the order minlon,minlat,maxlon,maxlat?"
        )
    if w >= e or s >= n:
        raise ExtentError(
            f"--bbox is empty: minlon must be below maxlon and minlat below maxlat (got {text!r})"
        )
    return w, s, e, n


def tile_span(zoom: int) -> float:
    """Width of one tile at ``zoom`` in EPSG:3857 metres."""
    return xyz_resolution(zoom) * XYZ_TILE  # exact: only powers of two between them


def pixel_size(zoom: int, tile_size: int = 256) -> float:
    """Width of one pixel at ``zoom`` in EPSG:3857 metres (the same at every latitude)."""
    return tile_span(zoom) / tile_size


def resolution_cm(lat: float, zoom: int, tile_size: int = 256) -> float:
    """Ground size of a pixel in centimetres at latitude ``lat``."""
    return 100 * pixel_size(zoom, tile_size) * math.cos(math.radians(lat))


def bbox_tiles(bbox: tuple[float, float, float, float], zoom: int) -> tuple[int, int, int, int]:
    """``(xmin, ymin, xmax, ymax)`` (inclusive) of the tiles meeting a WGS84 bbox."""
    w, s, e, n = bbox
    ul = mercantile.tile(w, n, zoom)
    lr = mercantile.tile(e, s, zoom)
    # A bbox edge exactly on a tile edge must not pull in the next tile.
    lr_bounds = mercantile.bounds(lr)
    xmax = lr.x - 1 if lr.x > ul.x and e <= lr_bounds.west else lr.x
    ymax = lr.y - 1 if lr.y > ul.y and s >= lr_bounds.north else lr.y
    return ul.x, ul.y, xmax, ymax


def tiles_extent(trange: tuple[int, int, int, int], zoom: int) -> tuple[float, float, float, float]:
    """EPSG:3857 ``(minx, miny, maxx, maxy)`` covered by an inclusive tile range."""
    xmin, ymin, xmax, ymax = trange
    span = tile_span(zoom)
    return (
        -HALF_WORLD + xmin * span,
        HALF_WORLD - (ymax + 1) * span,
        -HALF_WORLD + (xmax + 1) * span,
        HALF_WORLD - ymin * span,
    )


def tile_bounds(x: int, y: int, zoom: int) -> tuple[float, float, float, float]:
    """EPSG:3857 ``(minx, miny, maxx, maxy)`` of one tile (as ``mercantile.xy_bounds``)."""
    return tiles_extent((x, y, x, y), zoom)


def _rect(minx: float, miny: float, maxx: float, maxy: float) -> ogr.Geometry:
    ring = ogr.Geometry(ogr.wkbLinearRing)
    for px, py in ((minx, miny), (maxx, miny), (maxx, maxy), (minx, maxy), (minx, miny)):
        ring.AddPoint_2D(px, py)
    poly = ogr.Geometry(ogr.wkbPolygon)
    poly.AddGeometry(ring)
    return poly


def touching_tiles(
    geom: ogr.Geometry, zoom: int, trange: tuple[int, int, int, int]
) -> Iterable[tuple[int, int]]:
    """The ``(x, y)`` tiles in ``trange`` that ``geom`` (EPSG:3857) meets.

    The envelope gives the candidates; when there is more than one, each is
    checked against the geometry itself, so a long diagonal road or an
    L-shaped area does not claim tiles it only boxes.
    """
    minx, maxx, miny, maxy = geom.GetEnvelope()
    span = tile_span(zoom)
    x0 = max(trange[0], math.floor((minx + HALF_WORLD) / span))
    x1 = min(trange[2], math.floor((maxx + HALF_WORLD) / span))
    y0 = max(trange[1], math.floor((HALF_WORLD - maxy) / span))
    y1 = min(trange[3], math.floor((HALF_WORLD - miny) / span))
    if x0 > x1 or y0 > y1:
        return []
    if x0 == x1 and y0 == y1:
        return [(x0, y0)]
    out = []
    for x in range(x0, x1 + 1):
        for y in range(y0, y1 + 1):
            if geom.Intersects(_rect(*tile_bounds(x, y, zoom))):
                out.append((x, y))
    return out


def sample_tiles(tiles: Iterable[Tile], size: int, seed: int) -> list[Tile]:
    """A seeded random sample of ``size`` tiles (all when fewer), sorted by id.

    The same tiles, size and seed always give the same sample.
    """
    pool = sorted(set(tiles), key=lambda t: (t[2], t[0], t[1]))
    if len(pool) > size:
        pool = random.Random(seed).sample(pool, size)
    return sorted(pool, key=lambda t: (t[2], t[0], t[1]))


XYZ_ID = re.compile(r"(\d+)-(\d+)-(\d+)")


def xyz_blocks(ids: list[str], tiles_per_block: int = 8) -> dict[str, str]:
    """Spatial block of every XYZ id (``z-x-y``) among ``ids``.

    A block is one tile of zoom ``min_zoom - log2(tiles_per_block)`` (8x8 tiles
    of the coarsest zoom present), named ``zB-X-Y``; a tile of a finer zoom falls
    in the block that holds its ground, so one piece of ground never sits on
    both sides of a split, whatever zooms a dataset mixes.
    """
    parsed = {i: tuple(int(v) for v in m.groups()) for i in ids if (m := XYZ_ID.fullmatch(i))}
    if not parsed:
        return {}
    shift = max(0, tiles_per_block.bit_length() - 1)
    block_zoom = max(0, min(z for z, _, _ in parsed.values()) - shift)
    return {
        i: f"z{block_zoom}-{x >> (z - block_zoom)}-{y >> (z - block_zoom)}" for i, (z, x, y) in parsed.items()
    }
