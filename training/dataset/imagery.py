"""Fetch imagery tiles from an XYZ or TileJSON service, concurrently and resumably.

Templates: ``{z}``, ``{x}``, ``{y}``, ``{-y}`` (TMS rows), ``{q}`` (quadkey),
``{s}`` (subdomain, ``a``/``b``/``c`` unless given) and ``{token}``; a URL
without ``{z}`` is read as a TileJSON document whose first ``tiles`` template
(and ``scheme``) is used. An access token comes from an environment variable
(``MapboxAccessToken`` by default) and is sent as ``access_token=`` (or in
place of ``{token}``); it never appears in logs, files or messages.

Per tile: 404/204 -> skipped and listed; 401/403 -> the whole run stops with
a message about the token; 429, 5xx, timeouts and connection errors are
retried with exponential backoff, then listed; so are a body shorter than
its Content-Length and an image that does not decode cleanly (a JPEG or PNG
that ends early). A body over 16 MiB, or an image that is not the tile size,
is listed at once. Existing images are kept when they decode cleanly (resume),
else removed and fetched again; every file is written under a temporary name
and renamed, so an interruption leaves nothing half-written.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from satseg_plugin.inference.atomic import write_bytes_atomic
from satseg_plugin.inference.errors import SourceError
from satseg_plugin.inference.imageio import to_rgb, write_png
from satseg_plugin.inference.tilefetch import (
    MAX_BODY_BYTES,
    ThreadSessions,
    TileFailure,
    TileUnavailable,
    check_tile,
    fetch_tile,
)
from satseg_plugin.inference.tileurl import (
    DEFAULT_TOKEN_ENV,
    TileTemplate,
    TokenError,
    check_template,
    redact,
    resolve_template,
    strip_secrets,
)

from .tiles import Tile, tile_id


@dataclass
class DownloadReport:
    """What a download run did."""

    fetched: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)  # already on disk and intact (resume)
    damaged: list[str] = field(default_factory=list)  # on disk but damaged: removed and fetched again
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (tile id, reason)


class Downloader:
    """Fetch tiles into ``images/<id>.png`` with a pool of threads.

    ``fetch(tiles, progress)`` returns a ``DownloadReport``; it raises
    ``TokenError`` on 401/403 (after cancelling what is queued) and lets
    ``KeyboardInterrupt`` through after the running downloads have finished
    or been dropped, never leaving a partial file.
    """

    def __init__(
        self,
        template: TileTemplate,
        out_dir: str | os.PathLike[str],
        workers: int = 8,
        timeout: float = 30.0,
        retries: int = 3,
        backoff: float = 0.5,
        tile_size: int = 256,
        max_bytes: int = MAX_BODY_BYTES,
    ) -> None:
        self.template = template
        self.out_dir = Path(out_dir)
        self.workers = max(1, workers)
        self.timeout = timeout
        self.retries = max(0, retries)
        self.backoff = backoff
        self.tile_size = tile_size
        self.max_bytes = max_bytes
        self._stop = threading.Event()
        self._http = ThreadSessions("satseg-dataset/1", pool_maxsize=4)

    def path(self, tile: Tile) -> Path:
        return self.out_dir / f"{tile_id(tile)}.png"

    def _get(self, tile: Tile) -> tuple[bytes, np.ndarray]:
        """The tile's bytes and pixels (``fetch_tile``); ``TokenError`` on 401/403, else ``TileUnavailable``."""
        return fetch_tile(
            self._http.get(), self.template, tile, f"tile {tile_id(tile)}", self.tile_size,
            self.timeout, self.retries, self.backoff, self._stop, self.max_bytes,
        )  # fmt: skip

    def _one(self, tile: Tile) -> str | None:
        """Fetch, check and store one tile; the reason it was skipped, or ``None``."""
        try:
            data, pixels = self._get(tile)
        except TileUnavailable as exc:
            return exc.reason
        rgb, valid = to_rgb(pixels)
        if not valid.any():
            return "empty (fully transparent)"
        if self._stop.is_set():
            return "cancelled"
        if pixels.ndim == 3 and pixels.shape[2] == 3 and data[:8] == b"\x89PNG\r\n\x1a\n":
            write_bytes_atomic(self.path(tile), data)  # already an RGB PNG: keep the bytes
        else:
            write_png(self.path(tile), np.ascontiguousarray(rgb))
        return None

    def _intact(self, path: Path) -> bool:
        """Whether an image kept from an earlier run decodes cleanly at the tile size (resume)."""
        try:
            check_tile(path.read_bytes(), str(path), self.tile_size)
        except (TileFailure, OSError):
            return False
        return True

    def fetch(
        self,
        tiles: Iterable[Tile],
        progress: Callable[[int], None] | None = None,
        require_any: bool = True,
    ) -> DownloadReport:
        """Fetch ``tiles``; ``progress(n)`` after each (an exception it raises stops the download).

        ``require_any`` raises ``SourceError`` when not one tile could be had for
        a fault of the service (``check_any_fetched``); a chunk of a cluster
        build leaves that to the client, which sees every chunk.
        """
        report = DownloadReport()
        todo: list[Tile] = []
        for tile in tiles:
            path = self.path(tile)
            if path.is_file() and self._intact(path):
                report.kept.append(tile_id(tile))
            else:
                if path.is_file():  # damaged (a run cut short by a crash, a bad disk): never training data
                    report.damaged.append(tile_id(tile))
                    path.unlink()
                todo.append(tile)
        if report.kept and progress:
            progress(len(report.kept))
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._stop.clear()
        pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="satseg-tiles")
        futures: dict[Future, Tile] = {}
        it = iter(todo)
        try:
            # Keep a bounded queue so a stop does not leave thousands of queued jobs.
            for tile in it:
                futures[pool.submit(self._one, tile)] = tile
                if len(futures) >= self.workers * 4:
                    break
            while futures:
                done, _ = wait(futures, return_when=FIRST_COMPLETED)
                for fut in done:
                    tile = futures.pop(fut)
                    reason = fut.result()  # TokenError propagates from here
                    if reason is None:
                        report.fetched.append(tile_id(tile))
                    elif reason != "cancelled":
                        report.skipped.append((tile_id(tile), reason))
                    if progress:
                        progress(1)
                    nxt = next(it, None)
                    if nxt is not None:
                        futures[pool.submit(self._one, nxt)] = nxt
        except BaseException:
            self._stop.set()
            pool.shutdown(wait=True, cancel_futures=True)
            self._http.close()
            raise
        pool.shutdown(wait=True)
        self._http.close()
        if require_any:
            check_any_fetched(self.template, len(todo), report)
        return report


def check_any_fetched(template: TileTemplate, asked: int, report: DownloadReport) -> None:
    """``SourceError`` when none of the ``asked`` tiles came, each for a fault of the service.

    Tiles missing or damaged at the source (404, undecodable, empty) are the
    imagery's gaps, not a dead service: they never raise.
    """
    if asked and not report.fetched and len(report.skipped) == asked:
        reasons = {r for _, r in report.skipped}
        content = ("not found", "not a readable", "damaged image", "image ", "response larger", "empty")
        if all(not r.startswith(content) for r in reasons):
            raise SourceError(f"no tile could be fetched from {template.public}: {sorted(reasons)[0]}")


__all__ = [
    "DEFAULT_TOKEN_ENV",
    "DownloadReport",
    "Downloader",
    "TileTemplate",
    "TokenError",
    "check_any_fetched",
    "check_template",
    "redact",
    "resolve_template",
    "strip_secrets",
]
