"""WMS and WMTS layers as imagery: a real WMS on 127.0.0.1 read through GDAL's WMS driver.

The WMS draws stripes from the map coordinates (tests/wmsserver.py), so what each
output pixel should be is known without the server.
"""

from __future__ import annotations

import subprocess
import sys
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT
from inference_helpers import expected_probabilities, make_rgb_model
from osgeo import gdal
from qgis.core import QgsRasterLayer
from test_ui_segment_task import show_on_canvas
from ui_helpers import wait_for_task
from wmsserver import WmsServer, stripes, wmts_capabilities

from satseg_plugin.ui.segment_dialog import SegmentChoices
from satseg_plugin.ui.segment_flow import SegmentController
from satseg_plugin.ui.sources import gdal_name_of_wms, is_supported_layer, source_of_layer

#: About 150 x 100 m in Zanzibar (EPSG:3857).
BBOX = (4368200.0, -676800.0, 4368350.0, -676700.0)


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # No zoom: a raster source at the model's 50 cm.
    return make_rgb_model(tmp_path_factory.mktemp("m") / "rgb.onnx", zoom=None, resolution_cm=50)


def wms_uri(url: str, extra: str = "") -> str:
    return f"crs=EPSG:3857&format=image/png&layers=stripes&styles=&url={url}{extra}"


def check(path: str | Path) -> float:
    """Share of the class raster's pixels that agree with the stripes under their centres."""
    ds = gdal.Open(str(path))
    classes, gt = ds.GetRasterBand(1).ReadAsArray(), ds.GetGeoTransform()
    ds = None
    h, w = classes.shape
    x, y = np.meshgrid(gt[0] + (np.arange(w) + 0.5) * gt[1], gt[3] + (np.arange(h) + 0.5) * gt[5])
    want = expected_probabilities(stripes(x, y)).argmax(axis=0)
    assert gt[1] == pytest.approx(0.5) and len(np.unique(want)) >= 3
    return float((classes == want).mean())


def test_gdal_names_of_wms_and_wmts_layers(qgis_app) -> None:
    name = gdal_name_of_wms(wms_uri("http://127.0.0.1:1/wms?key=s3cret"))
    assert name.startswith("WMS:http://127.0.0.1:1/wms?key=s3cret&SERVICE=WMS&VERSION=1.1.1&REQUEST=GetMap")
    assert "LAYERS=stripes" in name and "SRS=EPSG:3857" in name and "BBOX=-20037508.3" in name
    wmts = gdal_name_of_wms(
        "contextualWMSLegend=0&crs=EPSG:3857&dpiMode=7&format=image/jpeg&layers=ortho&styles=default"
        "&tileMatrixSet=GoogleMapsCompatible&url=https://example.org/wmts/1.0.0/WMTSCapabilities.xml"
    )
    assert wmts == (
        "WMTS:https://example.org/wmts/1.0.0/WMTSCapabilities.xml,layer=ortho,"
        "tilematrixset=GoogleMapsCompatible,style=default"
    )
    assert gdal_name_of_wms("type=xyz&url=https://a/%7Bz%7D/%7Bx%7D/%7By%7D.png") is None


def test_cli_segments_a_wms(model: Path, tmp_path: Path) -> None:
    with WmsServer() as server:
        name = (
            f"WMS:{server.url}?SERVICE=WMS&VERSION=1.1.1&REQUEST=GetMap&LAYERS=stripes&SRS=EPSG:3857"
            "&BBOX=-20037508.34,-20037508.34,20037508.34,20037508.34&FORMAT=image/png"
        )
        done = subprocess.run(
            [sys.executable, "-m", "satseg_plugin.inference", "segment", "--model", str(model), "--raster", name,
             "--bbox", ",".join(map(str, BBOX)), "--bbox-crs", "EPSG:3857", "--out", str(tmp_path / "o"),
             "--quiet", "--no-heatmaps"],
            cwd=ROOT, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert any(q.get("REQUEST") == "GetMap" for q in server.requests)
    agree = check(tmp_path / "o" / "classes.tif")
    print(f"WMS via the CLI: {100 * agree:.2f} % of the pixels as the stripes say")
    assert agree > 0.97  # the rest: stripe edges, where the warp's bilinear resampling blends


def test_a_wms_layer_runs_from_qgis(qgis_iface, qgis_new_project, model: Path, tmp_path: Path) -> None:
    with WmsServer() as server:
        layer = QgsRasterLayer(wms_uri(server.url, "?map=stripes&token=abc123"), "stripes", "wms")
        assert is_supported_layer(layer)  # no longer refused
        source = source_of_layer(layer)
        assert source.raster_path.startswith("WMS:") and "abc123" not in source.label
        show_on_canvas(qgis_iface, BBOX)
        chosen = SegmentChoices(str(model), source, None, str(tmp_path / "runs"), True, False, True)
        task = SegmentController(qgis_iface).start(chosen, when=datetime(2026, 1, 2, 3, 4, 5))
        assert task is not None
        wait_for_task(task)
        assert (task.outcome, task.error, task.bug) == ("done", None, None)
    assert check(task.result.classes_path) > 0.97


def test_a_wmts_layer_gives_the_pixels_of_its_tiles(tmp_path: Path) -> None:
    """WMTS over the pattern tiles: the same classes as reading those tiles as XYZ."""
    from inference_helpers import pattern_provider
    from test_inference_segment import T0, Z, tile_rect
    from tileserver import TileServer

    from satseg_plugin.inference.segment import SegmentRequest, run_segment

    xyz_model = make_rgb_model(tmp_path / "z.onnx", zoom=Z)  # no resolution: the raster's own pixels
    with TileServer(pattern_provider) as tiles:
        caps = tmp_path / "WMTSCapabilities.xml"
        template = (
            tiles.template.replace("{z}", "{TileMatrix}")
            .replace("{x}", "{TileCol}")
            .replace("{y}", "{TileRow}")
        )
        caps.write_text(wmts_capabilities(template, Z))
        bbox = tile_rect(T0.x + 0.25, T0.y + 0.25, T0.x + 1.75, T0.y + 1.5)
        name = f"WMTS:{caps},layer=tiles,tilematrixset=GoogleMapsCompatible"
        wmts = run_segment(SegmentRequest(model=xyz_model, bbox=bbox, bbox_crs="EPSG:3857", raster_path=name,
                                          out_dir=tmp_path / "wmts", write_heatmaps=False))  # fmt: skip
        xyz = run_segment(SegmentRequest(model=xyz_model, bbox=bbox, bbox_crs="EPSG:3857",
                                         tiles_url=tiles.template, out_dir=tmp_path / "xyz", write_heatmaps=False))  # fmt: skip
    a = gdal.Open(wmts.classes_path)
    b = gdal.Open(xyz.classes_path)
    assert a.GetGeoTransform() == pytest.approx(b.GetGeoTransform())
    np.testing.assert_array_equal(a.ReadAsArray(), b.ReadAsArray())
