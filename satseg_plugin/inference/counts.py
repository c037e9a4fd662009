"""Pixel counts per class and the ground area they cover.

Pixels of a Web Mercator (or geographic) grid are not all the same size on
the ground: a zoom-19 pixel is 0.30 m wide at the equator and 0.21 m at 45°.
``row_pixel_areas`` measures each row's pixel on the WGS84 ellipsoid by
projecting its corners to a Lambert azimuthal equal-area projection centred
on the grid (equal-area: areas there are areas on the ground), so the
table is right for any CRS.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from osgeo import osr

from .atomic import write_text_atomic
from .tileplan import Grid, srs_from_user

COUNTS_NAME = "pixel_counts.csv"
COLUMNS = ("class", "pixels", "share", "area_m2", "area_ha")


def _shoelace(xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Areas of quadrilaterals given ``(n, 4)`` corner coordinates in order."""
    return 0.5 * np.abs(
        xs[:, 0] * ys[:, 1]
        - xs[:, 1] * ys[:, 0]
        + xs[:, 1] * ys[:, 2]
        - xs[:, 2] * ys[:, 1]
        + xs[:, 2] * ys[:, 3]
        - xs[:, 3] * ys[:, 2]
        + xs[:, 3] * ys[:, 0]
        - xs[:, 0] * ys[:, 3]
    )


def row_pixel_areas(grid: Grid) -> np.ndarray:
    """Ground area in m² of one pixel of each row of ``grid`` (the pixel in the middle column)."""
    x0, dx, rx, y0, ry, dy = grid.geotransform
    src = srs_from_user(grid.crs_wkt)
    geo = srs_from_user("EPSG:4326")
    to_geo = osr.CoordinateTransformation(src, geo)
    cx = x0 + dx * grid.width / 2 + rx * grid.height / 2
    cy = y0 + ry * grid.width / 2 + dy * grid.height / 2
    lon, lat = to_geo.TransformPoint(cx, cy)[:2]
    laea = srs_from_user(f"+proj=laea +lat_0={lat} +lon_0={lon} +datum=WGS84 +units=m +no_defs")
    to_laea = osr.CoordinateTransformation(src, laea)
    col = grid.width // 2
    rows = np.arange(grid.height)
    corners = [(col, rows), (col + 1, rows), (col + 1, rows + 1), (col, rows + 1)]
    xs = np.empty((grid.height, 4))
    ys = np.empty((grid.height, 4))
    for k, (c, r) in enumerate(corners):
        px = x0 + dx * c + rx * r
        py = y0 + ry * c + dy * r
        pts = np.asarray(to_laea.TransformPoints(np.column_stack([np.broadcast_to(px, r.shape), py])))
        xs[:, k], ys[:, k] = pts[:, 0], pts[:, 1]
    return _shoelace(xs, ys)


@dataclass(frozen=True)
class ClassCount:
    """One row of the pixel-count table."""

    name: str
    color: str
    pixels: int
    share: float  # of the pixels that have a class (nodata excluded), 0..1
    area_m2: float

    @property
    def area_ha(self) -> float:
        return self.area_m2 / 10_000


class CountAccumulator:
    """Sum class pixels per row of a grid; their ground area comes from the rows' pixel areas.

    The counts are kept per row, as integers: blocks of a cluster run add up to
    exactly the counts of one process (``add_rows``), and the areas, computed
    once from the same integers in ``table``, are the same to the last bit.
    """

    def __init__(self, grid: Grid, classes: int) -> None:
        self.grid = grid
        self.classes = classes
        self.per_row = np.zeros((grid.height, classes), np.int64)

    def add(self, class_rows: np.ndarray, y: int) -> None:
        """Count ``(rows, width)`` class indices of grid rows ``y..`` (values >= classes are nodata)."""
        for i, row in enumerate(class_rows):
            self.per_row[y + i] += np.bincount(row.ravel(), minlength=256)[: self.classes]

    def add_rows(self, per_row: np.ndarray, y: int) -> None:
        """Add ``(rows, classes)`` counts (another accumulator's ``per_row``) to grid rows ``y..``."""
        self.per_row[y : y + per_row.shape[0]] += per_row

    @property
    def pixels(self) -> np.ndarray:
        return self.per_row.sum(axis=0)

    @property
    def area(self) -> np.ndarray:
        """Ground area per class in m² (the pixel area of each row times its counts)."""
        return (self.per_row * row_pixel_areas(self.grid)[:, None]).sum(axis=0)

    def table(self, names: Sequence[str], colors: Sequence[str]) -> list[ClassCount]:
        pixels, area = self.pixels, self.area
        total = int(pixels.sum())
        return [
            ClassCount(n, c, int(p), (int(p) / total) if total else 0.0, float(a))
            for n, c, p, a in zip(names, colors, pixels, area, strict=True)
        ]


def counts_csv_text(counts: Sequence[ClassCount]) -> str:
    """The table as CSV with the columns ``class, pixels, share, area_m2, area_ha``."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(COLUMNS)
    for c in counts:
        writer.writerow([c.name, c.pixels, f"{c.share:.6f}", f"{c.area_m2:.2f}", f"{c.area_ha:.4f}"])
    return buf.getvalue()


def write_counts_csv(path: str | os.PathLike[str], counts: Sequence[ClassCount]) -> None:
    """Write the table atomically."""
    write_text_atomic(path, counts_csv_text(counts))


def format_table(counts: Sequence[ClassCount]) -> str:
    """The table aligned for a terminal."""
    name_w = max([len("class"), *(len(c.name) for c in counts)])
    lines = [f"{'class':<{name_w}} {'pixels':>12} {'share':>8} {'area_m2':>14} {'area_ha':>10}"]
    for c in counts:
        lines.append(
            f"{c.name:<{name_w}} {c.pixels:>12,} {100 * c.share:>7.2f}% {c.area_m2:>14,.1f} {c.area_ha:>10.4f}"
        )
    total_px = sum(c.pixels for c in counts)
    total_m2 = sum(c.area_m2 for c in counts)
    lines.append(
        f"{'total':<{name_w}} {total_px:>12,} {'100.00%' if total_px else '-':>8} {total_m2:>14,.1f} {total_m2 / 1e4:>10.4f}"
    )
    return "\n".join(lines)
