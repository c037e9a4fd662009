"""Keep the C heap from holding on to the memory a run frees (glibc only).

A run allocates and frees arrays of a few megabytes per strip (decoded tiles,
blended probabilities, the bytes of each output) in several threads. glibc's
malloc raises its mmap threshold to the largest block freed so far, so after
the first strip those arrays come from the heap instead of fresh mappings,
and what is freed stays in the process wherever a small allocation sits above
it: the resident size then grows with the number of strips, not with what the
run holds. Fixing the trim threshold turns that adjustment off (the mmap
threshold stays at glibc's 128 KiB, so large arrays go back to the system when
freed). Measured on 1,024 tiles with the shipped model: peak 395 -> 343 MB
(benchmarks/README.md, issue 11).
"""

from __future__ import annotations

import ctypes
import sys

#: glibc's ``M_TRIM_THRESHOLD`` parameter of ``mallopt``.
M_TRIM_THRESHOLD = -1
#: Free memory at the top of the heap above this goes back to the system.
TRIM_THRESHOLD_BYTES = 1 << 20

_bounded = False


def bound_heap() -> bool:
    """Fix glibc's trim threshold for the process, once; True when it is in force.

    The setting is process-wide (in QGIS it applies to QGIS too: only blocks of
    128 KiB and more are mapped on their own, as glibc does by default before its
    first large free). A no-op returning False where the C library is not glibc.
    """
    global _bounded
    if _bounded:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)  # the C library the process already runs on
        mallopt = libc.mallopt
        libc.gnu_get_libc_version  # noqa: B018 (glibc's own symbol: musl's mallopt does nothing)
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    _bounded = bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))
    return _bounded
