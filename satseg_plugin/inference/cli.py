"""What every satseg command-line tool does the same way: errors, Ctrl-C and SIGTERM."""

from __future__ import annotations

import argparse
import contextlib
import re
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from .errors import Cancelled, SatsegError
from .runfolder import disk_fault

#: A value such as ``-9.49,38.82,-9.40,38.89`` or ``-.5,...`` (west of Greenwich): argparse takes it for an option.
_NEGATIVE_LIST = re.compile(r"^-\.?\d[\d.eE+-]*(,.*)?$")


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` with each option's default, except where it is None (those options say in
    their own words what happens when they are left out, and "(default: None)" says nothing)
    and on plain flags, where "--no-heatmaps ... (default: True)" reads as the opposite of
    what it means. ``--x/--no-x`` switches keep theirs: it says which of the two is on."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        plain_flag = action.nargs == 0 and not isinstance(action, argparse.BooleanOptionalAction)
        if action.default is None or plain_flag:
            return action.help
        return super()._get_help_string(action)


def join_negative_values(argv: list[str], options: tuple[str, ...] = ("--bbox",)) -> list[str]:
    """``["--bbox", "-9.4,..."]`` -> ``["--bbox=-9.4,..."]``, so western and southern bboxes parse."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        if argv[i] in options and i + 1 < len(argv) and _NEGATIVE_LIST.match(argv[i + 1].strip()):
            out.append(f"{argv[i]}={argv[i + 1]}")
            i += 2
        else:
            out.append(argv[i])
            i += 1
    return out


class Terminated(KeyboardInterrupt):
    """SIGTERM (a task manager's or a scheduler's stop): ends a run the way Ctrl-C does."""


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """While the block runs, SIGTERM raises ``Terminated`` in the main thread, as Ctrl-C raises
    ``KeyboardInterrupt``: the same clean-up (temporary files removed, locks released) runs."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGTERM"):
        yield
        return

    def handler(_signum: int, _frame: Any) -> None:
        raise Terminated

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_cli(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None) -> int:
    """Run ``main(argv)``; print user errors as one line and return an exit status.

    ``SatsegError`` -> ``error: ...`` on stderr, status 2; so is an ``OSError``
    or ``RuntimeError`` that says the disk is full or read-only (``runfolder.disk_fault``)
    wherever it comes from. Ctrl-C, SIGTERM or ``Cancelled`` -> status 130. Other
    exceptions are bugs and keep their traceback.
    """
    try:
        with sigterm_as_interrupt():
            return int(main(argv) or 0)
    except (KeyboardInterrupt, Cancelled) as exc:
        if isinstance(exc, Terminated):
            msg = "terminated (SIGTERM)"
        else:
            msg = str(exc) if isinstance(exc, Cancelled) and str(exc) else "interrupted"
        print(f"\n{msg}", file=sys.stderr)
        return 130
    except SatsegError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (OSError, RuntimeError) as exc:
        reason = disk_fault(exc)
        if reason is None:
            raise
        where = getattr(exc, "filename", None)
        print(f"error: cannot write{f' {where}' if where else ''}: {reason}", file=sys.stderr)
        return 2
