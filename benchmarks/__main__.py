"""Run the benchmarks: ``python -m benchmarks`` runs every ``benchmarks/bench_*.py``; ``python -m benchmarks NAME``
runs one (``dataset``, ``bench_dataset`` or ``bench_dataset.py``), with any further arguments passed to it.

Modules are found by file name, so a new ``bench_*.py`` is picked up without
being listed here. Each one's ``main()`` runs in turn in this process and prints
its own figures.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import sys
import time
from collections.abc import Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent


def discover() -> list[str]:
    """Module names of ``benchmarks/bench_*.py``, sorted."""
    return sorted(p.stem for p in HERE.glob("bench_*.py"))


def module_name(text: str) -> str:
    """``dataset``, ``bench_dataset`` or ``bench_dataset.py`` -> ``bench_dataset``."""
    stem = Path(text).stem
    return stem if stem.startswith("bench_") else f"bench_{stem}"


def run_one(name: str, argv: list[str]) -> None:
    """Import ``benchmarks.NAME`` and call its ``main`` with ``argv`` (as its own command line)."""
    module = importlib.import_module(f"benchmarks.{name}")
    saved = sys.argv
    sys.argv = [f"benchmarks.{name}", *argv]  # for a main() that reads sys.argv itself
    try:
        if inspect.signature(module.main).parameters:
            module.main(argv)
        else:
            module.main()
    finally:
        sys.argv = saved


def main(argv: Sequence[str] | None = None) -> int:
    names = discover()
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Run every benchmarks/bench_*.py in turn, or one of them.",
        epilog=f"found: {', '.join(names) or 'none'}",
    )
    parser.add_argument(
        "name", nargs="?", help="one benchmark (e.g. dataset or bench_training); default: all"
    )
    parser.add_argument("args", nargs=argparse.REMAINDER, help="arguments for that one benchmark")
    args = parser.parse_args(argv)
    if args.name is None:
        chosen, extra = names, []
    else:
        name = module_name(args.name)
        if name not in names:
            parser.error(f"no benchmark {args.name!r}; found: {', '.join(names)}")
        chosen, extra = [name], args.args
    for name in chosen:
        print(f"=== {name} ===", flush=True)
        t0 = time.perf_counter()
        run_one(name, extra)
        print(f"=== {name}: {time.perf_counter() - t0:.0f} s ===\n", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
