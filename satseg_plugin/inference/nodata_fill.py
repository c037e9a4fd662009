"""Imagery for the pixels of a model window that have none (beyond a raster's or a service's edge).

The models are trained on tiles full of imagery, and where augmentation shrinks a
tile it pads it with a mirror of itself (``training.augment.rescale``). A window
that reaches past the imagery's edge is given the same: the imagery mirrored at
its edge, not black, which no training tile shows and which the three-country
buildings weights read as buildings along every edge of the Zanzibar sample
(building share 11.4 % of the sample against 9.4 % with windows inside it).
"""

from __future__ import annotations

import numpy as np


def fill_nodata(pixels: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """``pixels`` (``H, W, bands``) with its invalid pixels given imagery; unchanged when all are valid.

    The bounding box of the valid pixels is mirrored outwards (``numpy.pad``'s
    *symmetric* mode) to the window's size; invalid pixels inside that box (a
    missing tile among present ones) take each band's mean over the valid ones.
    A window without any valid pixel is returned as it is. Never writes to ``pixels``.
    """
    if valid.all() or not valid.any():
        return pixels
    rows = np.flatnonzero(valid.any(axis=1))
    cols = np.flatnonzero(valid.any(axis=0))
    r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    h, w = valid.shape
    box = pixels[r0:r1, c0:c1]
    box_valid = valid[r0:r1, c0:c1]
    if not box_valid.all():
        box = box.copy()
        box[~box_valid] = box[box_valid].mean(axis=0).round().astype(pixels.dtype)
    return np.pad(box, ((r0, h - r1), (c0, w - c1), (0, 0)), mode="symmetric")
