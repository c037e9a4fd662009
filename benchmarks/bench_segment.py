"""Segment extent: pipeline throughput against the bare model, area per second, peak memory.

    .venv/bin/python -m benchmarks.bench_segment [--width 0.25] [--tiles 64] [--batch 4]

All figures come from one run on one machine; tiles are real OpenAerialMap
imagery (../shared/data/oam-osm-buildings/area1) served from a loopback tile
server (any tile address maps to one of the real tiles, so extents of any
size can be segmented).

1. Throughput: ``run_segment`` with no overlap (one window per tile) in
   tiles/s, against bare onnxruntime on the same windows and batch size
   (``session.run`` only). The ratio says how much of the time the pipeline
   (fetch, decode, blend, write, count) adds; fetching runs in threads,
   overlapped with inference.
2. Ground area per second at the model's seamless overlap, fp32 and int8.
3. Peak memory (max RSS) of a run over about 500 and about 2,000 tiles, in
   fresh processes, with a 1x1-conv model so that the pipeline, not the
   model, is what is measured: it must stay flat as the extent grows.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mercantile
import numpy as np

from satseg_plugin.inference.model import SegModel
from satseg_plugin.inference.segment import SegmentRequest, run_segment
from scripts.tileserver import TileServer

ROOT = Path(__file__).resolve().parents[1]
OAM = ROOT.parent / "shared" / "data" / "oam-osm-buildings" / "area1"
ZOOM = 19
ORIGIN = mercantile.tile(39.2, -6.0, ZOOM)  # somewhere in Zanzibar; the pixels come from OAM anyway


def real_tile_provider():
    """Every tile address answers with one of the real zoom-19 tiles (chosen by address)."""
    bodies = [p.read_bytes() for p in sorted(OAM.glob(f"OAM-*-{ZOOM}.png"))]
    if not bodies:
        raise SystemExit(f"no zoom-{ZOOM} tiles in {OAM}: is ../shared beside the repository?")

    def provide(z: int, x: int, y: int) -> bytes:
        return bodies[(x * 7 + y * 13) % len(bodies)]

    return provide


def extent(nx: int, ny: int) -> tuple[float, float, float, float]:
    """EPSG:3857 bounds of nx x ny whole tiles from ORIGIN."""
    ul = mercantile.xy_bounds(ORIGIN.x, ORIGIN.y, ZOOM)
    lr = mercantile.xy_bounds(ORIGIN.x + nx - 1, ORIGIN.y + ny - 1, ZOOM)
    return ul.left, lr.bottom, lr.right, ul.top


def make_segnet(folder: Path, width: float, int8: bool) -> tuple[Path, Path | None]:
    """A freshly initialised SegNet exported like ``training.export`` does (speed does not depend on weights)."""
    import torch

    from satseg_plugin.inference.metadata import ModelMetadata, build_metadata
    from training.export import export_onnx, quantize_int8
    from training.model import SegNet

    torch.manual_seed(0)
    net = SegNet(6, width=width).eval()
    names = ["background", "building", "land", "road", "vegetation", "water"]
    props = build_metadata(ModelMetadata(names, ["#000000"] * 6, 256, 25, 30.0, zoom=ZOOM))
    fp32 = folder / "segnet.onnx"
    export_onnx(net, 256, fp32, props)
    if not int8:
        return fp32, None
    from satseg_plugin.inference.imageio import decode_image, to_rgb

    provide = real_tile_provider()
    tiles = np.stack([to_rgb(decode_image(provide(ZOOM, i, i)))[0] for i in range(16)])
    model = SegModel.load(fp32)
    batches = [model.normalize(tiles[i : i + 4]) for i in range(0, 16, 4)]
    q = folder / "segnet-int8.onnx"
    quantize_int8(fp32, q, batches, props)
    return fp32, q


def timed_segment(
    model: Path, url: str, n: int, out: Path, overlap: float | None, batch: int, heatmaps: bool = True
) -> tuple[float, object]:
    req = SegmentRequest(
        model=model, bbox=extent(n, n), bbox_crs="EPSG:3857", tiles_url=url, out_dir=out,
        overlap_percent=overlap, batch_size=batch, write_heatmaps=heatmaps,
    )  # fmt: skip
    start = time.perf_counter()
    result = run_segment(req)
    return time.perf_counter() - start, result


def bare_rate(model_path: Path, windows: int, batch: int) -> float:
    """Windows per second of ``session.run`` alone on real tiles, same batch size."""
    from satseg_plugin.inference.imageio import decode_image, to_rgb

    model = SegModel.load(model_path)
    provide = real_tile_provider()
    tiles = np.stack([to_rgb(decode_image(provide(ZOOM, i, 3 * i)))[0] for i in range(batch)])
    x = model.normalize(tiles)
    model.session.run(None, {model.input_name: x})  # warm-up
    calls = max(1, windows // batch)
    start = time.perf_counter()
    for _ in range(calls):
        model.session.run(None, {model.input_name: x})
    return calls * batch / (time.perf_counter() - start)


def _peak_mb() -> float:
    """Peak resident memory of this process (VmHWM; unlike ru_maxrss it does not carry over an exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def memory_run(n: int, folder: Path) -> None:
    """Child process: segment n x n tiles with a 1x1-conv model, print peak RSS in MB."""
    sys.path.insert(0, str(ROOT / "tests"))
    from inference_helpers import make_rgb_model

    model = make_rgb_model(folder / "rgb.onnx", zoom=ZOOM, overlap=25)
    with TileServer(real_tile_provider()) as server:
        before = _peak_mb()
        elapsed, result = timed_segment(model, server.template, n, folder / f"out{n}", None, 8)
    peak = _peak_mb()
    print(f"{result.tiles_total} {elapsed:.1f} {before:.0f} {peak:.0f}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--width", type=float, default=0.25, help="SegNet width multiplier (the shipped model's: 0.25)"
    )
    parser.add_argument("--tiles", type=int, default=64, help="tiles of the throughput extent (a square)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--memory-tiles", default="484,2025", help="extents (tiles) of the memory runs")
    parser.add_argument("--memory-run", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_run:
        memory_run(args.memory_run, Path(args.folder))
        return
    side = max(1, round(args.tiles**0.5))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        print(f"SegNet width {args.width}, fresh weights, exported to ONNX (fp32 and int8) ...", flush=True)
        fp32, int8 = make_segnet(folder, args.width, int8=True)
        with TileServer(real_tile_provider()) as server:
            timed_segment(fp32, server.template, 2, folder / "warm", 0, args.batch)  # warm-up
            bare = None
            for heatmaps in (False, True):
                seconds, result = timed_segment(
                    fp32, server.template, side, folder / f"t{heatmaps}", 0, args.batch, heatmaps
                )
                pipeline = result.windows / seconds
                if bare is None:
                    bare = bare_rate(fp32, result.windows, args.batch)
                    print(
                        f"\n1. throughput, {result.tiles_total} tiles (no overlap: one window per tile), batch {args.batch}"
                    )
                    print(f"   bare onnxruntime                  {bare:8.2f} tiles/s")
                what = "classes + counts + heatmaps" if heatmaps else "classes + counts"
                print(
                    f"   segment pipeline, {what:<27} {pipeline:8.2f} tiles/s   ratio {pipeline / bare:.3f} (target 0.97)"
                )
            print("\n2. ground area per second at the model's overlap (25 %: seamless)")
            for name, path in (("fp32", fp32), ("int8", int8)):
                seconds, result = timed_segment(
                    path, server.template, side, folder / f"a-{name}", None, args.batch
                )
                km2 = sum(c.area_m2 for c in result.counts) / 1e6
                print(
                    f"   {name}: {km2:.4f} km2 in {seconds:.1f} s = {km2 / seconds:.5f} km2/s ({result.windows} windows)"
                )
    print("\n3. peak memory (max RSS, fresh process, 1x1-conv model, classes + heatmaps + counts written)")
    for n in (round(int(t) ** 0.5) for t in args.memory_tiles.split(",")):
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [sys.executable, "-m", "benchmarks.bench_segment", "--memory-run", str(n), "--folder", tmp]
            out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
            tiles, secs, before, peak = int(out[0]), float(out[1]), float(out[2]), float(out[3])
            print(
                f"   {tiles:5d} tiles: {secs:6.1f} s, RSS {before:.0f} MB before the run, peak {peak:.0f} MB"
            )


if __name__ == "__main__":
    main()
