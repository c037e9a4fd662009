"""One tile over HTTP, taken only whole: complete, bounded in size, decoded without a warning.

Shared by the plugin's ``XyzSource`` and the dataset builder's ``Downloader``:
``fetch_tile`` (the retry loop), ``ThreadSessions`` (one HTTP session per
thread), ``get_body`` and ``check_tile``. A dropped connection can hand back a body
shorter than its ``Content-Length`` with status 200, and a PNG or JPEG that
ends early still decodes, with a grey or black remainder: both are failures
here, worth asking again. A body over ``MAX_BODY_BYTES`` is dropped while it
streams in, and a tile of the wrong size (or one whose header declares a
decompression bomb) is refused before its pixels are read: asking again would
not help.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time

import numpy as np
import requests
from requests.adapters import HTTPAdapter

from .imageio import ImageError, ImageSizeError, decode_image
from .tileplan import Tile
from .tileurl import RETRY_STATUS, TileTemplate, TokenError, redact, token_message

#: The largest tile body read (16 MiB): real tiles are tens of kilobytes.
MAX_BODY_BYTES = 16 * 2**20


class TileFailure(Exception):  # noqa: N818 - a tile's outcome, not a program error
    """A tile that cannot be used; ``reason`` is what reports list, ``retry`` whether asking again may help."""

    def __init__(self, reason: str, retry: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry = retry


def _mib(n: int) -> str:
    return f"{n / 2**20:.0f} MiB" if n >= 2**20 else f"{n} bytes"


def _socket_of(resp: requests.Response) -> socket.socket | None:
    """The socket a streamed response reads from (urllib3 1.26 and 2 keep it in different places)."""
    sock = getattr(getattr(resp.raw, "_connection", None), "sock", None)
    if sock is None:  # http.client's response -> its buffered socket file -> the socket
        fp = getattr(getattr(resp.raw, "_fp", None), "fp", None)
        sock = getattr(getattr(fp, "raw", None), "_sock", None)
    return sock if isinstance(sock, socket.socket) else None


def get_body(
    session: requests.Session, url: str, timeout: float, max_bytes: int = MAX_BODY_BYTES
) -> tuple[int, bytes]:
    """``(status, body)`` of ``GET url``; the body only for status 200, else ``b""``.

    Network errors raise ``requests.RequestException`` (the caller redacts and
    retries them); a short or oversized body raises ``TileFailure``. The whole
    request must end within ``timeout`` seconds: requests' own timeout is per read,
    so a server that trickles a byte a second would hold the worker for ever; at
    the deadline the connection is shut (``TileFailure``, worth asking again).
    """
    deadline = time.monotonic() + timeout
    with session.get(url, timeout=timeout, stream=True) as resp:
        if resp.status_code != 200:
            return resp.status_code, b""
        declared = resp.headers.get("Content-Length", "").strip()
        expected = int(declared) if declared.isdigit() else None
        if expected is not None and expected > max_bytes:
            raise TileFailure(f"response larger than {_mib(max_bytes)} ({expected} bytes declared)", False)
        chunks: list[bytes] = []
        total = 0
        late = threading.Event()

        def too_slow() -> TileFailure:
            what = f" of {expected}" if expected is not None else ""
            return TileFailure(f"too slow: {total}{what} bytes in the {timeout:g} s allowed", True)

        def cut_off() -> None:  # a blocked read returns (or fails) once its socket is shut
            late.set()
            sock = _socket_of(resp)
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

        watchdog = threading.Timer(max(0.0, deadline - time.monotonic()), cut_off)
        watchdog.daemon = True
        watchdog.start()
        try:
            for chunk in resp.iter_content(64 * 1024):
                total += len(chunk)
                if total > max_bytes:
                    raise TileFailure(f"response larger than {_mib(max_bytes)}", False)
                chunks.append(chunk)
        except (requests.exceptions.ChunkedEncodingError, requests.exceptions.ContentDecodingError):
            if late.is_set():
                raise too_slow() from None
            # urllib3 2 raises on a short body itself; urllib3 1.26 returns what came (checked below).
            what = f" of {expected}" if expected is not None else ""
            raise TileFailure(f"truncated response ({total}{what} bytes, connection broken)", True) from None
        except (requests.RequestException, OSError):
            if late.is_set():
                raise too_slow() from None
            raise
        finally:
            watchdog.cancel()
        # Bytes off the wire (still compressed under Content-Encoding), as Content-Length counts them.
        tell = getattr(resp.raw, "tell", None)
        wire = tell() if callable(tell) else total
        if late.is_set() and (expected is None or wire < expected):  # cut off, not just complete in time
            raise too_slow()
        if expected is not None and wire < expected:
            raise TileFailure(f"truncated response ({wire} of {expected} bytes)", True)
        return 200, b"".join(chunks)


def check_tile(data: bytes, what: str, size: int | None) -> np.ndarray:
    """The decoded pixels of a tile body; ``TileFailure`` unless it decodes cleanly at ``size`` x ``size``."""
    try:
        return decode_image(data, what, size=size)
    except ImageSizeError as exc:
        raise TileFailure(exc.reason, False) from None
    except ImageError as exc:
        raise TileFailure(exc.reason, True) from None


class TileUnavailable(LookupError):  # noqa: N818 - a tile's outcome, not a program error
    """A tile that could not be had (after the retries); ``reason`` is what reports list."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def fetch_tile(
    session: requests.Session,
    template: TileTemplate,
    tile: Tile,
    what: str,
    size: int | None,
    timeout: float,
    retries: int,
    backoff: float,
    stop: threading.Event,
    max_bytes: int = MAX_BODY_BYTES,
) -> tuple[bytes, np.ndarray]:
    """The body and pixels of ``tile``, whole and decoded cleanly at ``size`` x ``size``.

    A network error, a body cut short, a damaged image or a status in
    ``RETRY_STATUS`` is asked for again up to ``retries`` times, waiting
    ``backoff`` seconds, doubled each time (at most 8); a body too large or a
    tile of the wrong size is not. ``TokenError`` on 401/403;
    ``TileUnavailable(reason)`` when the tile cannot be had or ``stop`` is set.
    ``what`` names the tile in messages.
    """
    x, y, z = tile
    url = template.url(x, y, z)
    token = template.token
    last = ""
    for attempt in range(retries + 1):
        if stop.is_set():
            raise TileUnavailable("cancelled")
        if attempt:
            time.sleep(min(backoff * 2 ** (attempt - 1), 8.0))
        try:
            status, data = get_body(session, url, timeout, max_bytes)
            if status == 200:
                return data, check_tile(data, what, size)
        except requests.RequestException as exc:
            last = redact(f"{type(exc).__name__}: {exc}", token)
            continue
        except TileFailure as exc:
            last = exc.reason
            if exc.retry:
                continue
            raise TileUnavailable(last) from None
        if status in (401, 403):
            raise TokenError(token_message(status, template.token_env, token, template.withheld_from))
        if status in (204, 404):
            raise TileUnavailable(f"not found (HTTP {status})")
        last = f"HTTP {status}"
        if status not in RETRY_STATUS:
            break
    raise TileUnavailable(f"{last} (after {attempt + 1} tries)")


class ThreadSessions:
    """One ``requests.Session`` per thread (a session is not thread-safe), all closed by ``close``."""

    def __init__(self, user_agent: str, pool_maxsize: int) -> None:
        self.user_agent = user_agent
        self.pool_maxsize = pool_maxsize
        self._local = threading.local()
        self._lock = threading.Lock()
        self._sessions: list[requests.Session] = []

    def get(self) -> requests.Session:
        """The calling thread's session, made on first use."""
        sess = getattr(self._local, "session", None)
        if sess is None:
            sess = requests.Session()
            sess.mount("http://", HTTPAdapter(pool_maxsize=self.pool_maxsize))
            sess.mount("https://", HTTPAdapter(pool_maxsize=self.pool_maxsize))
            sess.headers["User-Agent"] = self.user_agent
            self._local.session = sess
            with self._lock:
                self._sessions.append(sess)
        return sess

    def close(self) -> None:
        """Close every thread's connections; a later ``get`` makes a new session."""
        with self._lock:
            for sess in self._sessions:
                sess.close()
            self._sessions.clear()
        self._local = threading.local()
