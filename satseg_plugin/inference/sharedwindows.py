"""Windows that two neighbouring stripes share: run once, kept on disk for the second stripe.

``plan_stripes`` gives each stripe every window that touches it, so the windows
across a cut belong to both stripes: about one window column per cut, 5 to 10 %
of all windows on an extent a few stripes wide. Their probabilities are kept
from the first stripe for the second instead of running the model on them again.
They go to a temporary folder, not memory: a cut's windows span the extent's
whole height, and memory has to stay bounded whatever the extent's shape.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np

from .tileplan import Windows


def _columns(w: Windows) -> set[int]:
    return {w.x0 + i * w.stride for i in range(w.nx)}


def _rows(w: Windows) -> set[int]:
    return {w.y0 + j * w.stride for j in range(w.ny)}


class SharedWindows:
    """Probabilities of the windows the current stripe shares with the next, by ``(x, y)``.

    Call ``advance(current, following)`` as each stripe starts; ``take`` gives a
    window the previous stripe kept (None otherwise), ``wants`` says whether a
    window this stripe runs is one to ``put`` for the next. Windows of both
    stripes are cells of one grid (``windows_touching``), so equal ``(x, y)``
    means the same window. ``close`` removes the folder.
    """

    def __init__(self) -> None:
        self._dir: Path | None = None
        self._files: dict[tuple[int, int], Path] = {}
        self._next_x: set[int] = set()
        self._next_y: set[int] = set()
        self.reused = 0  # windows taken instead of run

    def advance(self, current: Windows, following: Windows | None) -> None:
        """Start ``current``: windows it also shares with ``following`` are the ones to keep."""
        if following is None:
            self._next_x, self._next_y = set(), set()
        else:
            self._next_x = _columns(current) & _columns(following)
            self._next_y = _rows(current) & _rows(following)

    def wants(self, x: int, y: int) -> bool:
        """Whether the next stripe runs window ``(x, y)`` too."""
        return x in self._next_x and y in self._next_y

    def put(self, x: int, y: int, probs: np.ndarray) -> None:
        """Keep window ``(x, y)``'s probabilities for the next stripe."""
        if self._dir is None:
            self._dir = Path(tempfile.mkdtemp(prefix="satseg-shared-windows-"))
        path = self._dir / f"{x}_{y}.npy"
        np.save(path, probs, allow_pickle=False)
        self._files[(x, y)] = path

    def take(self, x: int, y: int) -> np.ndarray | None:
        """The kept probabilities of window ``(x, y)``, or None; kept on only if the next stripe wants them too."""
        path = self._files.get((x, y))
        if path is None:
            return None
        probs = np.load(path, allow_pickle=False)
        if not self.wants(x, y):
            del self._files[(x, y)]
            path.unlink()
        self.reused += 1
        return probs

    def close(self) -> None:
        """Remove every kept window."""
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
        self._dir, self._files = None, {}
