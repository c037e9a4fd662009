"""SharedWindows: the windows across a stripe cut are kept from the first stripe for the next, then removed."""

from __future__ import annotations

import numpy as np

from satseg_plugin.inference.sharedwindows import SharedWindows
from satseg_plugin.inference.tileplan import plan_stripes, plan_windows


def test_windows_across_cuts_are_kept_once_and_removed() -> None:
    # 600 columns, 256-px windows at -32, 160, 352, 544; stripes 0..256, 256..512, 512..600:
    # the first and second share the window at 160, the second and third the one at 352.
    stripes = plan_stripes(600, plan_windows(600, 100, 256, 25), max_width=300)
    shared = SharedWindows()
    probs = {x: np.full((2, 256, 256), x, np.float32) for x in (-32, 160, 352, 544)}
    seen = []
    for k, stripe in enumerate(stripes):
        w = stripe.windows
        shared.advance(w, stripes[k + 1].windows if k + 1 < len(stripes) else None)
        for i in range(w.nx):
            x = w.x0 + i * w.stride
            kept = shared.take(x, w.y0)
            if kept is None:
                seen.append(x)
                if shared.wants(x, w.y0):
                    shared.put(x, w.y0, probs[x])
            else:
                np.testing.assert_array_equal(kept, probs[x])
    assert seen == [-32, 160, 352, 544]  # each window computed once
    assert shared.reused == 2
    assert shared._dir is not None and not any(shared._dir.iterdir())  # taken windows are removed at once
    folder = shared._dir
    shared.close()
    assert not folder.exists()


def test_a_window_across_two_cuts_stays_until_the_last_stripe() -> None:
    # 512-px windows over stripes of 256 columns: one window spans three stripes.
    stripes = plan_stripes(1024, plan_windows(1024, 512, 512, 25), max_width=256)
    shared = SharedWindows()
    runs: dict[tuple[int, int], int] = {}
    for k, stripe in enumerate(stripes):
        w = stripe.windows
        shared.advance(w, stripes[k + 1].windows if k + 1 < len(stripes) else None)
        for j in range(w.ny):
            for i in range(w.nx):
                pos = (w.x0 + i * w.stride, w.y0 + j * w.stride)
                kept = shared.take(*pos)
                if kept is None:
                    runs[pos] = runs.get(pos, 0) + 1
                    if shared.wants(*pos):
                        shared.put(*pos, np.zeros((1, 4, 4), np.float32))
    assert set(runs.values()) == {1}
    assert sum(s.windows.count for s in stripes) > len(runs)
    shared.close()
