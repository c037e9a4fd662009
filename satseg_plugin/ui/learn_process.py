"""Run ``python -m training.learn_area --progress-json`` and read its progress lines (no Qt).

The CLI prints one JSON object per line on stdout::

    {"phase": "dataset"|"train"|"export"|"score"|"done", "fraction": 0..1, "message": "...",
     "epoch": n, "val_iou": x, "seconds_left": s}

and the ``done`` line adds ``model`` (the new .onnx), ``report`` (report.csv) and
``card`` (the model card). A user error is exit status 2 with ``error: ...`` on
stderr; SIGTERM makes it stop cleanly (it removes what it had half-written).
Both the QgsTask and the Processing algorithm run it through ``run_learn``.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..inference.errors import Cancelled, SatsegError
from .learn_runtime import TrainingRuntime

PHASES = ("dataset", "train", "export", "score", "done")
PHASE_WORDS = {
    "dataset": "building the dataset",
    "train": "training",
    "export": "exporting the model",
    "score": "scoring before/after",
    "done": "done",
}
#: Seconds the CLI gets to stop cleanly after SIGTERM before it is killed.
GRACE_SECONDS = 30.0
STDERR_LINES = 40  # kept for the error message and the log
PIPE_WAIT_SECONDS = 5.0


@dataclass(frozen=True)
class LearnRequest:
    """One "Train on this area" run, as the CLI's options."""

    bbox: tuple[float, float, float, float]
    bbox_crs: str
    osm_path: str
    out_dir: str
    tiles_url: str | None = None
    raster_path: str | None = None
    classes_path: str | None = None
    base: str | None = None  # a .pt checkpoint; None: train from scratch (--base none)
    minutes: float = 15.0

    def args(self) -> list[str]:
        """Return the CLI arguments (after ``-m training.learn_area``)."""
        if bool(self.tiles_url) == bool(self.raster_path):
            raise SatsegError("give the imagery as exactly one of a tile URL and a raster file")
        if not self.osm_path:
            raise SatsegError("choose the OpenStreetMap data (a file or a vector layer)")
        if not (self.minutes > 0 and math.isfinite(self.minutes)):
            raise SatsegError("the time budget must be more than 0 minutes")
        w, s, e, n = self.bbox
        if not (w < e and s < n):
            raise SatsegError("the extent is empty: choose a larger area")
        out = ["--bbox", ",".join(repr(float(v)) for v in self.bbox), "--bbox-crs", self.bbox_crs]
        out += ["--tiles", self.tiles_url] if self.tiles_url else ["--raster", str(self.raster_path)]
        out += ["--osm", self.osm_path]
        if self.classes_path:
            out += ["--classes", self.classes_path]
        out += ["--base", self.base or "none", "--minutes", f"{self.minutes:g}"]
        out += ["--out", self.out_dir, "--progress-json"]
        return out


@dataclass(frozen=True)
class LearnProgress:
    """One progress line of the CLI."""

    phase: str
    fraction: float = 0.0
    message: str = ""
    epoch: int | None = None
    val_iou: float | None = None
    seconds_left: float | None = None

    def describe(self) -> str:
        """One line for the task bar: phase, epoch, validation IoU, time left."""
        parts = [PHASE_WORDS.get(self.phase, self.phase)]
        if self.epoch is not None:
            parts.append(f"epoch {self.epoch}")
        if self.val_iou is not None:
            parts.append(f"val IoU {100 * self.val_iou:.1f} %")
        if self.seconds_left is not None and self.phase != "done":
            parts.append(f"{format_seconds(self.seconds_left)} left")
        return ", ".join(parts)


@dataclass(frozen=True)
class LearnResult:
    """What the ``done`` line points to."""

    model: str
    report: str
    card: str
    verdict: str = ""  # one line: the held-out mIoU against the base's (runs before it: empty)


def format_seconds(seconds: float) -> str:
    """``75`` -> ``"1 min 15 s"``, ``8`` -> ``"8 s"``."""
    s = max(0, round(seconds))
    return f"{s // 60} min {s % 60:02d} s" if s >= 60 else f"{s} s"


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def parse_line(line: str) -> tuple[LearnProgress, LearnResult | None] | None:
    """Return the progress (and on ``done`` the result) of one stdout line; None for other lines.

    Lines that are not a JSON object with a known ``phase`` (a library's warning
    on stdout, say) are not progress and are left to the log.
    """
    text = line.strip()
    if not text.startswith("{"):
        return None
    try:
        obj = json.loads(text)
    except ValueError:
        return None
    if not isinstance(obj, dict) or obj.get("phase") not in PHASES:
        return None
    fraction = _number(obj.get("fraction"))
    epoch = _number(obj.get("epoch"))
    progress = LearnProgress(
        phase=obj["phase"],
        fraction=min(1.0, max(0.0, fraction)) if fraction is not None else 0.0,
        message=str(obj.get("message") or ""),
        epoch=int(epoch) if epoch is not None else None,
        val_iou=_number(obj.get("val_iou")),
        seconds_left=_number(obj.get("seconds_left")),
    )
    result = None
    if progress.phase == "done":
        paths = [obj.get(k) for k in ("model", "report", "card")]
        if all(isinstance(p, str) and p for p in paths):
            result = LearnResult(*paths, verdict=str(obj.get("verdict") or ""))  # type: ignore[arg-type]
    return progress, result


class LearnCrashError(Exception):
    """The CLI stopped in a way that is not a user error (a bug): ``details`` is its stderr tail."""

    def __init__(self, message: str, details: str) -> None:
        super().__init__(message)
        self.details = details


def _stop(proc: subprocess.Popen[str], grace: float) -> None:
    """SIGTERM to the CLI (it cleans up), then kill it and its process group after ``grace`` seconds."""
    with contextlib.suppress(ProcessLookupError):
        if sys.platform == "win32":
            proc.terminate()
        else:
            proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if sys.platform == "win32":
                proc.kill()
            else:
                os.killpg(proc.pid, signal.SIGKILL)  # worker processes it started go too
        proc.wait()


def run_learn(
    runtime: TrainingRuntime,
    request: LearnRequest,
    progress: Callable[[LearnProgress], None] = lambda p: None,
    is_cancelled: Callable[[], bool] = lambda: False,
    log: Callable[[str], None] = lambda line: None,
    grace: float = GRACE_SECONDS,
) -> LearnResult:
    """Run the CLI to its end; return the ``done`` line's paths. Blocks: call it off the main thread.

    Raises ``Cancelled`` once ``is_cancelled()`` turned true and the process
    ended, ``SatsegError`` with the CLI's ``error: ...`` text for a user error,
    ``LearnCrashError`` for any other ending without a ``done`` line. ``log`` gets
    every line that is not progress (stdout and stderr).
    """
    cmd = runtime.command(request.args())
    try:
        proc = subprocess.Popen(
            cmd,
            cwd=runtime.checkout,
            env=runtime.env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            encoding="utf-8",
            errors="replace",
            bufsize=1,
            start_new_session=sys.platform != "win32",  # its own group: a kill takes its workers too
        )
    except OSError as exc:
        raise SatsegError(f"cannot start the training Python {runtime.python}: {exc}") from None
    lines: queue.Queue[tuple[str, str | None]] = queue.Queue()
    stderr_tail: deque[str] = deque(maxlen=STDERR_LINES)

    def read(stream: Any, name: str) -> None:
        for line in stream:
            lines.put((name, line.rstrip("\n")))
        lines.put((name, None))

    readers = [
        threading.Thread(target=read, args=(proc.stdout, "out"), daemon=True),
        threading.Thread(target=read, args=(proc.stderr, "err"), daemon=True),
    ]
    for t in readers:
        t.start()
    result: LearnResult | None = None
    open_streams = 2
    cancelled = False
    exited_at: float | None = None
    try:
        while open_streams:
            if not cancelled and is_cancelled():
                cancelled = True
                threading.Thread(target=_stop, args=(proc, grace), daemon=True).start()
            try:
                name, line = lines.get(timeout=0.2)
            except queue.Empty:
                if proc.poll() is not None:  # a leftover child may hold the pipes open: do not wait forever
                    exited_at = exited_at or time.monotonic()
                    if time.monotonic() - exited_at > PIPE_WAIT_SECONDS:
                        break
                continue
            if line is None:
                open_streams -= 1
                continue
            if name == "err":
                stderr_tail.append(line)
                log(line)
                continue
            parsed = parse_line(line)
            if parsed is None:
                log(line)
                continue
            step, done = parsed
            result = done or result
            if not cancelled:
                progress(step)
        code = proc.wait()
    except BaseException:
        _stop(proc, grace)
        raise
    finally:
        for t in readers:
            t.join(timeout=5)
        for stream in (proc.stdout, proc.stderr):
            with contextlib.suppress(OSError):
                stream.close()  # type: ignore[union-attr]
    if cancelled:
        raise Cancelled("training was cancelled")
    if code == 0 and result is not None:
        return result
    errors = [ln for ln in stderr_tail if ln.startswith("error: ")]
    if code == 2 and errors:
        raise SatsegError(errors[-1][len("error: ") :])
    details = "\n".join(stderr_tail)
    if code == 0:
        raise LearnCrashError("training ended without saying where the new model is", details)
    raise LearnCrashError(f"training stopped unexpectedly (exit status {code})", details)


def read_report(path: str | Path) -> tuple[list[str], list[list[str]]]:
    """Return the header and rows of ``report.csv`` (columns as the file names them)."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    if not rows:
        raise SatsegError(f"the report {path} is empty")
    return rows[0], [r for r in rows[1:] if r]
