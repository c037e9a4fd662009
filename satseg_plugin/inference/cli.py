"""What every satseg command-line tool does the same way: errors and Ctrl-C."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

from .errors import Cancelled, SatsegError


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
