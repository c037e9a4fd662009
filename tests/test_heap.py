"""bound_heap: freed arrays go back to the system instead of staying in the process (glibc)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: Free a large block (glibc then raises its mmap threshold to its size), then allocate
#: 1 MiB blocks, each with a small one after it that stays, and free the large ones:
#: the resident size that remains is what the heap kept. Prints that, in MiB.
SCENARIO = textwrap.dedent(
    """
    import ctypes
    import sys
    from pathlib import Path
    from satseg_plugin.inference.heap import bound_heap

    def rss():
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024

    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    if sys.argv[1] == "bound":
        assert bound_heap() and bound_heap()  # once, and again
    libc.free(libc.malloc(8 << 20))  # under glibc's 32 MiB cap on the adjustment
    before = rss()
    blocks, small = [], []
    for _ in range(200):
        b = libc.malloc(1 << 20)
        ctypes.memset(b, 1, 1 << 20)  # touched: resident
        blocks.append(b)
        small.append(libc.malloc(200))
    for b in blocks:
        libc.free(b)
    print(rss() - before)
    """
)


def kept_mib(mode: str) -> float:
    out = subprocess.run(
        [sys.executable, "-c", SCENARIO, mode], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return float(out.stdout.strip())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_bound_heap_returns_freed_arrays_to_the_system() -> None:
    unbounded, bounded = kept_mib("default"), kept_mib("bound")
    assert unbounded > 150  # the control: glibc's default keeps the 200 MiB freed
    assert bounded < 20
