"""Hand the heap's free memory back to the system between strips (glibc's ``malloc_trim``).

Every strip allocates and frees arrays of a few MB in several threads (decoded
tiles, the strip's pixels, blended and encoded rows). glibc raises its mmap
threshold to the largest block freed, so after the first strip those arrays
come from the heap, and what they free stays in the process: the resident size
creeps up over a run, more on a larger extent. ``malloc_trim(0)`` once per strip
returns the free pages (not only the heap's top): 8 to 12 MB off the peak of a
1,000- or 4,000-tile run and 37 MB off what the process (QGIS, after a run)
keeps, at no time the benchmark can tell from its noise (benchmarks/README.md,
section 3). Fixing the trim threshold instead (``mallopt``) trims on every free
and cost 6 % of a run's time. A no-op where the C library has no
``malloc_trim`` (macOS, Windows, musl).
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable
from functools import cache


@cache
def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        fn = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_size_t]
    fn.restype = ctypes.c_int
    return fn


def release_free_heap() -> bool:
    """Return the heap's free pages to the system; True where the C library could be asked."""
    fn = _malloc_trim()
    if fn is None:
        return False
    fn(0)
    return True
