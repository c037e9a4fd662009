"""The README's main command: segment the shipped Zanzibar sample with the default model in real QGIS.

    make demo                      # or: .venv/bin/python -m scripts.demo [--out out/demo] [--open]

What it does, as a user would in QGIS: serves ``demo/zanzibar`` (real
OpenAerialMap tiles, CC BY 4.0) from a tile server on 127.0.0.1, starts QGIS
(offscreen), registers the plugin's Processing provider and runs
``satseg:segment_extent`` over the sample's extent at zoom 19 with
``models/satseg-buildings.onnx``. The class GeoTIFF, one heatmap per class and
the pixel-count table land in ``out/demo`` (replaced as a whole, never half
written), with ``demo.qgz``: a QGIS project holding the imagery and the styled
results. With ``--open`` (and a display) QGIS opens that project.
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "demo" / "zanzibar"
#: The sample's 14 zoom-19 tiles (x 319293-319299, y 270995-270996), EPSG:4326.
BBOX = (39.2411042, -6.0675002, 39.2459105, -6.0661348)
ZOOM = 19
QGIS_PLUGINS = Path("/usr/share/qgis/python/plugins")  # Debian's home of the Processing plugin


def _start_qgis():
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from qgis.core import QgsApplication

    app = QgsApplication([], False)
    app.initQgis()
    if str(QGIS_PLUGINS) not in sys.path:
        sys.path.append(str(QGIS_PLUGINS))
    from processing.core.Processing import Processing

    Processing.initialize()
    return app


def _print_table(csv_path: str) -> None:
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    width = max(len("class"), *(len(r["class"]) for r in rows))
    print(f"\n{'class':<{width}} {'pixels':>10} {'share':>8} {'area_m2':>10} {'area_ha':>8}")
    for r in rows:
        print(
            f"{r['class']:<{width}} {int(r['pixels']):>10,} {100 * float(r['share']):>7.2f}% "
            f"{float(r['area_m2']):>10,.1f} {float(r['area_ha']):>8.4f}"
        )
    total = sum(float(r["area_m2"]) for r in rows)
    print(
        f"{'total':<{width}} {sum(int(r['pixels']) for r in rows):>10,} {'':>8} {total:>10,.1f} {total / 1e4:>8.4f}"
    )


def _write_project(out: Path, class_names: list[str], class_colors: list[str]) -> Path:
    from qgis.core import QgsCoordinateReferenceSystem, QgsProject, QgsRasterLayer, QgsReferencedRectangle

    from satseg_plugin.inference.outputs import heatmap_name
    from satseg_plugin.ui.layers import add_result_layers

    project = QgsProject.instance()
    project.clear()
    url = (SAMPLE / "{z}" / "{x}" / "{y}.png").as_uri().replace("%7B", "{").replace("%7D", "}")
    imagery = QgsRasterLayer(
        f"type=xyz&url={url}&zmin={ZOOM}&zmax={ZOOM}", "Zanzibar (OpenAerialMap, CC BY 4.0)", "wms"
    )
    project.addMapLayer(imagery)
    heatmaps = {n: str(out / heatmap_name(n)) for n in class_names}
    add_result_layers(
        project, "satseg demo", class_names, class_colors,
        classes_path=str(out / "classes.tif"), heatmap_paths=heatmaps, counts_csv=str(out / "pixel_counts.csv"),
    )  # fmt: skip
    # Open in Web Mercator, the imagery's own grid, on the segmented strip.
    crs = QgsCoordinateReferenceSystem("EPSG:3857")
    project.setCrs(crs)
    extent = QgsRasterLayer(str(out / "classes.tif"), "extent").extent()
    project.viewSettings().setDefaultViewExtent(
        QgsReferencedRectangle(extent.buffered(extent.width() / 20), crs)
    )
    path = out / "demo.qgz"
    project.write(str(path))
    project.clear()
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="ONNX model (default: models/satseg-buildings.onnx)")
    parser.add_argument("--out", default=str(ROOT / "out" / "demo"), help="result folder (replaced)")
    parser.add_argument("--open", action="store_true", help="open the result in QGIS (needs a display)")
    args = parser.parse_args(argv)

    from satseg_plugin.inference.model import SegModel, default_model_path
    from scripts.tileserver import TileServer, folder_provider

    model = Path(args.model) if args.model else default_model_path()
    if model is None or not model.is_file():
        print(
            "error: the default model models/satseg-buildings.onnx is missing (see models/README)",
            file=sys.stderr,
        )
        return 2
    meta = SegModel.load(model).metadata
    out = Path(args.out).resolve()
    staging = out.with_name(f".{out.name}.part")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)

    started = time.perf_counter()
    app = _start_qgis()
    try:
        import processing
        from qgis.core import QgsProcessingFeedback

        from satseg_plugin.ui.processing_provider import register_provider

        register_provider()

        class Feedback(QgsProcessingFeedback):
            def __init__(self) -> None:
                super().__init__()
                self.last = -10.0

            def setProgress(self, progress: float) -> None:  # noqa: N802 - Qt's name
                super().setProgress(progress)
                if progress >= self.last + 10 or progress >= 100 > self.last:
                    self.last = progress
                    print(f"  {progress:5.1f} %", flush=True)

        with TileServer(folder_provider(SAMPLE)) as server:
            print(f"serving {SAMPLE.relative_to(ROOT)} at {server.template}")
            print(f"segmenting the sample (zoom {ZOOM}) with {model.name}: {', '.join(meta.class_names)}")
            extent = f"{BBOX[0]},{BBOX[2]},{BBOX[1]},{BBOX[3]} [EPSG:4326]"
            outputs = processing.run(
                "satseg:segment_extent",
                {
                    "MODEL": str(model),
                    "SOURCE_URL": server.template,
                    "EXTENT": extent,
                    "ZOOM": ZOOM,
                    "OUTPUT_FOLDER": str(staging),
                },
                feedback=Feedback(),
            )
        if int(outputs["TILES_FAILED"]):
            print(f"warning: {int(outputs['TILES_FAILED'])} tiles could not be had", file=sys.stderr)
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)
        project = _write_project(out, list(meta.class_names), list(meta.class_colors))
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        app.exitQgis()
    _print_table(str(out / "pixel_counts.csv"))
    print(
        f"\n{int(outputs['TILES'])} tiles segmented in {time.perf_counter() - started:.1f} s; results in {out}:"
    )
    for p in sorted(out.iterdir()):
        print(f"  {p.name}")
    print(f"open {project} in QGIS to see them over the imagery")
    if args.open:
        if not os.environ.get("DISPLAY"):
            print("no display: not opening QGIS", file=sys.stderr)
        else:
            subprocess.Popen(["qgis", "--nologo", "--noversioncheck", "--project", str(project)])
    return 0


if __name__ == "__main__":
    sys.exit(main())
