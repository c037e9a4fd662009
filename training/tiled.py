"""Run a tile-sized model over an image of any size: overlapping windows, blended.

Windows of ``tile`` pixels step by ``tile - overlap``; the last one in each
direction is moved back to end at the image's edge, so no window reads past
it (an image smaller than a tile is padded). Each window's probabilities are
weighted by ``weight_window`` (high in the middle, low but non-zero at the
borders, where a convolutional net sees least context) and the weighted sum is
divided by the summed weights, so every pixel's probabilities still sum to 1.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from satseg_plugin.inference.progress import ProgressBar


def window_starts(length: int, tile: int, stride: int) -> list[int]:
    """Offsets of ``tile``-wide windows every ``stride`` pixels covering ``length``.

    The last window ends at ``length``; ``[0]`` when ``length <= tile``.
    """
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile + 1, stride))
    if starts[-1] + tile < length:
        starts.append(length - tile)
    return starts


def weight_window(tile: int, floor: float = 0.05) -> np.ndarray:
    """``[tile, tile]`` float32 weights: a tent, 1 at the centre, ``floor`` at the borders."""
    ramp = 1.0 - np.abs(np.linspace(-1.0, 1.0, tile))
    ramp = np.maximum(ramp, floor)
    return np.outer(ramp, ramp).astype(np.float32)


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
    """
    h, w = image.shape[:2]
    if h < tile or w < tile:  # pad with the edge pixels, cropped off again below
        image = np.pad(image, ((0, max(tile - h, 0)), (0, max(tile - w, 0)), (0, 0)), mode="edge")
    ph, pw = image.shape[:2]
    stride = max(1, tile - round(tile * overlap_percent / 100.0))
    windows = [(y, x) for y in window_starts(ph, tile, stride) for x in window_starts(pw, tile, stride)]
    weight = weight_window(tile)
    acc = np.zeros((num_classes, ph, pw), np.float32)
    total = np.zeros((ph, pw), np.float32)
    with ProgressBar(len(windows), label) as bar:
        for s in range(0, len(windows), batch_size):
            batch = windows[s : s + batch_size]
            tiles = np.stack([image[y : y + tile, x : x + tile] for y, x in batch])
            probs = predict(tiles)
            for (y, x), p in zip(batch, probs, strict=True):
                acc[:, y : y + tile, x : x + tile] += p * weight
                total[y : y + tile, x : x + tile] += weight
            bar.update(len(batch))
    return (acc / total)[:, :h, :w]
