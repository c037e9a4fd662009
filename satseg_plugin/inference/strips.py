"""Stage *fetch*: a strip of windows' imagery, read from the source as far as the model needs it.

A strip is one row of windows (``tileplan.Windows``) across a stripe's columns.
``open_strip`` reads nothing: ``Strip.read_to`` reads its columns from the
left as the windows that run need them, so the model starts on the first
window once that window's tiles are in rather than after the whole strip's
(on a 64-tile run the first strip's fetch took 0.16 s of 6.5 s on one core,
the model waiting all of it). XYZ tiles arrive left to right
(``XyzSource.prefetch``), and a tile under two reads is decoded once.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .sources import RasterSource, XyzSource
from .tileplan import Windows

#: A processing area: ``area(y, h, x, w)`` is True for the grid pixels of those rows and columns inside it.
AreaFn = Callable[[int, int, int, int], np.ndarray]


def windows_of_strip(windows: Windows, j: int) -> list[tuple[int, int]]:
    """Top-left grid pixels of the windows of strip ``j``, left to right."""
    y = windows.y0 + j * windows.stride
    return [(windows.x0 + i * windows.stride, y) for i in range(windows.nx)]


def area_runs(area: AreaFn | None, y: int, w: Windows) -> list[tuple[int, int]]:
    """Column spans ``(x, width)`` of the strip at row ``y`` to read: runs of windows in the area.

    Without an area, the whole span of the windows in one.
    """
    if area is None:
        return [(w.x0, w.span_width)]
    inside = area(y, w.size, w.x0, w.span_width)
    spans: list[tuple[int, int]] = []
    for i in range(w.nx):
        x = w.x0 + i * w.stride
        if inside[:, x - w.x0 : x - w.x0 + w.size].any():
            if spans and spans[-1][0] + spans[-1][1] >= x:  # overlaps the run so far: extend it
                spans[-1] = (spans[-1][0], x + w.size - spans[-1][0])
            else:
                spans.append((x, w.size))
    return spans


def prefetch_strip(source: XyzSource | RasterSource, w: Windows, y: int, area: AreaFn | None = None) -> None:
    """Start fetching the imagery of the strip of windows at row ``y`` (only its runs in ``area``)."""
    for x, width in area_runs(area, y, w):
        source.prefetch(y, w.size, x, width)


class Strip:
    """Strip ``j`` of ``w``: arrays ``(size, span_width[, channels])`` from column ``w.x0``, read by ``read_to``.

    ``pixels`` and ``valid`` (imagery in the processing area: the pixels that are
    written) and ``imagery`` (imagery, in the area or not: the model's context)
    hold what has been read; columns not yet read are zero and invalid.
    ``positions`` are the windows that touch the area (all of them without one);
    whether one has imagery under it is known once it is read (``has_imagery``).
    """

    def __init__(
        self, source: XyzSource | RasterSource, w: Windows, j: int, channels: int, area: AreaFn | None = None
    ) -> None:
        self.source, self.windows = source, w
        self.y = w.y0 + j * w.stride
        self.positions = windows_of_strip(w, j)
        self.pixels = np.zeros((w.size, w.span_width, channels), np.uint8)
        self.valid = np.zeros((w.size, w.span_width), bool)
        self.imagery = self.valid  # the same pixels, unless an area leaves some of the imagery out
        self._inside: np.ndarray | None = None
        self._spans = area_runs(area, self.y, w)
        if area is not None:
            self._inside = area(self.y, w.size, w.x0, w.span_width)
            self.positions = [
                (x, y) for x, y in self.positions if self._inside[:, x - w.x0 : x - w.x0 + w.size].any()
            ]
            self.imagery = np.zeros_like(self.valid)
        # Tiles of every span stay decoded until the strip is read (XyzSource.read's ``keep``).
        self._keep = (self._spans[0][0], self._spans[-1][0] + self._spans[-1][1]) if self._spans else None
        # A raster reads its strip at once: GDAL gains nothing from parts.
        self._whole = not isinstance(source, XyzSource)
        self._read_until = w.x0  # grid columns left of this are read

    def read_to(self, x_end: int) -> None:
        """Read the strip's columns up to grid column ``x_end`` (exclusive); columns read stay as they are."""
        w = self.windows
        if self._whole:
            x_end = w.x0 + w.span_width
        if x_end <= self._read_until:
            return
        for x, width in self._spans:
            a, b = max(x, self._read_until), min(x + width, x_end)
            if a >= b:
                continue
            pixels, valid = self.source.read(self.y, w.size, a, b - a, self._keep)
            cols = slice(a - w.x0, b - w.x0)
            self.pixels[:, cols] = pixels
            if self._inside is None:
                self.valid[:, cols] = valid
            else:
                self.imagery[:, cols] = valid
                self.valid[:, cols] = valid & self._inside[:, cols]
        self._read_until = x_end

    def has_imagery(self, x: int) -> bool:
        """Whether the window at grid column ``x`` has a pixel to write (read it first)."""
        c = x - self.windows.x0
        return bool(self.valid[:, c : c + self.windows.size].any())
