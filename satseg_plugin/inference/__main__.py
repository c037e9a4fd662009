"""Command line of the inference core: ``segment`` an extent, or show a model's ``info``.

    python -m satseg_plugin.inference segment --bbox 39.2411,-6.0675,39.2459,-6.0661 \\
        --tiles 'https://host/{z}/{x}/{y}.png' --out results/
    python -m satseg_plugin.inference info models/satseg-buildings.onnx
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from .cli import DefaultsHelpFormatter, join_negative_values, run_cli
from .counts import format_table
from .errors import ExtentError, ModelError, SatsegError
from .int8speed import int8_original, int8_twin, measure_int8_speed
from .mask import mask_bounds
from .model import DEFAULT_MODEL_NAME, SegModel, default_model_path
from .params import add_cli_arguments, check_values, cli_values
from .progress import ProgressBar
from .runfolder import output_folder
from .segment import SegmentRequest, describe_plan, run_segment, single_process_options
from .tileurl import DEFAULT_TOKEN_ENV, redact


def _bbox(text: str) -> tuple[float, float, float, float]:
    parts = text.replace(" ", "").split(",")
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not four numbers MINX,MINY,MAXX,MAXY: {text!r}") from None
    if len(values) != 4:
        raise argparse.ArgumentTypeError(f"not four numbers MINX,MINY,MAXX,MAXY: {text!r}")
    return values  # type: ignore[return-value]


def _bands(text: str) -> list[int]:
    try:
        bands = [int(p) for p in text.replace(" ", "").split(",") if p]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not band numbers B1,B2,...: {text!r}") from None
    if not bands or min(bands) < 1:
        raise argparse.ArgumentTypeError(f"bands are numbered from 1: {text!r}")
    return bands


def _model_arg(value: str | None) -> str:
    if value:
        return value
    found = default_model_path()
    if found is None:
        raise ModelError(f"no --model given and the default model ({DEFAULT_MODEL_NAME}) is not installed")
    return str(found)


def _add_segment(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "segment",
        help="segment an extent of XYZ tiles or a raster into classes",
        description=(
            "Segment the extent --bbox into the model's classes. Writes OUT/classes.tif (class per pixel, "
            "colour table, class names; 255 = nodata), OUT/heatmap_<class>.tif (probability 0..1 "
            "in 8 bits: bytes 0..254 with scale 1/254; 255 = nodata) and OUT/pixel_counts.csv (class, "
            "pixels, share, area_m2, area_ha; areas measured on the ground), and prints the table. Tiles that cannot be had are left as nodata and listed."
        ),
        formatter_class=DefaultsHelpFormatter,
    )
    p.add_argument("--model", help=f"ONNX segmentation model (default: the shipped {DEFAULT_MODEL_NAME})")
    p.add_argument(
        "--bbox",
        type=_bbox,
        help="extent MINX,MINY,MAXX,MAXY in --bbox-crs (required unless --mask gives the extent)",
    )
    p.add_argument("--bbox-crs", default="EPSG:4326", help="CRS of --bbox: EPSG:n, WKT or PROJ string")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--tiles",
        metavar="URL",
        help="XYZ template (https://host/{z}/{x}/{y}.png; {s}, {-y}, {q}, {token} understood) or TileJSON URL",
    )
    src.add_argument("--raster", metavar="FILE", help="any raster GDAL opens (GeoTIFF, VRT, WMS XML...)")
    p.add_argument(
        "--mask",
        metavar="FILE",
        help="processing area: a vector file (GeoPackage, GeoJSON, Shapefile...) whose polygons are "
        "segmented; windows touching none are not run, pixels outside are nodata and not counted "
        "(default extent: the polygons' bounding box)",
    )
    p.add_argument(
        "--bands",
        type=_bands,
        metavar="B1,B2,...",
        help="with --raster: the raster bands (numbered from 1) for the model's input channels, in the "
        "model's order, e.g. 1,2,3,4 for RGB + near-infrared (default: the model's input_bands, else the "
        "raster's first image bands; a band is alpha only when the raster says so)",
    )
    p.add_argument("--out", required=True, help="output folder (created if missing)")
    add_cli_arguments(p)  # zoom, overlap, batch size, workers, the outputs and their cleaning (params.py)
    p.add_argument(
        "--cache", metavar="DIR", help="keep downloaded tiles in DIR and reuse them (off by default)"
    )
    p.add_argument(
        "--token-env",
        default=DEFAULT_TOKEN_ENV,
        help="environment variable holding the access token (sent as access_token= or as {token})",
    )
    p.add_argument(
        "--token-any-host",
        action="store_true",
        help="send the token also to another host a TileJSON document puts its tiles on "
        "(default: only to the host of --tiles)",
    )
    p.add_argument("--generic-names", action="store_true", help="accept a model without class names")
    p.add_argument("--dry-run", action="store_true", help="only say how many tiles and windows it would take")
    p.add_argument(
        "--cluster",
        nargs="?",
        const="local",
        metavar="local[:N] | tcp://HOST:PORT",
        help="segment block by block on Dask: a local cluster of N worker processes (default: one per "
        "core) or an existing scheduler; writes blocks/, classes.vrt and heatmap_<class>.vrt, and a "
        "rerun skips the blocks already done (docs/cluster.md)",
    )
    p.add_argument(
        "--block-size",
        type=int,
        default=4096,
        help="with --cluster: side of a block in pixels (a multiple of 256), one Dask task each",
    )
    p.add_argument(
        "--cog",
        action="store_true",
        help="with --cluster: also write classes.tif, one Cloud-Optimised GeoTIFF",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _segment(args: argparse.Namespace) -> int:
    bbox, bbox_crs = args.bbox, args.bbox_crs
    if bbox is None:
        if not args.mask:
            raise ExtentError("give the extent to segment: --bbox MINX,MINY,MAXX,MAXY or --mask FILE")
        bbox, bbox_crs = mask_bounds(args.mask)
    values = check_values(cli_values(args), raster=bool(args.raster))
    req = SegmentRequest(
        model=_model_arg(args.model),
        bbox=bbox,
        bbox_crs=bbox_crs,
        tiles_url=args.tiles,
        raster_path=args.raster,
        out_dir=args.out,
        cache_dir=args.cache,
        token_env=args.token_env,
        token_any_host=args.token_any_host,
        allow_generic_names=args.generic_names,
        mask_path=args.mask,
        bands=args.bands,
        **values,
    )
    if args.cluster is not None and single_process_options(req):
        raise SatsegError(
            f"{', '.join(single_process_options(req))} run in a single process only: leave out --cluster"
        )
    if args.dry_run:
        print(describe_plan(req))
        return 0
    if args.cluster is not None:
        return _segment_cluster(args, req)
    bar: ProgressBar | None = None

    def progress(fraction: float, _message: str) -> None:
        nonlocal bar
        if args.quiet:
            return
        if bar is None:
            bar = ProgressBar(1000, "segment")
        step = round(1000 * fraction) - bar.done
        if step > 0:
            bar.update(step)

    try:
        result = run_segment(req, progress=progress)
    finally:
        if bar is not None:
            bar.close()
    _print_counts_and_gaps(result)
    if result.min_area_pixels > 1:
        print(
            f"regions under {args.min_area_m2:g} m² ({result.min_area_pixels} pixels) merged into their neighbours"
        )
    if result.vectors_path:
        print(f"{result.polygons} polygons in {result.vectors_path}")
    paths = (result.classes_path, *result.heatmap_paths.values(), result.counts_csv, result.vectors_path)
    written = [p for p in paths if p]
    print(
        f"{result.tiles_total} tiles, {len(result.tiles_failed)} failed; wrote {len(written)} files to {args.out}"
    )
    return 0


def _print_counts_and_gaps(result: Any) -> None:
    """The pixel-count table on stdout and one warning line per tile that could not be had."""
    print(format_table(result.counts))
    for tile, reason in result.tiles_failed:
        print(f"warning: tile {tile} could not be had ({redact(reason)}); left as nodata", file=sys.stderr)
    for note in result.notes:
        print(f"warning: {note}", file=sys.stderr)


def _segment_cluster(args: argparse.Namespace, req: SegmentRequest) -> int:
    """``segment --cluster``: Dask is imported only on this path."""
    from .cluster import run_segment_cluster

    bar: ProgressBar | None = None

    def on_block(_result: object, done: int, total: int) -> None:
        nonlocal bar
        if args.quiet:
            return
        if bar is None:
            bar = ProgressBar(total, "blocks")
        if done > bar.done:
            bar.update(done - bar.done)

    try:
        with output_folder(args.out):  # one run at a time; a full or read-only disk in one line
            result = run_segment_cluster(req, args.cluster, args.block_size, args.cog, on_block=on_block)
    finally:
        if bar is not None:
            bar.close()
    _print_counts_and_gaps(result)
    for block, reason in result.blocks_failed:
        print(f"warning: block {block} failed ({redact(reason)}); left as nodata", file=sys.stderr)
    print(
        f"{result.blocks_total} blocks ({result.blocks_skipped} done before, {len(result.blocks_failed)} "
        f"failed), {result.tiles_total} tiles, {len(result.tiles_failed)} failed; wrote {args.out}"
    )
    return 1 if result.blocks_failed else 0


def _info(args: argparse.Namespace) -> int:
    model = SegModel.load(_model_arg(args.model), allow_generic_names=args.generic_names)
    m = model.metadata
    print(f"model: {model.path}")
    for i, (name, color) in enumerate(zip(m.class_names, m.class_colors, strict=True)):
        print(f"  class {i}: {name} {color}")
    print(f"windows: {m.tile_size} px, overlap {m.tiles_overlap} %")
    print(f"zoom: {m.zoom}, resolution: {m.resolution_cm} cm/px")
    print(
        f"input: {model.channels} bands" + (f" (raster bands {list(m.input_bands)})" if m.input_bands else "")
    )
    print(f"normalisation: mean {list(m.mean)}, std {list(m.std)}")
    print(f"execution providers: {', '.join(model.session.get_providers())}")
    if args.int8_speed:
        twin, original = int8_twin(model.path), int8_original(model.path)
        if original is not None:
            print(f"int8: this is an int8 copy; measure its model: info {original.name} --int8-speed")
        elif twin is None:
            print(f"int8: no int8 copy ({model.path.stem}-int8.onnx) beside the model")
        else:  # measured now, as the dialog measures it (the dialog caches; a command line has no profile)
            speed = measure_int8_speed(model.path, twin)
            print(
                f"{speed.text()} ({twin.name}; {speed.fp32_s * 1000:.0f} against {speed.int8_s * 1000:.0f} ms a window)"
            )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m satseg_plugin.inference",
        description="satseg's inference core: segment imagery with an ONNX model, without QGIS.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_segment(sub)
    info = sub.add_parser("info", help="show a model's classes and metadata")
    info.add_argument("model", nargs="?", help=f"ONNX model (default: the shipped {DEFAULT_MODEL_NAME})")
    info.add_argument("--generic-names", action="store_true", help="accept a model without class names")
    info.add_argument(
        "--int8-speed",
        action="store_true",
        help="also time the model's int8 copy (<name>-int8.onnx) against it on this machine, in interleaved "
        "rounds, as the Segment extent dialog does before offering it (default: not measured)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(join_negative_values(list(sys.argv[1:] if argv is None else argv)))
    if args.command == "segment":
        return _segment(args)
    return _info(args)


if __name__ == "__main__":
    sys.exit(run_cli(main))
