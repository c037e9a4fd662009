"""The window and blend arithmetic of the inference core, against values worked out by hand.

``plan_windows``: the overlap in pixels is rounded to an even number, the
stride is the window minus the overlap and the first window starts half the
overlap before the grid; ``window_weights``: ``((min(i, size - 1 - i) + 0.5) /
overlap) ** 2`` per axis, clipped to ``[EDGE_WEIGHT, 1]``.
"""

from __future__ import annotations

import numpy as np
import pytest

from satseg_plugin.inference.blend import EDGE_WEIGHT, BandBlender, window_weights
from satseg_plugin.inference.errors import ParameterError
from satseg_plugin.inference.tileplan import (
    Windows,
    fewest_pixels_windows,
    overlap_pixels,
    plan_stripes,
    plan_windows,
    starts_inside,
    windows_touching,
)


def test_plan_windows() -> None:
    # 25 % of 256 = 64 px overlap: stride 192, the first window at -32; ceil((500 + 64 - 256) / 192) + 1 = 3.
    w = plan_windows(500, 300, 256, 25)
    assert w == Windows(size=256, stride=192, x0=-32, y0=-32, nx=3, ny=2)
    assert (w.count, w.span_width, w.span_height) == (6, 640, 448)
    # 30 % of 10 = 3 px, made even: 2; stride 8, first at -1, ceil((100 + 2 - 10) / 8) + 1 = 13.
    assert plan_windows(100, 100, 10, 30) == Windows(10, 8, -1, -1, 13, 13)
    assert plan_windows(512, 256, 256, 0) == Windows(256, 256, 0, 0, 2, 1)
    assert plan_windows(10, 10, 256, 25) == Windows(256, 192, -32, -32, 1, 1)  # smaller than a window


@pytest.mark.parametrize("overlap", [-1, 100, 150])
def test_plan_windows_refuses_an_overlap_out_of_range(overlap: float) -> None:
    with pytest.raises(ParameterError, match=r"overlap must be a percent in \[0, 100\)"):
        plan_windows(100, 100, 256, overlap)


def test_windows_touching_and_stripes() -> None:
    w = plan_windows(500, 300, 256, 25)  # windows start at columns -32, 160, 352
    # Columns 200..300: [-32, 224) and [160, 416) touch them, [352, 608) does not; rows 0..10: only the first row.
    assert windows_touching(w, 200, 300, 0, 10) == Windows(256, 192, -32, -32, 2, 1)
    assert windows_touching(w, 400, 500, 250, 300) == Windows(256, 192, 160, 160, 2, 1)
    # 600 columns: windows at -32, 160, 352, 544; stripes cut at multiples of 256.
    w = plan_windows(600, 100, 256, 25)
    stripes = plan_stripes(600, w, max_width=300)
    assert [(s.x0, s.x1, s.windows.x0, s.windows.nx) for s in stripes] == [
        (0, 256, -32, 2),
        (256, 512, 160, 2),
        (512, 600, 352, 2),
    ]


def test_starts_inside() -> None:
    assert starts_inside(544, 256, 256) == [0, 256, 288]  # the last tile moved back to end at 544
    assert starts_inside(512, 256, 256) == [0, 256]
    assert starts_inside(200, 256, 256) == [0]
    assert starts_inside(600, 256, 128) == [0, 128, 256, 344]


def test_window_weights() -> None:
    # size 8, overlap 4: distances to the edge 0.5, 1.5, 2.5, 3.5 -> (d / 4) ** 2 = 1/64, 9/64, 25/64, 49/64.
    ramp = np.array([1, 9, 25, 49, 49, 25, 9, 1]) / 64
    np.testing.assert_allclose(window_weights(8, 4), np.outer(ramp, ramp), rtol=1e-6)
    ramp = np.array([0.25, 1, 1, 1, 1, 1, 1, 0.25])  # overlap 1: (1.5 / 1) ** 2 clipped to 1
    np.testing.assert_allclose(window_weights(8, 1), np.outer(ramp, ramp))
    np.testing.assert_array_equal(window_weights(4, 0), np.ones((4, 4)))
    # (0.5 / 32) ** 2 = 1/4096 is below the floor: the corner is EDGE_WEIGHT squared.
    assert window_weights(64, 32)[0, 0] == pytest.approx(EDGE_WEIGHT**2)


def test_band_blender_weights_two_windows() -> None:
    # Windows of 4 at stride 2 (overlap 2): column weights 1/16, 9/16, 9/16, 1/16 each.
    band = BandBlender(classes=1, size=4, overlap=2, x0=0, width=6, top=0)
    ones, zeros = np.ones((1, 4, 4), np.float32), np.zeros((1, 4, 4), np.float32)
    band.add(ones, np.ones((4, 4), bool), 0, 0)
    band.add(zeros, np.zeros((4, 4), bool), 2, 0)
    # Column 2: 9/16 from the first window, 1/16 from the second -> 0.9; column 3: 1/16 and 9/16 -> 0.1.
    want = np.array([1, 1, 0.9, 0.1, 0, 0], np.float32)
    probs, valid = band.take(2)
    np.testing.assert_allclose(probs, np.broadcast_to(want, (1, 2, 6)), rtol=1e-6)
    np.testing.assert_array_equal(valid, np.broadcast_to([True] * 4 + [False] * 2, (2, 6)))
    assert band.top == 2
    probs, _ = band.take(2)  # the windows' lower rows, same weights
    np.testing.assert_allclose(probs[0, 0], want, rtol=1e-6)
    probs, valid = band.take(1)  # nothing was added here: no value, not valid
    assert not probs.any() and not valid.any()
    with pytest.raises(ValueError, match="not the band's top row"):
        band.add(ones, np.ones((4, 4), bool), 0, 0)


def test_fewest_pixels_windows_picks_the_side_that_overshoots_least() -> None:
    """A screen-sized 1920 x 1080 extent with a 36-px margin: 320-px windows beat 512 and 256 px."""
    margin = overlap_pixels(512, 7)
    assert margin == 36 and overlap_pixels(416, 100 * 36 / 416) == 36  # the same pixels at any side
    sizes = list(range(256, 513, 32))
    w = fewest_pixels_windows(1920, 1080, sizes, lambda s: 100 * margin / s)
    # By hand: side s, stride s - 36, n = ceil((L + 36 - s) / (s - 36)) + 1 per axis. 320 px: 7 x 4
    # windows, 2.87 Mpx; 256 px: 9 x 5, 2.95 Mpx; 448 px: 5 x 3, 3.01 Mpx; 512 px: 5 x 3, 3.93 Mpx.
    assert (w.size, w.stride, w.x0, w.nx, w.ny) == (320, 284, -18, 7, 4)
    assert w.count * w.size**2 == 2_867_200
    # A large square: 448 px (20 x 20, 80.3 Mpx) against 512 (18 x 18, 84.9) and 256 (38 x 38, 94.6).
    big = fewest_pixels_windows(8192, 8192, sizes, lambda s: 100 * margin / s)
    assert (big.size, big.nx) == (448, 20)
    # Equal pixels go to the larger windows (fewer model calls): four 512s or sixteen 256s, no margin.
    assert fewest_pixels_windows(1024, 1024, [256, 512], lambda s: 0).size == 512


def test_final_encoded_chunk_by_chunk_is_the_whole_strip_encoded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows blended and encoded 7 at a time (chunks end mid-strip) equal those done a strip at
    once, and the strips hand out every row of the grid once, in order."""
    from satseg_plugin.inference import segment
    from satseg_plugin.inference.outputs import EncodedRows, most_probable, quantize_probability

    def encode(p: np.ndarray, v: np.ndarray) -> EncodedRows:
        return EncodedRows(most_probable(p), (quantize_probability(p[1], v),))

    windows = plan_windows(100, 90, 32, 25)
    (stripe,) = plan_stripes(100, windows, 4096)
    rng = np.random.default_rng(3)
    bands = [BandBlender(3, 32, 8, windows.x0, windows.span_width, windows.y0) for _ in range(2)]
    next_row, got, want = 0, [], []
    for j in range(windows.ny):
        for i in range(windows.nx):
            p = rng.random((3, 32, 32), dtype=np.float32)
            v = rng.random((32, 32)) > 0.1
            for band in bands:
                band.add(p, v, windows.x0 + i * windows.stride, windows.y0 + j * windows.stride)
        monkeypatch.setattr(segment, "ENCODE_ROWS", 1000)
        whole = segment.final_encoded(bands[0], stripe, j, next_row, 90, encode)
        monkeypatch.setattr(segment, "ENCODE_ROWS", 7)
        chunked = segment.final_encoded(bands[1], stripe, j, next_row, 90, encode)
        assert (whole is None) == (chunked is None)
        if whole is not None and chunked is not None:
            assert whole[1] == chunked[1] == next_row and whole[0].classes.shape[1] == 100
            want.append(whole[0])
            got.append(chunked[0])
            next_row += whole[0].classes.shape[0]
    assert next_row == 90 and len(got) > 1
    assert any(r.classes.shape[0] > 7 for r in got)  # chunks were joined
    for a, b in zip(got, want, strict=True):
        np.testing.assert_array_equal(a.classes, b.classes)
        np.testing.assert_array_equal(a.heatmaps[0], b.heatmaps[0])
