"""Blend overlapping windows' class probabilities into seamless strips of rows.

The one blender of the tree: ``segment`` (plugin, CLI, Processing, cluster) and
``training/feed_forward`` (through ``training/tiled.py``) both use it, on windows
``tileplan.plan_windows`` placed. Each window's probabilities are weighted by a window function that is 1 in
the middle and falls with the square of the distance to the edge across the
overlap, to ``EDGE_WEIGHT`` at the very edge (``window_weights``), so a pixel's
probability comes mostly from the windows that see it far from their edges;
dividing by the summed weights makes the blend a weighted mean. Only a band
of ``size`` rows of the output is held at a time: memory grows with the
extent's width, never with its area.
"""

from __future__ import annotations

import numpy as np

#: The weight at a window's very edge: small, but not 0, so a pixel seen only there still gets a value.
EDGE_WEIGHT = 1e-3


def window_weights(size: int, overlap: int) -> np.ndarray:
    """A ``(size, size)`` float32 weight: 1 inside, a squared ramp over ``overlap`` pixels at each edge."""
    if overlap <= 0:
        return np.ones((size, size), np.float32)
    i = np.arange(size, dtype=np.float32)
    edge = np.minimum(i, size - 1 - i) + 0.5
    # Squared: a pixel near one window's edge is near the middle of its neighbour, which should win.
    ramp = np.clip((edge / overlap) ** 2, EDGE_WEIGHT, 1.0).astype(np.float32)
    return np.outer(ramp, ramp)


class BandBlender:
    """Accumulate weighted window probabilities over a band of rows and hand out finished rows.

    The band spans columns ``x0 .. x0 + width`` of the grid and ``size`` rows
    starting at ``top``. ``add`` puts a window in; ``take(rows)`` returns the
    first ``rows`` rows (probabilities ``(C, rows, width)`` and a validity mask)
    and moves the band down by as many rows. Windows go in one row of windows
    at a time, each at the band's top row. A pixel no window covered, or only
    windows that had no imagery there, is invalid with probabilities 0.
    """

    def __init__(self, classes: int, size: int, overlap: int, x0: int, width: int, top: int) -> None:
        self.size = size
        self.x0 = x0
        self.top = top
        self.weights = window_weights(size, overlap)
        self.acc = np.zeros((classes, size, width), np.float32)
        self.wsum = np.zeros((size, width), np.float32)
        self.valid = np.zeros((size, width), bool)

    def add(self, probabilities: np.ndarray, valid: np.ndarray, x: int, y: int) -> None:
        """Add a ``(C, size, size)`` window whose top-left is grid pixel ``(x, y)``.

        ``valid`` (``(size, size)`` bool) marks its pixels that had imagery; ``ValueError``
        when ``y`` is not the band's top row (a bug in the caller's plan).
        """
        r = y - self.top
        c = x - self.x0
        if r != 0:
            raise ValueError(f"window row {y} is not the band's top row {self.top}")
        cols = slice(c, c + self.size)
        w = self.weights
        self.acc[:, :, cols] += probabilities * w
        self.wsum[:, cols] += w
        self.valid[:, cols] |= valid

    def blended(self, r0: int, r1: int, cols: slice | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The blend of band rows ``r0..r1`` (columns ``cols`` of the band), without moving the band.

        Probabilities ``(C, r1 - r0, width)`` (0 where no window counted) and their validity.
        """
        cols = slice(None) if cols is None else cols
        wsum = self.wsum[r0:r1, cols]
        acc = self.acc[:, r0:r1, cols]
        probs = np.divide(acc, wsum, out=np.zeros(acc.shape, np.float32), where=wsum > 0)
        return probs, self.valid[r0:r1, cols] & (wsum > 0)

    def advance(self, rows: int) -> None:
        """Move the band down by ``rows`` (at most its height): those rows are done with."""
        rows = min(rows, self.size)
        # Shift the band up in place (no new arrays per strip), then clear what is new.
        keep = self.size - rows
        self.acc[:, :keep] = self.acc[:, rows:]
        self.wsum[:keep] = self.wsum[rows:]
        self.valid[:keep] = self.valid[rows:]
        self.acc[:, keep:] = 0
        self.wsum[keep:] = 0
        self.valid[keep:] = False
        self.top += rows

    def take(self, rows: int) -> tuple[np.ndarray, np.ndarray]:
        """Return the blended first ``rows`` rows and shift the band down by ``rows``."""
        out = self.blended(0, min(rows, self.size))
        self.advance(rows)
        return out
