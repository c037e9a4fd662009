"""One tile over HTTP, taken only whole: complete, bounded in size, decoded without a warning.

Shared by the plugin's ``XyzSource`` and the dataset builder's ``Downloader``
(each keeps its own retry loop). A dropped connection can hand back a body
shorter than its ``Content-Length`` with status 200, and a PNG or JPEG that
ends early still decodes, with a grey or black remainder: both are failures
here, worth asking again. A body over ``MAX_BODY_BYTES`` is dropped while it
streams in, and a tile of the wrong size (or one whose header declares a
decompression bomb) is refused before its pixels are read: asking again would
not help.
"""

from __future__ import annotations

import numpy as np
import requests

from .imageio import ImageError, ImageSizeError, decode_image

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


def get_body(
    session: requests.Session, url: str, timeout: float, max_bytes: int = MAX_BODY_BYTES
) -> tuple[int, bytes]:
    """``(status, body)`` of ``GET url``; the body only for status 200, else ``b""``.

    Network errors raise ``requests.RequestException`` (the caller redacts and
    retries them); a short or oversized body raises ``TileFailure``.
    """
    with session.get(url, timeout=timeout, stream=True) as resp:
        if resp.status_code != 200:
            return resp.status_code, b""
        declared = resp.headers.get("Content-Length", "").strip()
        expected = int(declared) if declared.isdigit() else None
        if expected is not None and expected > max_bytes:
            raise TileFailure(f"response larger than {_mib(max_bytes)} ({expected} bytes declared)", False)
        chunks: list[bytes] = []
        total = 0
        try:
            for chunk in resp.iter_content(64 * 1024):
                total += len(chunk)
                if total > max_bytes:
                    raise TileFailure(f"response larger than {_mib(max_bytes)}", False)
                chunks.append(chunk)
        except (requests.exceptions.ChunkedEncodingError, requests.exceptions.ContentDecodingError):
            # urllib3 2 raises on a short body itself; urllib3 1.26 returns what came (checked below).
            what = f" of {expected}" if expected is not None else ""
            raise TileFailure(f"truncated response ({total}{what} bytes, connection broken)", True) from None
        # Bytes off the wire (still compressed under Content-Encoding), as Content-Length counts them.
        tell = getattr(resp.raw, "tell", None)
        wire = tell() if callable(tell) else total
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
