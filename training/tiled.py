"""Run a tile-sized model over an in-memory image with the plugin's own windows and blend.

A thin adapter over the inference core, so that ``feed_forward`` gives the
probabilities the plugin and ``python -m satseg_plugin.inference segment``
give for the same model and image: the windows are
``satseg_plugin.inference.tileplan.plan_windows`` (the first starts
``overlap / 2`` pixels before the image), the blend is
``satseg_plugin.inference.blend.BandBlender``, and a window's pixels outside
the image are its imagery mirrored (``satseg_plugin.inference.nodata_fill``),
as beyond a raster's edge in the plugin. Nothing here computes a window
position, a weight or a fill of its own.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from satseg_plugin.inference.blend import BandBlender
from satseg_plugin.inference.nodata_fill import fill_nodata
from satseg_plugin.inference.progress import ProgressBar
from satseg_plugin.inference.tileplan import plan_windows


def predict_image(
    image: np.ndarray,
    predict: Callable[[np.ndarray], np.ndarray],
    num_classes: int,
    tile: int,
    overlap_percent: float,
    batch_size: int = 8,
    label: str = "tiles",
) -> np.ndarray:
    """Blended class probabilities ``[C, H, W]`` float32 of an ``(H, W, 3)`` uint8 image.

    ``predict`` maps uint8 ``[N, tile, tile, 3]`` to ``[N, C, tile, tile]``.
    ``ParameterError`` for an overlap outside [0, 100).
    """
    h, w = image.shape[:2]
    windows = plan_windows(w, h, tile, overlap_percent)
    # The windows' span as one canvas, the image at (-x0, -y0) and nothing around it.
    canvas = np.zeros((windows.span_height, windows.span_width, 3), np.uint8)
    inside = np.zeros(canvas.shape[:2], bool)
    canvas[-windows.y0 : -windows.y0 + h, -windows.x0 : -windows.x0 + w] = image
    inside[-windows.y0 : -windows.y0 + h, -windows.x0 : -windows.x0 + w] = True
    blender = BandBlender(
        num_classes, tile, tile - windows.stride, windows.x0, windows.span_width, windows.y0
    )
    rows: list[np.ndarray] = []
    with ProgressBar(windows.count, label) as bar:
        for j in range(windows.ny):
            top = j * windows.stride  # canvas row of this strip of windows
            lefts = [i * windows.stride for i in range(windows.nx)]
            for b in range(0, len(lefts), batch_size):
                batch = lefts[b : b + batch_size]
                cut = [(slice(top, top + tile), slice(x, x + tile)) for x in batch]
                probs = predict(np.stack([fill_nodata(canvas[c], inside[c]) for c in cut]))
                for x, p in zip(batch, probs, strict=True):
                    blender.add(p, np.ones((tile, tile), bool), windows.x0 + x, windows.y0 + top)
                bar.update(len(batch))
            # The rows above the next strip get no more windows; the last strip finishes the band.
            rows.append(blender.take(windows.stride if j + 1 < windows.ny else tile)[0])
    blended = np.concatenate(rows, axis=1)
    return blended[:, -windows.y0 : -windows.y0 + h, -windows.x0 : -windows.x0 + w]
