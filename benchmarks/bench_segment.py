"""Segment extent: the pipeline against bare onnxruntime, ground area per second, seams, peak memory.

    .venv/bin/python -m benchmarks.bench_segment [--quick] [--tiles 64] [--rounds 3]
        [--memory-tiles 100,1000,4000] [--model models/satseg-buildings.onnx]

All figures come from one run on one machine, with the shipped model (and
its int8 copy) on real OpenAerialMap imagery (``../shared/data/oam-osm-buildings/area1``):

1. Throughput, in interleaved rounds (every configuration once per round,
   the order reversed every other round; medians over rounds, and each
   ratio taken within its round): bare ``session.run`` on the same real
   windows and batch size, against ``run_segment`` over a square of tiles
   from a loopback tile server (a separate process; every tile address
   answers with one of the real zoom-19 tiles) and over a real GeoTIFF made
   of the same tiles, with and without heatmaps, at overlap 0 and at the
   model's seam-free overlap, fp32 and int8, on the model's own windows
   (its ``tile_size``: 512 px for the shipped models). Mpx/s counts the
   pixels of model windows run (bare onnxruntime on windows of that size
   made of the same real tiles); km²/s is ground area (the pixel-count
   table's). "area vs bare" is the ground rate against bare onnxruntime's at
   overlap 0 (windows side by side, no pixel run twice).
2. Seams against overlap: the model over a real contiguous block of tiles at
   several overlaps: the share of pixels whose class equals the 50 % run's,
   and how much the probability and the class change across the windows'
   edges compared with everywhere else (1.00: no seam).
3. Peak memory (VmHWM of a fresh process) of runs over about 100, 1,000
   (and, on request, 4,000) tiles, square and wide, with a 1x1-conv model so
   that the pipeline, not the model, is what is measured.

``--quick`` (a few minutes on 2 busy cores): 16 tiles, 3 rounds, memory at 100
and 400 tiles. The machine's load average is printed before and after: with
other work running, compare the ratios, not the absolute rates.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import mercantile
import numpy as np

from satseg_plugin.inference.model import SegModel
from satseg_plugin.inference.params import batch_for
from satseg_plugin.inference.segment import SegmentRequest, SegmentResult, run_segment
from scripts.tileserver import TileServer

ROOT = Path(__file__).resolve().parents[1]
OAM = ROOT.parent / "shared" / "data" / "oam-osm-buildings" / "area1"
ZOOM = 19
ORIGIN = mercantile.tile(39.2, -6.0, ZOOM)  # somewhere in Zanzibar; the pixels come from OAM anyway
#: A contiguous 8 x 4 block of real zoom-19 tiles in area1: the seams are measured on its inner 6 x 2.
BLOCK_X, BLOCK_Y = 319292, 270960
SEAM_OVERLAPS = (0.0, 3.125, 6.25, 12.5, 25.0, 50.0)


def real_tile_provider():
    """Every tile address answers with one of the real zoom-19 tiles (chosen by address)."""
    bodies = [p.read_bytes() for p in sorted(OAM.glob(f"OAM-*-{ZOOM}.png"))]
    if not bodies:
        raise SystemExit(f"no zoom-{ZOOM} tiles in {OAM}: is ../shared beside the repository?")

    def provide(z: int, x: int, y: int) -> bytes:
        return bodies[(x * 7 + y * 13) % len(bodies)]

    return provide


def extent(nx: int, ny: int, x: int | None = None, y: int | None = None) -> tuple[float, float, float, float]:
    """EPSG:3857 bounds of nx x ny whole zoom-19 tiles from tile (x, y) (default: ORIGIN)."""
    x = ORIGIN.x if x is None else x
    y = ORIGIN.y if y is None else y
    ul = mercantile.xy_bounds(x, y, ZOOM)
    lr = mercantile.xy_bounds(x + nx - 1, y + ny - 1, ZOOM)
    return ul.left, lr.bottom, lr.right, ul.top


class ServerProcess:
    """The loopback tile server in a process of its own, so its threads share no GIL with the run."""

    def __init__(self, mode: str = "real") -> None:
        cmd = [sys.executable, "-m", "benchmarks.bench_segment", "--serve", mode]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        self.template = self.proc.stdout.readline().strip()

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()  # the child serves until its stdin closes
        self.proc.wait(timeout=30)


def serve(mode: str) -> None:
    """Child process: serve the real tiles (``real``: any address; ``oam``: area1 as it is) until stdin ends."""
    from scripts.tileserver import oam_provider

    provider = real_tile_provider() if mode == "real" else oam_provider(OAM)
    with TileServer(provider) as server:
        print(server.template, flush=True)
        sys.stdin.read()


def write_real_geotiff(path: Path, nx: int, ny: int, margin: int = 1) -> Path:
    """A tiled DEFLATE GeoTIFF (EPSG:3857, the zoom-19 pixel grid) of the tiles ``real_tile_provider``
    serves for the ``nx`` x ``ny`` square from ORIGIN, with ``margin`` tiles of context around it."""
    from osgeo import gdal, osr

    from satseg_plugin.inference.imageio import decode_image, to_rgb

    provide = real_tile_provider()
    decoded: dict[int, np.ndarray] = {}
    x0, y0 = ORIGIN.x - margin, ORIGIN.y - margin
    w, h = nx + 2 * margin, ny + 2 * margin
    left, _, _, top = extent(1, 1, x0, y0)
    res = (extent(1, 1, x0, y0)[2] - left) / 256
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(3857)
    options = ["TILED=YES", "COMPRESS=DEFLATE", "PHOTOMETRIC=RGB"]
    ds = gdal.GetDriverByName("GTiff").Create(str(path), w * 256, h * 256, 3, gdal.GDT_Byte, options)
    ds.SetGeoTransform((left, res, 0.0, top, 0.0, -res))
    ds.SetProjection(srs.ExportToWkt())
    for j in range(h):
        row = []
        for i in range(w):
            body = provide(ZOOM, x0 + i, y0 + j)
            if id(body) not in decoded:
                decoded[id(body)] = to_rgb(decode_image(body))[0]
            row.append(decoded[id(body)])
        strip = np.concatenate(row, axis=1)
        for b in range(3):
            ds.GetRasterBand(b + 1).WriteArray(strip[..., b], 0, j * 256)
    ds = None
    return path


def load_average() -> str:
    return " ".join(f"{v:.1f}" for v in os.getloadavg())


# --- 1. throughput ---------------------------------------------------------------------------
def real_windows(count: int, size: int = 256) -> np.ndarray:
    """``count`` real ``size``-px windows as ``(N, size, size, 3)`` uint8, the same ones every time.

    A window larger than a tile is real tiles side by side (``training.export.mosaic``; each
    window starts at the next tile).
    """
    from satseg_plugin.inference.imageio import decode_image, to_rgb
    from training.export import mosaic

    provide = real_tile_provider()
    k = -(-size // 256)
    tiles = np.stack([to_rgb(decode_image(provide(ZOOM, i, 3 * i)))[0] for i in range(count + k * k)])
    return np.concatenate([mosaic(tiles[w : w + k * k], size) for w in range(count)])


def bare_seconds(model: SegModel, batches: list[np.ndarray]) -> float:
    """Seconds of ``session.run`` alone over normalised ``batches`` (the session the pipeline uses)."""
    start = time.perf_counter()
    for x in batches:
        model.session.run(None, {model.input_name: x})
    return time.perf_counter() - start


def timed_segment(
    model: Path,
    url: str | None,
    n: int,
    out: Path,
    overlap: float | None,
    batch: int | None,
    heatmaps: bool = True,
    raster: Path | None = None,
    window: int | None = None,
) -> tuple[float, SegmentResult]:
    req = SegmentRequest(
        model=model, bbox=extent(n, n), bbox_crs="EPSG:3857", tiles_url=url,
        raster_path=str(raster) if raster else None, out_dir=out, overlap_percent=overlap,
        batch_size=batch, write_heatmaps=heatmaps, window=window,
    )  # fmt: skip
    start = time.perf_counter()
    result = run_segment(req)
    return time.perf_counter() - start, result


def km2(result: SegmentResult) -> float:
    return sum(c.area_m2 for c in result.counts) / 1e6


def throughput(args: argparse.Namespace, folder: Path) -> None:
    side = max(1, round(args.tiles**0.5))
    tiles = side * side
    models = {"fp32": Path(args.model), "int8": Path(args.int8)} if args.int8 else {"fp32": Path(args.model)}
    seam_free = SegModel.load(args.model).metadata.tiles_overlap
    overlaps = sorted({0.0, float(seam_free)})
    raster = write_real_geotiff(folder / "real.tif", side, side)
    loaded = {name: SegModel.load(path) for name, path in models.items()}
    size = loaded["fp32"].window_size
    px = size * size  # pixels per model window
    count = max(1, tiles * 256 * 256 // px)  # the windows bare onnxruntime runs: the tiles' pixels
    images = real_windows(min(count, 32), size)
    batch = batch_for(size, args.batch)  # the pipeline's batch of these windows
    batches = {}
    for name, m in loaded.items():
        x = m.normalize(images)
        per = [x[i % len(x) : i % len(x) + batch] for i in range(0, count, batch)]
        batches[name] = [b if len(b) == batch else x[:batch] for b in per]
        bare_seconds(m, batches[name][:1])  # warm-up
    configs: list[tuple[str, Callable[[], tuple[float, int, float]]]] = []
    for name, m in loaded.items():

        def bare(m: SegModel = m, name: str = name) -> tuple[float, int, float]:
            return bare_seconds(m, batches[name]), len(batches[name]) * batch * px, 0.0

        configs.append((f"bare onnxruntime, {name}", bare))
    with ServerProcess() as server:
        sources = [("xyz", server.template, None), ("geotiff", None, raster)]
        for src, url, path in sources:
            for name, model in models.items():
                if src == "geotiff" and name != "fp32":
                    continue
                for overlap in overlaps:
                    for heat in (False, True):
                        label = (
                            f"{src}, {name}, overlap {overlap:g} %, "
                            f"{'heatmaps + classes + counts' if heat else 'classes + counts'}"
                        )

                        def pipeline(
                            model: Path = model, url: str | None = url, path: Path | None = path,
                            overlap: float = overlap, heat: bool = heat, label: str = label,
                        ) -> tuple[float, int, float]:  # fmt: skip
                            out = folder / f"run-{abs(hash(label))}"
                            seconds, result = timed_segment(
                                model, url, side, out, overlap, args.batch, heat, raster=path
                            )
                            return seconds, result.windows * result.window_size**2, km2(result)

                        configs.append((label, pipeline))
        if size != 256:  # the windows of the training tiles, at their seam-free 32 px (13 %)
            for heat in (False, True):
                label = f"xyz, fp32, 256-px windows, overlap 13 %, {'heatmaps + ' if heat else ''}classes + counts"

                def small(heat: bool = heat, label: str = label) -> tuple[float, int, float]:
                    out = folder / f"run-{abs(hash(label))}"
                    seconds, result = timed_segment(
                        models["fp32"], server.template, side, out, 13, args.batch, heat, window=256
                    )
                    return seconds, result.windows * result.window_size**2, km2(result)

                configs.append((label, small))
        timed_segment(models["fp32"], server.template, 2, folder / "warm", 0, args.batch)  # warm-up
        print(f"   load average before: {load_average()}", flush=True)
        rounds: list[dict[str, tuple[float, int, float]]] = []
        for r in range(args.rounds):
            order = configs if r % 2 == 0 else configs[::-1]
            rounds.append({label: fn() for label, fn in order})
            print(f"   round {r + 1}/{args.rounds} done (load average {load_average()})", flush=True)
    km2_per_px = statistics.median(
        runs[label][2] / runs[label][1]
        for runs in rounds
        for label, _ in configs
        if label.startswith("xyz") and " 0 %" in label
    )
    print(
        f"\n1. throughput: {tiles} tiles ({side} x {side}), windows up to {size} px, batch {batch} (of {size} px), median of "
        f"{args.rounds} interleaved rounds; seam-free overlap = the model's {seam_free:g} %"
    )
    print(f"   {'':58} {'Mpx/s':>8} {'vs bare':>8} {'km2/s':>8} {'area vs bare':>12}")
    for label, _ in configs:
        name = "int8" if "int8" in label else "fp32"
        bare_label = f"bare onnxruntime, {name}"
        rate = statistics.median(runs[label][1] / runs[label][0] for runs in rounds) / 1e6
        ratio = statistics.median(
            (runs[label][1] / runs[label][0]) / (runs[bare_label][1] / runs[bare_label][0]) for runs in rounds
        )
        if label.startswith("bare"):
            area = rate * 1e6 * km2_per_px
            print(f"   {label:58} {rate:8.2f} {1.0:8.3f} {area:8.4f} {1.0:12.3f}")
            continue
        area = statistics.median(runs[label][2] / runs[label][0] for runs in rounds)
        fp32_bare = "bare onnxruntime, fp32"
        area_ratio = statistics.median(
            (runs[label][2] / runs[label][0]) / (runs[fp32_bare][1] / runs[fp32_bare][0] * km2_per_px)
            for runs in rounds
        )
        print(f"   {label:58} {rate:8.2f} {ratio:8.3f} {area:8.4f} {area_ratio:12.3f}")
    if "int8" in models:
        speed = statistics.median(
            (runs["bare onnxruntime, int8"][1] / runs["bare onnxruntime, int8"][0])
            / (runs["bare onnxruntime, fp32"][1] / runs["bare onnxruntime, fp32"][0])
            for runs in rounds
        )
        print(f"   int8 against fp32, bare onnxruntime: x{speed:.2f}")
    print(
        "   targets (issue 11): >= 0.97 of bare without heatmaps, >= 0.90 with; at the defaults "
        "(seam-free, heatmaps) area vs bare >= 0.94 (fp32 rows)"
    )


def batch_sizes(args: argparse.Namespace) -> None:
    """Bare onnxruntime Mpx/s at several batch sizes of the model's windows, interleaved rounds."""
    model = SegModel.load(args.model)
    size = model.window_size
    x = model.normalize(real_windows(8, size))
    sizes = (1, 2, 4, 8)
    times: dict[int, list[float]] = {b: [] for b in sizes}
    for b in sizes:
        bare_seconds(model, [x[:b]])
    for _ in range(args.rounds):
        for b in sizes:
            seconds = bare_seconds(model, [x[i : i + b] for i in range(0, len(x), b)])
            times[b].append(len(x) * size * size / seconds / 1e6)
    ref_batch = batch_for(size, args.batch)
    ref = statistics.median(times[ref_batch]) if ref_batch in times else 1.0
    print(
        f"\n   bare onnxruntime fp32 by batch size ({len(x)} {size}-px windows, median of {args.rounds} rounds):"
    )
    for b in sizes:
        print(
            f"   batch {b}: {statistics.median(times[b]):6.3f} Mpx/s ({statistics.median(times[b]) / ref:.2f})"
        )


# --- 2. seams ----------------------------------------------------------------------------------
def edge_profile(values: np.ndarray, edges: list[int], axis: int) -> float:
    """Mean absolute change between neighbouring pixels across ``edges`` (positions along ``axis``)
    divided by the mean change everywhere along that axis: 1.0 when edges are like anywhere else."""
    diff = np.abs(np.diff(values.astype(np.float64), axis=axis))
    if axis == 0:
        diff = diff.T  # diff[i] is between i and i + 1
    per_line = diff.mean(axis=0)
    at = [e - 1 for e in edges if 1 <= e < values.shape[axis]]
    overall = per_line.mean()
    return float(per_line[at].mean() / overall) if at and overall > 0 else float("nan")


#: A Dubai image (satellite, about 1 m/px) for models without an XYZ zoom of 19: tile7, held out from the
#: land-cover weights until 2026-12-07 and one of their training scenes since.
DUBAI = ROOT.parent / "shared" / "data" / "dubai-aerial" / "tile7" / "images" / "image_part_004.jpg"


def dubai_labels(names: list[str]) -> np.ndarray:
    """The Dubai image's mask as class indices of ``names`` (-1: unlabelled), by training/classes/dubai.json."""
    import json

    from satseg_plugin.inference.imageio import read_image

    config = json.loads((ROOT / "training" / "classes" / "dubai.json").read_text())
    mask = read_image(DUBAI.parent.parent / "masks" / DUBAI.with_suffix(".png").name)[..., :3].astype(
        np.int32
    )
    code = (mask[..., 0] << 16) | (mask[..., 1] << 8) | mask[..., 2]
    labels = np.full(code.shape, -1, np.int16)
    for c in config["classes"]:
        if c["mask_color"] and c["name"] in names:
            labels[code == int(c["mask_color"][1:], 16)] = names.index(c["name"])
    return labels


def osm_building_labels(classes_path: str) -> np.ndarray:
    """area1's OpenStreetMap building outlines burnt on a class raster's grid: 1 building, 0 not."""
    from osgeo import gdal

    ref = gdal.Open(classes_path)
    mem = gdal.GetDriverByName("MEM").Create("", ref.RasterXSize, ref.RasterYSize, 1, gdal.GDT_Byte)
    mem.SetGeoTransform(ref.GetGeoTransform())
    mem.SetProjection(ref.GetProjection())
    gdal.Rasterize(mem, str(OAM / "labels.geojson"), burnValues=[1])
    return mem.ReadAsArray().astype(np.int16)


def seams(args: argparse.Namespace, folder: Path) -> None:
    from osgeo import gdal

    from satseg_plugin.inference.tileplan import plan_windows

    meta = SegModel.load(args.model).metadata
    if meta.zoom == ZOOM:
        nx, ny = 6, 2
        where = f"a real block of {nx} x {ny} zoom-19 tiles (area1, real context tiles around it)"
        base = {"bbox": extent(nx, ny, BLOCK_X + 1, BLOCK_Y + 1), "bbox_crs": "EPSG:3857"}
    else:  # the Dubai image as a GeoTIFF at the model's resolution (UTM 40N, made up but metric)
        res = (meta.resolution_cm or 100) / 100
        raster = folder / "dubai.tif"
        src = gdal.Open(str(DUBAI))
        w, h = src.RasterXSize * res, src.RasterYSize * res
        gdal.Translate(
            str(raster), src, outputSRS="EPSG:32640", outputBounds=(300000, 2780000 + h, 300000 + w, 2780000)
        )
        src = None
        where = f"the Dubai image {DUBAI.parent.parent.name}/{DUBAI.name} as a GeoTIFF"
        base = {
            "bbox": (300000, 2780000, 300000 + w, 2780000 + h),
            "bbox_crs": "EPSG:32640",
            "raster_path": str(raster),
        }
    runs = {}
    with ServerProcess("oam") as server:
        for overlap in SEAM_OVERLAPS:
            req = SegmentRequest(
                model=args.model, out_dir=folder / f"seam{overlap:g}", overlap_percent=overlap,
                batch_size=args.batch, tiles_url=None if "raster_path" in base else server.template,
                window=meta.tile_size, **base,
            )  # fmt: skip  # the model's own windows, whose edges are known below
            result = run_segment(req)
            classes = gdal.Open(result.classes_path).ReadAsArray()
            heats = [
                gdal.Open(p).ReadAsArray().astype(np.float64) / 254 for p in result.heatmap_paths.values()
            ]
            runs[overlap] = (classes, heats, result.windows)
            if overlap == 0:
                if "raster_path" in base:
                    labels, what = dubai_labels(result.class_names), "the image's own mask"
                else:
                    labels = osm_building_labels(result.classes_path)
                    what = "area1's OpenStreetMap building outlines"
                labels = labels if labels.shape == classes.shape else None
    ref, ref25 = runs[SEAM_OVERLAPS[-1]][0], runs[25.0][0]
    print(f"\n2. seams against overlap: {args.model.name} over {where}; accuracy against {what}")
    print(
        f"   {'overlap':>8} {'windows':>8} {'as at 25 %':>11} {'as at 50 %':>11} {'accuracy':>9} "
        f"{'p change at edges':>18} {'class change':>13}"
    )
    for overlap, (classes, heats, windows) in runs.items():
        w = plan_windows(classes.shape[1], classes.shape[0], meta.tile_size, overlap)
        xs = sorted({w.x0 + i * w.stride + k for i in range(w.nx) for k in (0, w.size)})
        ys = sorted({w.y0 + j * w.stride + k for j in range(w.ny) for k in (0, w.size)})
        p = statistics.mean((edge_profile(h, xs, 1) + edge_profile(h, ys, 0)) / 2 for h in heats)
        cls = (edge_profile(classes, xs, 1) + edge_profile(classes, ys, 0)) / 2
        same, same25 = float((classes == ref).mean()), float((classes == ref25).mean())
        known = labels >= 0 if labels is not None else None
        accuracy = float((classes[known] == labels[known]).mean()) if known is not None else float("nan")
        print(
            f"   {overlap:7g}% {windows:8d} {same25:11.2%} {same:11.2%} {accuracy:9.2%} {p:18.2f} {cls:13.2f}"
        )
    print(
        "   (change at edges: the mean change between neighbouring pixels across the windows' edges over the "
        "mean change anywhere, probabilities averaged over the classes; 1.00: no seam)"
    )


# --- 3. memory ---------------------------------------------------------------------------------
def _peak_mb() -> float:
    """Peak resident memory of this process (VmHWM; unlike ru_maxrss it does not carry over an exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def memory_run(
    nx: int, ny: int, folder: Path, url: str, model: Path | None, stripe: int | None, window: int | None
) -> None:
    """Child process: segment nx x ny tiles with ``model`` (None: a 1x1-conv model), print tiles,
    windows (planned over the stripes), windows the model ran, seconds, RSS before, peak and the
    window side."""
    if model is None:
        sys.path.insert(0, str(ROOT / "tests"))
        from inference_helpers import make_rgb_model

        from satseg_plugin.inference.metadata import DEFAULT_OVERLAP_PERCENT

        model = make_rgb_model(folder / "rgb.onnx", zoom=ZOOM, overlap=DEFAULT_OVERLAP_PERCENT)
    before = _peak_mb()
    req = SegmentRequest(
        model=model, bbox=extent(nx, ny), bbox_crs="EPSG:3857", tiles_url=url, out_dir=folder / "out",
        window=window, **({"stripe_width": stripe} if stripe else {}),
    )  # fmt: skip
    start = time.perf_counter()
    result = run_segment(req)
    print(
        f"{result.tiles_total} {result.windows} {result.windows_run} {time.perf_counter() - start:.1f} "
        f"{before:.0f} {_peak_mb():.0f} {result.window_size}"
    )


def shapes(tiles: int) -> list[tuple[str, int, int]]:
    side = max(1, round(tiles**0.5))
    wide_rows = max(1, round((tiles / 16) ** 0.5))  # 16 times as wide as high
    return [("square", side, side), ("wide", max(1, round(tiles / wide_rows)), wide_rows)]


def memory(args: argparse.Namespace) -> None:
    shipped = args.memory_model == "shipped"
    what = f"{args.model.name}, classes + heatmaps" if shipped else "1x1-conv model, classes + 4 heatmaps"
    stripes = f"stripes of {args.stripe} columns" if args.stripe else "the default stripes"
    windows = f"{args.window}-px windows" if args.window else "the windows each run picks"
    print(
        f"\n3. peak memory (VmHWM, fresh process, {what} + counts, XYZ, the model's overlap, {stripes}, {windows})"
    )
    with ServerProcess() as server:
        for tiles in (int(t) for t in args.memory_tiles.split(",")):
            for shape, nx, ny in shapes(tiles):
                with tempfile.TemporaryDirectory() as tmp:
                    cmd = [
                        sys.executable, "-m", "benchmarks.bench_segment", "--memory-run", f"{nx}x{ny}",
                        "--folder", tmp, "--url", server.template,
                    ]  # fmt: skip
                    if shipped:
                        cmd += ["--memory-model", "shipped", "--model", str(args.model)]
                    if args.stripe:
                        cmd += ["--stripe", str(args.stripe)]
                    if args.window:
                        cmd += ["--window", str(args.window)]
                    out = subprocess.run(
                        cmd, cwd=ROOT, capture_output=True, text=True, check=True
                    ).stdout.split()
                n, windows, ran, secs = int(out[0]), int(out[1]), int(out[2]), float(out[3])
                before, peak, side = out[4], out[5], out[6]
                print(
                    f"   {shape:6} {nx:4d} x {ny:<4d} {n:6d} tiles, {windows:6d} windows of {side} px ({ran} run), "
                    f"{secs:6.1f} s: RSS {before} MB before the run, peak {peak} MB",
                    flush=True,
                )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="16 tiles, memory at 100 and 400 tiles")
    parser.add_argument(
        "--model",
        type=Path,
        default=ROOT / "models" / "satseg-buildings.onnx",
        help="the float model (default: the shipped models/satseg-buildings.onnx)",
    )
    shipped_int8 = ROOT / "models" / "satseg-buildings-int8.onnx"
    parser.add_argument(
        "--int8",
        default=str(shipped_int8) if shipped_int8.is_file() else "",
        help="an int8 copy of --model, timed beside it ('' for none; default: "
        "models/satseg-buildings-int8.onnx where it ships)",
    )
    parser.add_argument("--tiles", type=int, default=64, help="tiles of the throughput extent (a square)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of every configuration")
    parser.add_argument(
        "--batch", type=int, default=None,
        help="the pipeline's batch size (default: the pipeline's, 262,144 pixels of windows, at least one)",
    )  # fmt: skip
    parser.add_argument(
        "--memory-tiles",
        help="extents (tiles) of the memory runs (default 100,1000; --quick: 100,400), e.g. 100,1000,4000",
    )
    parser.add_argument(
        "--memory-model",
        choices=("1x1", "shipped"),
        default="1x1",
        help="model of the memory runs: a 1x1 convolution (the pipeline alone) or --model",
    )
    parser.add_argument(
        "--stripe", type=int, default=None,
        help="columns of the memory runs' stripes (default: the pipeline's, SegmentRequest.stripe_width)",
    )  # fmt: skip
    parser.add_argument(
        "--window", type=int, default=None,
        help="side of the memory runs' windows (default: the side each run picks, SegmentRequest.window); "
        "onnxruntime's memory follows the window's area",
    )  # fmt: skip
    parser.add_argument("--skip", default="", help="sections to leave out: throughput,seams,memory")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--memory-run", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.serve)
        return
    if args.memory_run:
        nx, ny = (int(v) for v in args.memory_run.split("x"))
        memory_run(
            nx,
            ny,
            Path(args.folder),
            args.url,
            args.model if args.memory_model == "shipped" else None,
            args.stripe,
            args.window,
        )
        return
    if args.quick:
        args.tiles = 16
        args.memory_tiles = args.memory_tiles or "100,400"
    skip = set(args.skip.split(",")) - {""}
    print(
        f"{os.cpu_count()} cores, load average {load_average()} at the start; model {args.model.name}"
        f"{' and ' + Path(args.int8).name if args.int8 else ''}",
        flush=True,
    )
    with tempfile.TemporaryDirectory() as tmp:
        if "throughput" not in skip:
            throughput(args, Path(tmp))
            batch_sizes(args)
        if "seams" not in skip:
            seams(args, Path(tmp))
    args.memory_tiles = args.memory_tiles or "100,1000"
    if "memory" not in skip:
        memory(args)
    print(f"\nload average at the end: {load_average()}")


if __name__ == "__main__":
    main()
