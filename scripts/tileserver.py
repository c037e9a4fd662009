"""A real HTTP XYZ tile server on 127.0.0.1 for the demo, tests and benchmarks.

``python -m scripts.tileserver FOLDER`` serves a folder of tiles (``z/x/y.png``
or OpenAerialMap's ``OAM-<x>-<y>-<z>.png``) until Ctrl-C; the URL template to
paste into QGIS (XYZ Tiles > New Connection) or into the satseg tools is
printed at start.

Serves ``/{z}/{x}/{y}.png`` (and ``/tiles.json``, a TileJSON document) from a
``provider(z, x, y) -> bytes | None`` function, with faults that can be set
per tile: an HTTP status, a corrupt body, a delay. It can require an access
token (``?access_token=``), and it counts every request so tests can check
that a resumed download fetches only what is missing.
"""

from __future__ import annotations

import contextlib
import json
import re
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


class TileServer:
    """Context manager running a threaded tile server on a free loopback port.

    ``faults[(z, x, y)]`` may be an int (HTTP status), ``"corrupt"`` (a body that
    is not an image) or a float (seconds to wait before answering).
    ``token``, when set, must be given as ``?access_token=``; otherwise 401.
    """

    def __init__(
        self, provider: Provider, token: str | None = None, delay: float = 0.0, port: int = 0
    ) -> None:
        self.provider = provider
        self.token = token
        self.delay = delay
        self.faults: dict[TileKey, int | str | float] = {}
        self.requests: Counter[TileKey] = Counter()
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

            def do_GET(self) -> None:
                parsed = urlparse(self.path)
                query = parse_qs(parsed.query)
                if server.token is not None and query.get("access_token", [None])[0] != server.token:
                    self._send(401, b"invalid access token")
                    return
                if parsed.path == "/tiles.json":
                    doc = {"tilejson": "2.2.0", "tiles": [server.template], "minzoom": 0, "maxzoom": 22}
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
                body = server.provider(*key)
                if body is None:
                    self._send(404, b"no such tile")
                    return
                self._send(200, body, "image/png")

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
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
