"""A WMS on 127.0.0.1 that draws every GetMap from the map coordinates alone (for the WMS tests).

The picture is stripes in EPSG:3857 metres: red where ``x // 7`` is a multiple
of 3, green where ``y // 5 % 3 == 1``, so what any pixel should show is known
from its position, whatever bounding box and size a client asks for.
"""

from __future__ import annotations

import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np

from satseg_plugin.inference.imageio import encode_png


def stripes(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``(..., 3)`` uint8 RGB of the map at EPSG:3857 coordinates ``x``, ``y``."""
    rgb = np.zeros((*x.shape, 3), np.uint8)
    rgb[..., 0] = ((x // 7) % 3 == 0) * 230
    rgb[..., 1] = ((y // 5) % 3 == 1) * 220
    return rgb


class WmsServer:
    """``with WmsServer() as s:`` serves GetMap at ``s.url``; ``s.requests`` keeps each query."""

    def __init__(self) -> None:
        self.requests: list[dict[str, str]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                query = urllib.parse.urlsplit(self.path).query
                q = {k.upper(): v for k, v in urllib.parse.parse_qsl(query)}
                server.requests.append(q)
                if q.get("REQUEST", "").lower() != "getmap":
                    self.send_response(400)
                    self.end_headers()
                    return
                w, h = int(q["WIDTH"]), int(q["HEIGHT"])
                x0, y0, x1, y1 = map(float, q["BBOX"].split(","))
                xs = x0 + (np.arange(w) + 0.5) * (x1 - x0) / w
                ys = y1 - (np.arange(h) + 0.5) * (y1 - y0) / h
                body = encode_png(stripes(*np.meshgrid(xs, ys)))
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}/wms"

    def __enter__(self) -> WmsServer:
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


def wmts_capabilities(tiles_template: str, max_zoom: int) -> str:
    """A WMTS GetCapabilities document of one layer, ``tiles``, on Google Maps' tile grid.

    ``tiles_template`` is the REST template of the tiles (``{TileMatrix}``,
    ``{TileCol}``, ``{TileRow}``): the XYZ tiles of a tile server, as WMTS sees them.
    """
    matrices = "".join(
        f"""<TileMatrix><ows:Identifier>{z}</ows:Identifier>
        <ScaleDenominator>{559082264.0287178 / 2**z!r}</ScaleDenominator>
        <TopLeftCorner>-20037508.342789244 20037508.342789244</TopLeftCorner>
        <TileWidth>256</TileWidth><TileHeight>256</TileHeight>
        <MatrixWidth>{2**z}</MatrixWidth><MatrixHeight>{2**z}</MatrixHeight></TileMatrix>"""
        for z in range(max_zoom + 1)
    )
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<Capabilities xmlns="http://www.opengis.net/wmts/1.0" xmlns:ows="http://www.opengis.net/ows/1.1"
    version="1.0.0">
  <Contents>
    <Layer>
      <ows:Identifier>tiles</ows:Identifier>
      <Style isDefault="true"><ows:Identifier>default</ows:Identifier></Style>
      <Format>image/png</Format>
      <TileMatrixSetLink><TileMatrixSet>GoogleMapsCompatible</TileMatrixSet></TileMatrixSetLink>
      <ResourceURL format="image/png" resourceType="tile" template="{tiles_template}"/>
    </Layer>
    <TileMatrixSet>
      <ows:Identifier>GoogleMapsCompatible</ows:Identifier>
      <ows:SupportedCRS>urn:ogc:def:crs:EPSG::3857</ows:SupportedCRS>
      {matrices}
    </TileMatrixSet>
  </Contents>
</Capabilities>"""
