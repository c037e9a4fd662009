"""``build``: OpenStreetMap features burned into label tiles, plus the matching imagery.

    python -m training.dataset build --bbox MINLON,MINLAT,MAXLON,MAXLAT --zoom 17 \\
        --classes training/classes/mine.json --osm FILE [--imagery URL | --raster FILE] \\
        [--size 10000] [--seed 0] --out data/

Steps: read the OSM features once (clipped to the tiles of the bbox, in
EPSG:3857); keep those a class filter selects, drawn to their final shape;
list the tiles at ``--zoom`` they touch; sample ``--size`` of them with
``--seed`` (``sample.txt``); burn each sampled tile's labels
(``labels/color/<z-x-y>.png``, every byte the class index); list the tiles with
at least ``--min-labelled`` labelled pixels (``sample-filtered.txt``); with
``--imagery``, fetch those tiles' imagery (``images/<z-x-y>.png``, failures in
``skipped.csv``), or with ``--raster`` cut them out of a local raster warped to
the tile grid; write ``preview.png`` and ``manifest.json``.

Without ``--osm`` (and with ``--imagery``) only the imagery of an existing
dataset in ``--out`` is fetched. Re-running resumes: images on disk are kept.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import requests
from osgeo import gdal

from satseg_plugin.inference.atomic import write_bytes_atomic
from satseg_plugin.inference.errors import ParameterError, SatsegError, SourceError
from satseg_plugin.inference.progress import ProgressBar

from .classes import load_classes
from .imagery import (
    DEFAULT_TOKEN_ENV,
    Downloader,
    DownloadReport,
    TileTemplate,
    check_template,
    redact,
    resolve_template,
)
from .manifest import IGNORE_INDEX, read_ids, read_manifest, write_ids, write_manifest, write_skipped
from .osm_source import OsmSource
from .preview import contact_sheet
from .raster_tiles import RasterTiles
from .render import LabelStore, encode_label_png
from .tiles import (
    bbox_tiles,
    parse_bbox,
    parse_tile_id,
    pixel_size,
    resolution_cm,
    sample_tiles,
    tile_id,
    tiles_extent,
)

TILE_SIZE = 256


class _Log:
    """Messages on stderr with the access token masked."""

    def __init__(self, token: str | None = None, quiet: bool = False) -> None:
        self.token = token
        self.quiet = quiet

    def __call__(self, message: str) -> None:
        if not self.quiet:
            print(redact(message, self.token), file=sys.stderr, flush=True)


class _Discard(io.TextIOBase):
    """A text stream that drops what is written (progress bars under ``--quiet``)."""

    def write(self, text: str) -> int:
        return len(text)


@contextlib.contextmanager
def _quiet_gdal() -> Iterator[None]:
    """Hide GDAL's warnings about imperfect OSM data (open rings, odd relations)."""
    gdal.PushErrorHandler("CPLQuietErrorHandler")
    try:
        yield
    finally:
        gdal.PopErrorHandler()


def _positive(kind: type, minimum: int | float = 1):
    def check(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, not {text}")
        return value

    return check


def _write_label(path: Path, labels: np.ndarray) -> None:
    write_bytes_atomic(path, encode_label_png(labels))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``build``."""
    doc = __doc__.replace("``", "")
    parser.description = doc.split("\n\n")[0]
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = "\n\n".join(doc.split("\n\n")[1:])
    parser.add_argument(
        "--bbox",
        help="area as MINLON,MINLAT,MAXLON,MAXLAT in WGS84 degrees, e.g. -9.49,38.82,-9.40,38.89 "
        "(needed with --osm)",
    )
    parser.add_argument(
        "--zoom", type=_positive(int, 0), default=17, help="XYZ zoom of the tiles (default: %(default)s)"
    )
    parser.add_argument(
        "--classes", type=Path, help="class config JSON, e.g. training/classes/mine.json (needed with --osm)"
    )
    parser.add_argument("--osm", type=Path, help="OpenStreetMap data: .osm.pbf, GeoJSON or OSM QA .mbtiles")
    parser.add_argument(
        "--imagery",
        help="imagery XYZ template (https://host/{z}/{x}/{y}.png; {s} subdomains, {-y} TMS rows, {q} quadkey) "
        "or TileJSON URL; without it only labels and sample lists are made",
    )
    parser.add_argument(
        "--raster",
        type=Path,
        help="a local georeferenced 8-bit raster (GeoTIFF, VRT...) to cut the imagery tiles from, "
        "instead of --imagery",
    )
    parser.add_argument(
        "--token-env",
        default=DEFAULT_TOKEN_ENV,
        help="environment variable holding the imagery access token, sent as access_token= "
        "(default: %(default)s; never logged or stored)",
    )
    parser.add_argument(
        "--token-any-host",
        action="store_true",
        help="send the token also to another host a TileJSON document puts its tiles on "
        "(default: only to the host of --imagery)",
    )
    parser.add_argument("--subdomains", help="comma-separated values for {s} (default: a,b,c)")
    parser.add_argument(
        "--size", type=_positive(int), default=10000, help="tiles to sample (default: %(default)s)"
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="random seed of the sample (default: %(default)s)"
    )
    parser.add_argument(
        "--min-labelled",
        type=_positive(int, 0),
        default=1,
        help="labelled pixels a tile needs to enter sample-filtered.txt (default: %(default)s)",
    )
    parser.add_argument(
        "--out", type=Path, required=True, help="dataset folder to write (created if missing)"
    )
    parser.add_argument(
        "--workers", type=_positive(int), default=8, help="parallel downloads (default: %(default)s)"
    )
    parser.add_argument(
        "--timeout",
        type=_positive(float, 0.1),
        default=30.0,
        help="seconds per HTTP request (default: %(default)s)",
    )
    parser.add_argument(
        "--retries",
        type=_positive(int, 0),
        default=3,
        help="retries of a tile after a timeout, connection error, 429 or 5xx, with backoff (default: %(default)s)",
    )
    parser.add_argument(
        "--preview-tiles",
        type=_positive(int, 0),
        default=16,
        help="tiles on preview.png, 0: none (default: %(default)s)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress or summary on stderr")


def _check_args(args: argparse.Namespace) -> None:
    if args.imagery and args.raster:
        raise SatsegError("give --imagery or --raster, not both")
    if args.osm is None:
        if not (args.imagery or args.raster):
            raise SatsegError(
                "give --osm (with --bbox and --classes) to build labels, or --imagery or --raster for imagery"
            )
        return
    if args.bbox is None:
        raise SatsegError("--bbox is needed with --osm (MINLON,MINLAT,MAXLON,MAXLAT)")
    if args.classes is None:
        raise SatsegError("--classes is needed with --osm (e.g. training/classes/mine.json)")
    if args.zoom > 24:
        raise ParameterError(f"--zoom must be between 0 and 24, not {args.zoom}")


def build_labels(args: argparse.Namespace, log: _Log) -> dict:
    """Read OSM, sample, burn labels; return the manifest (without imagery fields)."""
    bbox = parse_bbox(args.bbox)
    config = load_classes(args.classes)
    source = OsmSource(args.osm)
    layers_for = [source.layers_for(rule.source_layer) for rule in config.rules]
    zoom = args.zoom
    trange = bbox_tiles(bbox, zoom)
    n_bbox = (trange[2] - trange[0] + 1) * (trange[3] - trange[1] + 1)
    margin = (max(r.stroke_width for r in config.rules) / 2 + 1) * pixel_size(zoom, TILE_SIZE)
    minx, miny, maxx, maxy = tiles_extent(trange, zoom)
    extent = (minx - margin, miny - margin, maxx + margin, maxy + margin)
    store = LabelStore(config, zoom, trange, TILE_SIZE)
    with _quiet_gdal():
        read = 0

        def counted():
            nonlocal read
            for f in source.features(extent):
                read += 1
                yield f

        matched = store.add(counted(), layers_for)
        store.finish()
    touching = [(x, y, zoom) for x, y in store.labelled_tiles()]
    log(
        f"{args.osm.name}: {read} line/area features in the bbox, {matched} match a class; "
        f"{len(touching)} of the {n_bbox} tiles at zoom {zoom} touch one"
    )
    for rule, n in zip(config.rules, store.matched_per_rule, strict=True):
        if n == 0:  # a typo in a filter or a tag this area does not use: say which
            where = f" (filter {rule.filter_text})" if rule.filter_text else ""
            log(f"warning: class {rule.name!r}{where} matched no feature of {args.osm.name} in the bbox")
    if not touching:
        raise SatsegError(
            f"no feature of {args.classes.name} lies in --bbox {args.bbox} ({read} features read from "
            f"{args.osm.name}); check the bbox (minlon,minlat,maxlon,maxlat), the file and the filters"
        )
    sample = sample_tiles(touching, args.size, args.seed)
    out: Path = args.out
    labels_dir = out / "labels" / "color"
    labels_dir.mkdir(parents=True, exist_ok=True)
    ids = [tile_id(t) for t in sample]
    write_ids(out / "sample.txt", ids)
    n = config.num_classes
    pixels = np.zeros(n, np.int64)
    filtered: list[str] = []
    stream = _Discard() if log.quiet else None
    # PNG encoding (zlib releases the GIL) and file writes overlap the next tile's rendering.
    writers = ThreadPoolExecutor(max_workers=2, thread_name_prefix="satseg-labels")
    pending: deque[Future] = deque()
    try:
        with ProgressBar(len(sample), "labels", stream=stream) as bar:
            for (x, y, _z), tid in zip(sample, ids, strict=True):
                labels = store.render(x, y)
                counts = np.bincount(labels.ravel(), minlength=n)[:n]
                pending.append(writers.submit(_write_label, labels_dir / f"{tid}.png", labels))
                if int(counts[1:].sum()) >= args.min_labelled:
                    filtered.append(tid)
                    pixels += counts
                while len(pending) > 16 or (pending and pending[0].done()):
                    pending.popleft().result()
                    bar.update()
            while pending:
                pending.popleft().result()
                bar.update()
    except BaseException:
        writers.shutdown(
            wait=True, cancel_futures=True
        )  # running writes finish or clean up: no partial files
        raise
    writers.shutdown(wait=True)
    write_ids(out / "sample-filtered.txt", filtered)
    log(
        f"labels: {len(ids)} tiles sampled, {len(filtered)} with at least {args.min_labelled} labelled pixels"
    )
    lat = (bbox[1] + bbox[3]) / 2
    return {
        "kind": "osm",
        "classes": [
            {"name": nm, "color": c} for nm, c in zip(config.names, config.display_colors, strict=True)
        ],
        "ignore_index": IGNORE_INDEX,
        "tile_size": TILE_SIZE,
        "zoom": zoom,
        "bbox": list(bbox),
        "resolution_cm": round(resolution_cm(lat, zoom, TILE_SIZE), 3),
        "source": None,
        "osm": {"file": str(args.osm), "driver": source.driver, "layers": source.layer_names},
        "class_config": {"path": str(args.classes), "classes": config.raw},
        "seed": args.seed,
        "size": args.size,
        "min_labelled": args.min_labelled,
        "counts": {
            "tiles_in_bbox": n_bbox,
            "tiles_touching": len(touching),
            "features_per_class": dict(zip(config.names, store.features_per_class, strict=True)),
            "sampled": len(ids),
            "filtered": len(filtered),
        },
        "pixels_per_class": {nm: int(v) for nm, v in zip(config.names, pixels, strict=True)},
        "pixels_counted_over": "sample-filtered.txt",
        "skipped": [],
    }


def _imagery_tiles(out: Path) -> list:
    listed = out / "sample-filtered.txt"
    return [parse_tile_id(i) for i in read_ids(listed if listed.is_file() else out / "sample.txt")]


def _record_imagery(out: Path, manifest: dict, report: DownloadReport, log: _Log) -> dict:
    write_skipped(out / "skipped.csv", report.skipped)
    manifest["skipped"] = [{"id": i, "reason": r} for i, r in sorted(report.skipped)]
    counts = manifest.setdefault("counts", {})
    counts["images"] = len(report.fetched) + len(report.kept)
    counts["images_fetched"] = len(report.fetched)
    counts["images_kept"] = len(report.kept)
    counts["images_skipped"] = len(report.skipped)
    log(
        f"imagery: {len(report.fetched)} fetched, {len(report.kept)} already there, {len(report.skipped)} skipped"
        + (" (see skipped.csv)" if report.skipped else "")
    )
    return manifest


def fetch_imagery(args: argparse.Namespace, manifest: dict, template: TileTemplate, log: _Log) -> dict:
    """Fetch the imagery of the filtered tiles into ``images/``; update ``manifest``."""
    out: Path = args.out
    tiles = _imagery_tiles(out)
    manifest["source"] = template.public
    write_manifest(out, manifest)  # the labels are usable even if the download stops
    downloader = Downloader(
        template,
        out / "images",
        workers=args.workers,
        timeout=args.timeout,
        retries=args.retries,
        tile_size=TILE_SIZE,
    )
    stream = _Discard() if log.quiet else None
    with ProgressBar(len(tiles), "imagery", stream=stream) as bar:
        report = downloader.fetch(tiles, bar.update)
    manifest.setdefault("counts", {})["images_damaged"] = len(report.damaged)
    if report.damaged:
        log(f"imagery: {len(report.damaged)} images on disk were damaged: removed and fetched again")
    return _record_imagery(out, manifest, report, log)


def cut_raster_imagery(args: argparse.Namespace, manifest: dict, log: _Log) -> dict:
    """Cut the filtered tiles' imagery out of the local raster ``args.raster`` (``raster_tiles``)."""
    out: Path = args.out
    tiles = _imagery_tiles(out)
    manifest["source"] = str(args.raster)
    write_manifest(out, manifest)
    stream = _Discard() if log.quiet else None
    with (
        RasterTiles(args.raster, tiles, TILE_SIZE) as raster,
        ProgressBar(len(tiles), "imagery", stream=stream) as bar,
    ):
        report = raster.fetch(tiles, out / "images", bar.update)
    if tiles and not report.fetched and not report.kept:
        raise SourceError(f"the raster {args.raster} covers none of the {len(tiles)} labelled tiles")
    return _record_imagery(out, manifest, report, log)


def run(args: argparse.Namespace) -> int:
    """Run ``build`` with parsed ``args``; raises ``SatsegError`` for user errors."""
    _check_args(args)
    log = _Log(quiet=args.quiet)
    template = None
    if args.imagery:
        check_template(args.imagery)  # a bad URL fails before any long work
    out: Path = args.out
    if args.osm is not None:
        manifest = build_labels(args, log)
    else:
        manifest = read_manifest(
            out, kind="osm", hint="build the labels first (give --osm, --bbox and --classes)"
        )
    if args.imagery:
        with requests.Session() as session:  # closed: the TileJSON request leaves no open socket
            template = resolve_template(
                args.imagery,
                args.token_env,
                args.subdomains,
                session=session,
                timeout=args.timeout,
                token_any_host=args.token_any_host,
            )
        log.token = template.token
        manifest = fetch_imagery(args, manifest, template, log)
    elif args.raster:
        manifest = cut_raster_imagery(args, manifest, log)
    write_manifest(out, manifest)
    if args.preview_tiles:
        listed = out / "sample-filtered.txt"
        ids = read_ids(listed) if listed.is_file() else []
        if args.imagery or args.raster:
            ids = [i for i in ids if (out / "images" / f"{i}.png").is_file()] or ids
        path = contact_sheet(
            out / "preview.png",
            ids[: args.preview_tiles],
            out / "images",
            out / "labels" / "color",
            [c["color"] for c in manifest["classes"]],
        )
        if path:
            log(f"preview: {path}")
    log(f"dataset: {out}")
    return 0
