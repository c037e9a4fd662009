"""A real HTTP XYZ tile server on 127.0.0.1 for the demo, tests and benchmarks.

``python -m scripts.tileserver FOLDER`` serves a folder of tiles (``z/x/y.png``
or OpenAerialMap's ``OAM-<x>-<y>-<z>.png``) until Ctrl-C; the URL template to
paste into QGIS (XYZ Tiles > New Connection) or into the satseg tools is
printed at start.

Serves ``/{z}/{x}/{y}.png`` (and ``/tiles.json``, a TileJSON document) from a
``provider(z, x, y) -> bytes | None`` function, with faults that can be set
per tile: an HTTP status, a corrupt body, a delay, a body cut short of its
Content-Length, an endless body, a body sent a byte a second. It can require an access token
(``?access_token=`` or another parameter), and it counts every request (and
keeps every request line) so tests can check that a resumed download fetches
only what is missing and where a token went.
"""

from __future__ import annotations

import contextlib
import json
import re
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

TileKey = tuple[int, int, int]
Provider = Callable[[int, int, int], "bytes | None"]

_TILE_RE = re.compile(r"^/(\d+)/(\d+)/(\d+)\.(png|jpg|jpeg|webp)$")
_OAM_RE = re.compile(r"^OAM-(\d+)-(\d+)-(\d+)\.png$")


def oam_provider(*folders: str | Path) -> Provider:
    """Serve the ``OAM-<x>-<y>-<z>.png`` files of the given folders."""
    files: dict[TileKey, Path] = {}
    for folder in folders:
        for path in Path(folder).glob("OAM-*.png"):
            m = _OAM_RE.match(path.name)
            if m:
                x, y, z = (int(v) for v in m.groups())
                files[(z, x, y)] = path
    return lambda z, x, y: files[(z, x, y)].read_bytes() if (z, x, y) in files else None


def folder_provider(*folders: str | Path) -> Provider:
    """Serve ``{z}/{x}/{y}.png`` files under the given folders (first match wins)."""
    roots = [Path(f) for f in folders]

    def provide(z: int, x: int, y: int) -> bytes | None:
        for root in roots:
            path = root / str(z) / str(x) / f"{y}.png"
            if path.is_file():
                return path.read_bytes()
        return None

    return provide


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        # A client that hangs up mid-answer (a stopped run, a body cut off) is no server error.
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)  # type: ignore[arg-type]


class TileServer:
    """Context manager running a threaded tile server on a free loopback port.

    ``faults[(z, x, y)]`` may be an int (HTTP status), ``"corrupt"`` (a body that
    is not an image), a float (seconds to wait before answering), ``"short"``
    (the tile's Content-Length, half its bytes, then the connection closes: a
    dropped connection), ``"endless"`` (zeros until the client hangs up, no
    Content-Length), ``"huge"`` (the same, declaring 400 MB) or ``"trickle"``
    (the tile's Content-Length, then one byte every ``trickle_seconds``, counted in
    ``trickled``: each read in time, the whole never); or a list of
    those, one per request in turn (``None``: the tile as it is), the last one
    staying. ``token``, when set, must be given as ``?<token_param>=``
    (``access_token`` by default); otherwise 401. ``tilejson_tiles`` replaces
    the template /tiles.json names (a tile server on another host).
    """

    def __init__(
        self,
        provider: Provider,
        token: str | None = None,
        delay: float = 0.0,
        port: int = 0,
        token_param: str = "access_token",
    ) -> None:
        self.provider = provider
        self.token = token
        self.token_param = token_param
        self.delay = delay
        self.faults: dict[TileKey, int | str | float | list[int | str | float | None]] = {}
        self.requests: Counter[TileKey] = Counter()
        self.lines: list[str] = []  # every request's path and query, as received
        self.tilejson_tiles: str | None = None
        self.trickle_seconds = 1.0
        self.trickled: Counter[TileKey] = Counter()  # bytes of "trickle" tiles sent before the client hung up
        self.port = port
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def template(self) -> str:
        """The XYZ URL template of this server."""
        return self.url + "/{z}/{x}/{y}.png"

    def __enter__(self) -> TileServer:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:  # keep test output clean
                pass

            def _send(self, status: int, body: bytes, ctype: str = "text/plain") -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _stream_zeros(self, declared: int | None) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                if declared is not None:
                    self.send_header("Content-Length", str(declared))
                self.send_header("Connection", "close")
                self.end_headers()
                self.close_connection = True
                chunk = b"\x89PNG\r\n\x1a\n" + bytes(1 << 20)
                with contextlib.suppress(OSError):  # the client hangs up: that is the point
                    for _ in range(1024):
                        self.wfile.write(chunk)

            def do_GET(self) -> None:
                parsed = urlparse(self.path)
                query = parse_qs(parsed.query)
                with server._lock:
                    server.lines.append(self.path)
                if server.token is not None and query.get(server.token_param, [None])[0] != server.token:
                    self._send(401, b"invalid access token")
                    return
                if parsed.path == "/tiles.json":
                    tiles = server.tilejson_tiles or server.template
                    doc = {"tilejson": "2.2.0", "tiles": [tiles], "minzoom": 0, "maxzoom": 22}
                    self._send(200, json.dumps(doc).encode(), "application/json")
                    return
                m = _TILE_RE.match(parsed.path)
                if not m:
                    self._send(404, b"not a tile path")
                    return
                key = (int(m.group(1)), int(m.group(2)), int(m.group(3)))
                with server._lock:
                    server.requests[key] += 1
                    fault = server.faults.get(key)
                    if isinstance(fault, list):  # one per request, the last one staying
                        fault = fault.pop(0) if len(fault) > 1 else fault[0]
                if server.delay:
                    time.sleep(server.delay)
                if isinstance(fault, float):
                    time.sleep(fault)
                elif isinstance(fault, int):
                    self._send(fault, f"status {fault}".encode())
                    return
                elif fault == "corrupt":
                    self._send(200, b"\x89PNG\r\n\x1a\n this is not really a png", "image/png")
                    return
                elif fault in ("endless", "huge"):
                    self._stream_zeros(400_000_000 if fault == "huge" else None)
                    return
                body = server.provider(*key)
                if body is None:
                    self._send(404, b"no such tile")
                    return
                if fault == "trickle":  # the whole length promised, one byte a second: never a read timeout
                    self.send_response(200)
                    self.send_header("Content-Type", "image/png")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.close_connection = True
                    with contextlib.suppress(OSError):  # the client hangs up at its deadline
                        for i in range(len(body)):
                            self.wfile.write(body[i : i + 1])
                            self.wfile.flush()
                            with server._lock:
                                server.trickled[key] += 1
                            time.sleep(server.trickle_seconds)
                    return
                if fault == "short":  # a dropped connection: the full length promised, half sent
                    self.send_response(200)
                    self.send_header("Content-Type", "image/png")
                    self.send_header("Content-Length", str(len(body)))
                    self.send_header("Connection", "close")
                    self.end_headers()
                    self.wfile.write(body[: len(body) // 2])
                    self.close_connection = True
                    return
                self._send(200, body, "image/png")

        self._server = _Server(("127.0.0.1", self.port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.shutdown()
        self._server.server_close()
        self._server = None


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        description="Serve a folder of XYZ tiles on 127.0.0.1 (z/x/y.png or OAM-x-y-z.png files)."
    )
    parser.add_argument("folders", nargs="+", type=Path, help="tile folders")
    parser.add_argument("--port", type=int, default=8765, help="port on 127.0.0.1 (default: %(default)s)")
    args = parser.parse_args(argv)
    for folder in args.folders:
        if not folder.is_dir():
            parser.error(f"not a folder: {folder}")
    oam, plain = oam_provider(*args.folders), folder_provider(*args.folders)
    with TileServer(lambda z, x, y: oam(z, x, y) or plain(z, x, y), port=args.port) as server:
        print(f"serving {', '.join(map(str, args.folders))} at {server.template} (Ctrl-C stops)", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
