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

With ``--cluster`` the labels are burned and the imagery fetched chunk by
chunk (``--chunk-tiles``) on Dask: a local cluster of N worker processes
(``local:N``) or an existing scheduler (``tcp://HOST:PORT``), whose workers
see the OSM file and ``--out`` at the same paths. The sample, labels, images,
lists and manifest are those of a single-process build (docs/cluster.md).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import requests
from osgeo import gdal

from satseg_plugin.inference.atomic import write_bytes_atomic
from satseg_plugin.inference.errors import ParameterError, SatsegError, SourceError
from satseg_plugin.inference.progress import ProgressBar

from .classes import ClassConfig, load_classes
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
    Tile,
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
        help="a local georeferenced raster (GeoTIFF, VRT...) to cut the imagery tiles from (more than "
        "8 bits: stretched to 0-255 between the 0.5 %% and 99.5 %% points of all its bands' values), "
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
    parser.add_argument(
        "--cluster",
        nargs="?",
        const="local",
        metavar="local[:N] | tcp://HOST:PORT",
        help="burn the labels and fetch the imagery chunk by chunk on Dask: a local cluster of N worker "
        "processes (default: one per core) or an existing scheduler; the same dataset as one process "
        "(docs/cluster.md)",
    )
    parser.add_argument(
        "--chunk-tiles",
        type=_positive(int),
        default=256,
        help="with --cluster: sampled tiles per chunk, one Dask task each (default: %(default)s)",
    )
    parser.add_argument(
        "--osm-read",
        choices=("worker", "chunk"),
        help="with --cluster: read the OSM features once per worker process (the whole bbox) or once per "
        "chunk (its tiles only) (default: chunk for .mbtiles, whose tiles index the file; worker for "
        ".osm.pbf and GeoJSON, which every read scans whole)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress or summary on stderr")


def _check_args(args: argparse.Namespace) -> None:
    if args.imagery and args.raster:
        raise SatsegError("give --imagery or --raster, not both")
    if args.cluster is not None:
        from .cluster import check_cluster_args

        check_cluster_args(args)
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


@dataclass
class LabelPlan:
    """What the OSM read of a build found: the drawn features, the tiles they touch and the sample."""

    bbox: tuple[float, float, float, float]
    config: ClassConfig
    source: OsmSource
    zoom: int
    trange: tuple[int, int, int, int]
    n_bbox: int  # tiles in the bbox
    extent: tuple[float, float, float, float]  # EPSG:3857: read and clipped to (label_extent)
    store: LabelStore
    touching: list[Tile]
    sample: list[Tile]
    ids: list[str]


def label_extent(config: ClassConfig, zoom: int, trange: tuple[int, int, int, int]) -> tuple:
    """EPSG:3857 extent the features are read from: the tiles' plus the widest stroke's half and a pixel."""
    margin = (max(r.stroke_width for r in config.rules) / 2 + 1) * pixel_size(zoom, TILE_SIZE)
    minx, miny, maxx, maxy = tiles_extent(trange, zoom)
    return minx - margin, miny - margin, maxx + margin, maxy + margin


def draw_features(
    source: OsmSource,
    config: ClassConfig,
    zoom: int,
    trange: tuple[int, int, int, int],
    extent: tuple,
    within: tuple | None = None,
    find_tiles: bool = True,
) -> tuple[LabelStore, int, int]:
    """``(store, features read, features matched)``: the features of ``extent`` a class selects, drawn.

    ``within`` reads only the features meeting that part of the extent, drawn
    exactly as a read of the whole extent draws them (``OsmSource.features``).
    """
    layers_for = [source.layers_for(rule.source_layer) for rule in config.rules]
    store = LabelStore(config, zoom, trange, TILE_SIZE)
    with _quiet_gdal():
        read = 0

        def counted():
            nonlocal read
            for f in source.features(extent, within):
                read += 1
                yield f

        matched = store.add(counted(), layers_for)
        store.finish(find_tiles)
    return store, read, matched


def class_counts(labels: np.ndarray, n: int) -> np.ndarray:
    """Pixels per class index ``0..n-1`` of one label tile (the ignore index is not counted)."""
    return np.bincount(labels.ravel(), minlength=n)[:n]


def read_labels(args: argparse.Namespace, log: _Log) -> LabelPlan:
    """Read the OSM features of ``--bbox``, find the labelled tiles and sample them (``--size``, ``--seed``)."""
    bbox = parse_bbox(args.bbox)
    config = load_classes(args.classes)
    source = OsmSource(args.osm)
    zoom = args.zoom
    trange = bbox_tiles(bbox, zoom)
    n_bbox = (trange[2] - trange[0] + 1) * (trange[3] - trange[1] + 1)
    extent = label_extent(config, zoom, trange)
    store, read, matched = draw_features(source, config, zoom, trange, extent)
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
    return LabelPlan(
        bbox, config, source, zoom, trange, n_bbox, extent, store, touching, sample,
        [tile_id(t) for t in sample],
    )  # fmt: skip


def burn_labels(
    plan: LabelPlan, labels_dir: Path, min_labelled: int, log: _Log
) -> tuple[np.ndarray, list[str]]:
    """Write every sampled tile's label PNG; ``(pixels per class over the filtered tiles, filtered ids)``."""
    n = plan.config.num_classes
    pixels = np.zeros(n, np.int64)
    filtered: list[str] = []
    stream = _Discard() if log.quiet else None
    # PNG encoding (zlib releases the GIL) and file writes overlap the next tile's rendering.
    writers = ThreadPoolExecutor(max_workers=2, thread_name_prefix="satseg-labels")
    pending: deque[Future] = deque()
    try:
        with ProgressBar(len(plan.sample), "labels", stream=stream) as bar:
            for (x, y, _z), tid in zip(plan.sample, plan.ids, strict=True):
                labels = plan.store.render(x, y)
                counts = class_counts(labels, n)
                pending.append(writers.submit(_write_label, labels_dir / f"{tid}.png", labels))
                if int(counts[1:].sum()) >= min_labelled:
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
    return pixels, filtered


def labels_manifest(
    args: argparse.Namespace, plan: LabelPlan, pixels: np.ndarray, filtered: list[str]
) -> dict:
    """The manifest of a labelled dataset (without imagery fields)."""
    config = plan.config
    lat = (plan.bbox[1] + plan.bbox[3]) / 2
    return {
        "kind": "osm",
        "classes": [
            {"name": nm, "color": c} for nm, c in zip(config.names, config.display_colors, strict=True)
        ],
        "ignore_index": IGNORE_INDEX,
        "tile_size": TILE_SIZE,
        "zoom": plan.zoom,
        "bbox": list(plan.bbox),
        "resolution_cm": round(resolution_cm(lat, plan.zoom, TILE_SIZE), 3),
        "source": None,
        "osm": {"file": str(args.osm), "driver": plan.source.driver, "layers": plan.source.layer_names},
        "class_config": {"path": str(args.classes), "classes": config.raw},
        "seed": args.seed,
        "size": args.size,
        "min_labelled": args.min_labelled,
        "counts": {
            "tiles_in_bbox": plan.n_bbox,
            "tiles_touching": len(plan.touching),
            "features_per_class": dict(zip(config.names, plan.store.features_per_class, strict=True)),
            "sampled": len(plan.ids),
            "filtered": len(filtered),
        },
        "pixels_per_class": {nm: int(v) for nm, v in zip(config.names, pixels, strict=True)},
        "pixels_counted_over": "sample-filtered.txt",
        "skipped": [],
    }


def log_labels(log: _Log, sampled: int, filtered: int, min_labelled: int) -> None:
    log(f"labels: {sampled} tiles sampled, {filtered} with at least {min_labelled} labelled pixels")


def build_labels(args: argparse.Namespace, log: _Log) -> dict:
    """Read OSM, sample, burn labels; return the manifest (without imagery fields)."""
    plan = read_labels(args, log)
    out: Path = args.out
    labels_dir = out / "labels" / "color"
    labels_dir.mkdir(parents=True, exist_ok=True)
    write_ids(out / "sample.txt", plan.ids)
    pixels, filtered = burn_labels(plan, labels_dir, args.min_labelled, log)
    write_ids(out / "sample-filtered.txt", filtered)
    log_labels(log, len(plan.ids), len(filtered), args.min_labelled)
    return labels_manifest(args, plan, pixels, filtered)


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
    return record_download(out, manifest, report, log)


def record_download(out: Path, manifest: dict, report: DownloadReport, log: _Log) -> dict:
    """Put a download's counts and skipped tiles into ``manifest`` and ``skipped.csv``; say what it did."""
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


def _resolve(args: argparse.Namespace) -> TileTemplate:
    """The imagery template of ``--imagery`` (a TileJSON document read), with its token."""
    with requests.Session() as session:  # closed: the TileJSON request leaves no open socket
        return resolve_template(
            args.imagery,
            args.token_env,
            args.subdomains,
            session=session,
            timeout=args.timeout,
            token_any_host=args.token_any_host,
        )


def run(args: argparse.Namespace) -> int:
    """Run ``build`` with parsed ``args``; raises ``SatsegError`` for user errors."""
    _check_args(args)
    log = _Log(quiet=args.quiet)
    template = None
    if args.imagery:
        check_template(args.imagery)  # a bad URL fails before any long work
    out: Path = args.out
    on_cluster = args.cluster is not None
    if on_cluster:  # labels and imagery together, chunk by chunk on Dask (cluster.py)
        from .cluster import build_on_cluster

        if args.imagery:  # the chunks need the resolved template, token and all
            template = _resolve(args)
            log.token = template.token
        manifest = build_on_cluster(args, log, template)
    elif args.osm is not None:
        manifest = build_labels(args, log)
    else:
        manifest = read_manifest(
            out, kind="osm", hint="build the labels first (give --osm, --bbox and --classes)"
        )
    if args.imagery and not on_cluster:
        template = _resolve(args)
        log.token = template.token
        manifest = fetch_imagery(args, manifest, template, log)
    elif args.raster:
        manifest = cut_raster_imagery(args, manifest, log)
    write_manifest(out, manifest)
    counts = manifest.get("counts", {})
    if args.imagery and counts.get("images_skipped") and not counts.get("images"):
        # Labels without a single image are no dataset: say so with the exit status, as segment does.
        reasons = sorted({s["reason"] for s in manifest["skipped"]})
        raise SourceError(
            f"no imagery tile could be had ({counts['images_skipped']} tiles failed: {'; '.join(reasons[:3])}); "
            f"every reason is in {out / 'skipped.csv'}"
        )
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
