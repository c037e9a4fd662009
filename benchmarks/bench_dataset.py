"""Dataset builder speed: label rendering and imagery download, in tiles per second.

    .venv/bin/python -m benchmarks.bench_dataset [--zoom 19] [--size 3000] [--workers 8] [--latency 0.02]

1. Labels: ``python -m training.dataset build`` (labels only) on the real
   ``../shared/data/osm/test.osm.pbf`` (Karhula, 2219 buildings and land use)
   with ``training/classes/mine.json``, a few thousand tiles; then the same
   phases one by one: reading and shaping the OSM features, rasterising the
   tiles, encoding the label PNGs.
2. Imagery: ``build --imagery`` of those tiles from a loopback tile server
   (tests/tileserver.py) that answers every address with one of the real
   OpenAerialMap z19 tiles of ``../shared/data/oam-osm-buildings/area1`` (RGB
   and RGBA PNGs, so both the keep-the-bytes and the re-encode paths run);
   once with an instant server, once with ``--latency`` seconds per request
   (a remote service), and a resumed run where every tile is already there.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from osgeo import gdal

from satseg_plugin.inference.cli import run_cli
from scripts.tileserver import TileServer
from training.dataset.__main__ import main as dataset_main
from training.dataset.classes import load_classes
from training.dataset.osm_source import OsmSource
from training.dataset.render import LabelStore, encode_label_png
from training.dataset.tiles import bbox_tiles, parse_bbox, pixel_size, sample_tiles, tiles_extent

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
PBF = SHARED / "osm" / "test.osm.pbf"
OAM = SHARED / "oam-osm-buildings" / "area1"
MINE = ROOT / "training" / "classes" / "mine.json"
KARHULA = "26.93,60.52,26.97,60.54"


def build(*argv: object) -> float:
    """Run ``python -m training.dataset build ARGV`` in this process; its wall time in seconds."""
    t0 = time.perf_counter()
    rc = run_cli(dataset_main, ["build", *map(str, argv)])
    seconds = time.perf_counter() - t0
    if rc != 0:
        raise SystemExit(f"build {' '.join(map(str, argv))} failed with status {rc}")
    return seconds


def label_phases(zoom: int, size: int) -> tuple[int, float, float, float]:
    """(tiles, read+shape s, rasterise s, encode s) of the label phases, timed one by one."""
    config = load_classes(MINE)
    source = OsmSource(PBF)
    trange = bbox_tiles(parse_bbox(KARHULA), zoom)
    margin = 2 * pixel_size(zoom)
    minx, miny, maxx, maxy = tiles_extent(trange, zoom)
    gdal.PushErrorHandler("CPLQuietErrorHandler")
    try:
        t0 = time.perf_counter()
        store = LabelStore(config, zoom, trange, 256)
        store.add(
            source.features((minx - margin, miny - margin, maxx + margin, maxy + margin)),
            [source.layers_for(r.source_layer) for r in config.rules],
        )
        store.finish()
        tiles = sample_tiles([(x, y, zoom) for x, y in store.labelled_tiles()], size, 0)
        read = time.perf_counter() - t0
    finally:
        gdal.PopErrorHandler()
    t0 = time.perf_counter()
    rendered = [store.render(x, y) for x, y, _ in tiles]
    rasterise = time.perf_counter() - t0
    t0 = time.perf_counter()
    for labels in rendered:
        encode_label_png(labels)
    encode = time.perf_counter() - t0
    return len(tiles), read, rasterise, encode


def real_tile_provider():
    """Every tile address answered with one of the real OAM z19 tiles (chosen by x and y)."""
    tiles = sorted(OAM.glob("OAM-*-19.png"))
    bodies = [p.read_bytes() for p in tiles]
    return lambda z, x, y: bodies[(x * 7 + y) % len(bodies)]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--zoom", type=int, default=19, help="zoom of the tiles (default: %(default)s)")
    parser.add_argument("--size", type=int, default=3000, help="tiles to sample (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=8, help="parallel downloads (default: %(default)s)")
    parser.add_argument(
        "--latency",
        type=float,
        default=0.02,
        help="seconds the server waits per request in the second download run (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        common = ("--zoom", args.zoom, "--size", args.size, "--preview-tiles", 0, "--quiet")
        seconds = build("--bbox", KARHULA, "--classes", MINE, "--osm", PBF, "--out", data, *common)
        n = len((data / "sample.txt").read_text().split())
        print(f"1. labels: {PBF.name}, mine.json, zoom {args.zoom}, {n} tiles sampled")
        print(f"   build (labels only, end to end)  {seconds:6.2f} s  {n / seconds:8.1f} tiles/s")
        tiles, read, rasterise, encode = label_phases(args.zoom, args.size)
        print(f"   read + shape OSM features        {read:6.2f} s")
        print(f"   rasterise {tiles} tiles          {rasterise:6.2f} s  {tiles / rasterise:8.1f} tiles/s")
        print(f"   encode {tiles} label PNGs        {encode:6.2f} s  {tiles / encode:8.1f} tiles/s")

        ids = (data / "sample-filtered.txt").read_text().split()
        print(f"\n2. imagery: {len(ids)} tiles from a loopback server, {args.workers} workers")
        runs = (("instant server", 0.0), (f"{args.latency * 1000:.0f} ms per request", args.latency))
        for name, delay in runs:
            shutil.rmtree(data / "images", ignore_errors=True)
            with TileServer(real_tile_provider(), delay=delay) as server:
                seconds = build(
                    "--out", data, "--imagery", server.template, "--workers", args.workers, "--quiet"
                )
            got = len(list((data / "images").glob("*.png")))
            print(f"   {name:<24} {seconds:6.2f} s  {got / seconds:8.1f} tiles/s  ({got} stored)")
        with TileServer(real_tile_provider()) as server:
            seconds = build("--out", data, "--imagery", server.template, "--quiet")
            asked = sum(server.requests.values())
        print(
            f"   resumed, all on disk     {seconds:6.2f} s  {len(ids) / seconds:8.1f} tiles/s  ({asked} requests)"
        )


if __name__ == "__main__":
    main()
