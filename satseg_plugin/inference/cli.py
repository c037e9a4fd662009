"""What every satseg command-line tool does the same way: errors and Ctrl-C."""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Sequence

from .errors import Cancelled, SatsegError

#: A value such as ``-9.49,38.82,-9.40,38.89`` (a bbox west of Greenwich): argparse takes it for an option.
_NEGATIVE_LIST = re.compile(r"^-\d[\d.eE+-]*(,.*)?$")


def join_negative_values(argv: list[str], options: tuple[str, ...] = ("--bbox",)) -> list[str]:
    """``["--bbox", "-9.4,..."]`` -> ``["--bbox=-9.4,..."]``, so western and southern bboxes parse."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        if argv[i] in options and i + 1 < len(argv) and _NEGATIVE_LIST.match(argv[i + 1]):
            out.append(f"{argv[i]}={argv[i + 1]}")
            i += 2
        else:
            out.append(argv[i])
            i += 1
    return out


def run_cli(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None) -> int:
    """Run ``main(argv)``; print user errors as one line and return an exit status.

    ``SatsegError`` -> ``error: ...`` on stderr, status 2; Ctrl-C or
    ``Cancelled`` -> status 130. Other exceptions are bugs and keep their
    traceback.
    """
    try:
        return int(main(argv) or 0)
    except (KeyboardInterrupt, Cancelled) as exc:
        msg = str(exc) if isinstance(exc, Cancelled) and str(exc) else "interrupted"
        print(f"\n{msg}", file=sys.stderr)
        return 130
    except SatsegError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
