"""Import image + RGB mask pairs (datasets labelled pixel by pixel) as training tiles.

Source layout (``SRC``)::

    SRC/SCENE/images/X.jpg     the image (JPEG, PNG, TIFF: anything GDAL reads, RGB)
    SRC/SCENE/masks/X.png      its mask, same size, one colour per class (palette PNGs are fine)

``SCENE`` may be nested (``SRC/a/b/images/X.jpg`` is scene ``a_b``); ``SRC`` itself
may be the scene (``SRC/images``, ``SRC/masks``). An image without a mask, or a
mask of another size, is listed in ``skipped.csv`` and left out.

Colour map (``--colors``), a JSON object::

    {
      "classes": [
        {"name": "background", "mask_color": [], "color": "#000000"},
        {"name": "building", "mask_color": "#3C1098", "color": "#e31a1c"},
        ...
      ],
      "ignore_colors": ["#9B9B9B", "#000000"]
    }

``classes[i]`` becomes class index ``i``. ``mask_color`` is one ``#rrggbb`` or a
list of them (the colours in the masks that mean this class); ``color`` is the
display colour (default: ``metadata.default_color``). Index 0 is always
``background``: when the first class is named otherwise, a background class with
no mask colour is put in front. ``ignore_colors`` (e.g. "unlabeled") and every
colour the map does not name become the ignore label 255, never background.

Output (the dataset layout of docs/design.md): ``images/<id>.png``,
``labels/color/<id>.png`` (every byte = class index, 255 = ignore),
``sample.txt``, ``sample-filtered.txt`` (tiles with at least ``--min-labelled``
labelled pixels), ``scenes.csv``, ``skipped.csv`` and ``manifest.json``
(``kind`` "masks"). Tile ids are ``<scene>-<part>-<row>-<col>``. ``scenes.csv``
groups the tiles for the validation split by scene, or with ``--split-by image``
by ``<scene>-<part>`` (one scene of many images can then be split at all).

``--scale F`` resamples each image (bilinear, or average when shrinking) and its
labels (nearest, or mode when shrinking) by ``F`` before cutting, so that masks
at one ground resolution can train a model for another (Dubai's 1 m/px with
``--scale 3`` for a zoom-19 model); the manifest's ``resolution_cm`` is divided
by ``F``.

``--bands 1,2,3,4`` keeps those bands of each image, in that order, instead of
its RGB: the dataset of a model of other than three input bands (RGB +
near-infrared from 4-band GeoTIFFs, say). Its images are ``images/<id>.tif``
(PNG holds at most four bands and makes a 4th alpha), and the manifest records
``bands`` and each band's mean and std (``band_mean``, ``band_std``, of
``uint8 / 255`` over the imported pixels): training standardises with them and
the exported model carries them, with ``input_bands``, so the plugin feeds a
raster of that layout the same way.
"""

from __future__ import annotations

import argparse
import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from osgeo import gdal

from satseg_plugin.inference.atomic import atomic_path, write_text_atomic
from satseg_plugin.inference.errors import ConfigError, SatsegError
from satseg_plugin.inference.imageio import ImageError, read_image, resize_bands, to_rgb, write_png
from satseg_plugin.inference.metadata import default_color, parse_hex_color
from satseg_plugin.inference.progress import ProgressBar
from satseg_plugin.inference.tileplan import starts_inside

from .manifest import IGNORE_INDEX, image_file

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".webp")


@dataclass(frozen=True)
class ColorMap:
    """Class names, display colours and the lookup from packed mask colour to class index."""

    names: list[str]
    colors: list[str]
    lookup: dict[int, int]  # 0xRRGGBB -> class index or IGNORE_INDEX


def _pack(rgb: np.ndarray) -> np.ndarray:
    """Pack ``(..., 3)`` uint8 colours into ``0xRRGGBB`` int32 values."""
    c = rgb.astype(np.int32)
    return (c[..., 0] << 16) | (c[..., 1] << 8) | c[..., 2]


def _color_value(value: object, where: str) -> int:
    if not isinstance(value, str):
        raise ConfigError(f"{where}: a colour must be a '#rrggbb' string, not {value!r}")
    try:
        r, g, b = parse_hex_color(value)
    except ValueError:
        raise ConfigError(f"{where}: {value!r} is not a '#rrggbb' colour") from None
    return (r << 16) | (g << 8) | b


def load_color_map(path: str | Path) -> ColorMap:
    """Read and check a colour map file (format in the module docstring).

    Raises ``ConfigError`` naming the file and the entry for anything malformed:
    missing names, bad colours, a mask colour claimed by two classes.
    """
    p = Path(path)
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"colour map not found: {p}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"colour map {p} is not valid JSON: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("classes"), list) or not doc["classes"]:
        raise ConfigError(f"colour map {p} needs a non-empty 'classes' list")
    entries = list(doc["classes"])
    first = entries[0]
    if not (isinstance(first, dict) and str(first.get("name", "")).lower() == "background"):
        entries.insert(0, {"name": "background", "mask_color": [], "color": "#000000"})
    if len(entries) > IGNORE_INDEX:
        raise ConfigError(f"colour map {p} has {len(entries)} classes; at most {IGNORE_INDEX} fit a byte")
    names: list[str] = []
    colors: list[str] = []
    lookup: dict[int, int] = {}
    for i, entry in enumerate(entries):
        where = f"{p}, class {i}"
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) or not entry["name"]:
            raise ConfigError(f"{where}: every class needs a 'name'")
        name = entry["name"]
        where = f"{p}, class {i} ({name})"
        if name in names:
            raise ConfigError(f"{where}: the class name is used twice")
        mask = entry.get("mask_color", [])
        mask_list = [mask] if isinstance(mask, str) else mask
        if not isinstance(mask_list, list):
            raise ConfigError(f"{where}: 'mask_color' must be a colour or a list of colours")
        for m in mask_list:
            value = _color_value(m, where)
            if value in lookup:
                raise ConfigError(f"{where}: mask colour {m} is already class {lookup[value]}")
            lookup[value] = i
        display = entry.get("color", default_color(i))
        _color_value(display, where)
        names.append(name)
        colors.append(display.lower())
    ignore = doc.get("ignore_colors", [])
    if not isinstance(ignore, list):
        raise ConfigError(f"{p}: 'ignore_colors' must be a list of colours")
    for m in ignore:
        value = _color_value(m, f"{p}, ignore_colors")
        if value in lookup:
            raise ConfigError(f"{p}: ignore colour {m} is also class {lookup[value]}")
        lookup[value] = IGNORE_INDEX
    return ColorMap(names, colors, lookup)


def mask_to_labels(mask_rgb: np.ndarray, cmap: ColorMap) -> tuple[np.ndarray, Counter[int]]:
    """Map an ``(H, W, 3)`` mask to class indices; unknown colours become 255.

    Returns the ``(H, W)`` uint8 labels and a count of the unknown colours
    (packed ``0xRRGGBB``) so the caller can report them.
    """
    packed = _pack(mask_rgb)
    values, inverse = np.unique(packed, return_inverse=True)
    mapped = np.array([cmap.lookup.get(int(v), IGNORE_INDEX) for v in values], np.uint8)
    unknown = Counter(
        {
            int(v): int(n)
            for v, n in zip(values, np.bincount(inverse.ravel()), strict=False)
            if int(v) not in cmap.lookup
        }
    )
    return mapped[inverse].reshape(packed.shape), unknown


def resample(pixels: np.ndarray, factor: float, labels: bool) -> np.ndarray:
    """``pixels`` (H x W or H x W x C, uint8) resampled by ``factor`` with GDAL.

    Images are interpolated (bilinear up, average down); labels keep their
    values (nearest up, mode down), so the ignore label stays 255.
    """
    if factor == 1.0:
        return pixels
    h, w = pixels.shape[:2]
    out_w, out_h = max(1, round(w * factor)), max(1, round(h * factor))
    bands = pixels[None] if pixels.ndim == 2 else np.moveaxis(pixels, 2, 0)
    alg = ("nearest" if factor > 1 else "mode") if labels else ("bilinear" if factor > 1 else "average")
    out = resize_bands(bands, out_w, out_h, alg)
    return out[0] if pixels.ndim == 2 else np.ascontiguousarray(np.moveaxis(out, 0, 2))


def parse_band_list(text: str | None) -> tuple[int, ...] | None:
    """``"1,2,3,4"`` -> ``(1, 2, 3, 4)``; None for None; ``SatsegError`` unless band numbers from 1, each once."""
    if text is None:
        return None
    try:
        bands = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise SatsegError(
            f"--bands must be band numbers separated by commas (e.g. 1,2,3,4), not {text!r}"
        ) from None
    if min(bands) < 1 or len(set(bands)) != len(bands):
        raise SatsegError(f"--bands numbers the bands from 1, each once, not {text!r}")
    return bands


def pick_bands(pixels: np.ndarray, bands: tuple[int, ...], what: Path) -> np.ndarray:
    """``(H, W, len(bands))``: ``bands`` (1-based) of ``(H, W, n)`` pixels; ``ImageError`` when it has fewer."""
    have = pixels.shape[2] if pixels.ndim == 3 else 1
    if max(bands) > have:
        raise ImageError(f"{what.name} has {have} band(s); --bands asks for band {max(bands)}")
    return np.ascontiguousarray(pixels.reshape(*pixels.shape[:2], have)[..., [b - 1 for b in bands]])


def write_tiff(path: Path, pixels: np.ndarray) -> None:
    """Write ``(H, W, B)`` uint8 bands as a deflate GeoTIFF, atomically; every band is data (no alpha)."""
    h, w, count = pixels.shape
    with atomic_path(path) as tmp:
        ds = gdal.GetDriverByName("GTiff").Create(
            str(tmp), w, h, count, gdal.GDT_Byte, ["COMPRESS=DEFLATE", "PHOTOMETRIC=MINISBLACK", "ALPHA=NO"]
        )
        for i in range(count):
            ds.GetRasterBand(i + 1).WriteArray(pixels[..., i])
        ds = None  # closing flushes the file before the rename


class BandStats:
    """Running per-band mean and std of ``uint8 / 255`` over every imported pixel."""

    def __init__(self, count: int) -> None:
        self.total = np.zeros(count)
        self.squares = np.zeros(count)
        self.pixels = 0

    def add(self, image: np.ndarray) -> None:
        x = image.reshape(-1, image.shape[-1]).astype(np.float64) / 255.0
        self.total += x.sum(axis=0)
        self.squares += np.square(x).sum(axis=0)
        self.pixels += len(x)

    def mean_std(self) -> tuple[list[float], list[float]]:
        mean = self.total / max(1, self.pixels)
        std = np.sqrt(np.maximum(self.squares / max(1, self.pixels) - mean**2, 0.0))
        return [round(float(v), 6) for v in mean], [round(float(max(v, 1e-3)), 6) for v in std]


def _read_pair(
    image_path: Path, mask_path: Path, bands: tuple[int, ...] | None
) -> tuple[np.ndarray, np.ndarray]:
    """The image (its RGB, or ``bands``) and the mask's RGB; ``ImageError`` when either cannot be had."""
    raw = read_image(image_path, stretch=True)  # 16-bit satellite imagery: one stretch of all its bands
    image = to_rgb(raw)[0] if bands is None else pick_bands(raw, bands, image_path)
    return image, to_rgb(read_image(mask_path))[0]


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]+", "_", name).strip("_") or "x"


def find_pairs(src: Path) -> tuple[list[tuple[str, str, Path, Path | None]], list[str]]:
    """Find ``(scene, part, image, mask or None)`` under ``src``, sorted, and the scene names."""
    pairs = []
    for images_dir in sorted(p for p in [src, *src.rglob("*")] if p.is_dir() and p.name == "images"):
        scene_dir = images_dir.parent
        rel = scene_dir.relative_to(src).parts if scene_dir != src else (src.resolve().name,)
        scene = _safe("_".join(rel))
        masks_dir = scene_dir / "masks"
        for image in sorted(images_dir.iterdir()):
            if image.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            mask = masks_dir / f"{image.stem}.png"
            pairs.append((scene, _safe(image.stem), image, mask if mask.is_file() else None))
    return pairs, sorted({s for s, *_ in pairs})


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``import-masks`` options to ``parser``."""
    parser.description = (
        "Cut image + RGB mask pairs into training tiles in the satseg dataset layout. "
        "SRC holds SCENE/images/X.jpg with SCENE/masks/X.png (same name, .png; any image format GDAL "
        "reads; palette PNG masks are fine). Each SCENE is kept apart in scenes.csv so the validation "
        "split never mixes tiles of one scene. Mask colours the colour map does not name, and its "
        "'ignore_colors', become the ignore label 255."
    )
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = __doc__.split("Colour map (``--colors``), a JSON object::", 1)[1].split("Output", 1)[0]
    parser.epilog = "colour map format (--colors):" + parser.epilog
    parser.add_argument("src", type=Path, metavar="SRC", help="folder of scenes (SCENE/images, SCENE/masks)")
    parser.add_argument(
        "--colors", type=Path, required=True, metavar="JSON",
        help="colour map: mask colours to classes (e.g. training/classes/dubai.json)",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, required=True, help="dataset folder to write (e.g. data/)")
    parser.add_argument("--tile", type=int, default=256, help="tile size in pixels (default: 256)")
    parser.add_argument(
        "--stride", type=int, default=None,
        help="step between tiles in pixels; less than --tile overlaps them (default: --tile)",
    )  # fmt: skip
    parser.add_argument(
        "--scenes", default=None, metavar="A,B",
        help="import only these scenes, comma-separated (default: all)",
    )  # fmt: skip
    parser.add_argument(
        "--split-by", choices=("scene", "image"), default="scene",
        help="what the validation split keeps whole (scenes.csv): each scene, so neighbouring images "
        "never straddle it; or each image, for a source of one or few scenes, where neighbouring "
        "images of a scene may then sit on both sides (default: scene)",
    )  # fmt: skip
    parser.add_argument(
        "--min-labelled", type=int, default=1, metavar="N",
        help="a tile goes to sample-filtered.txt when it has at least N labelled pixels (default: 1)",
    )  # fmt: skip
    parser.add_argument(
        "--resolution-cm", type=float, default=None,
        help="ground resolution in cm/px of the source images, recorded in the manifest (divided by "
        "--scale) (default: unknown)",
    )  # fmt: skip
    parser.add_argument(
        "--scale", type=float, default=1.0, metavar="F",
        help="resample images and masks by F before cutting (e.g. 3 turns 1 m/px into 0.33 m/px) "
        "(default: 1)",
    )  # fmt: skip
    parser.add_argument(
        "--bands", default=None, metavar="1,2,3,4",
        help="keep these bands of each image (numbered from 1, in the model's order) instead of its RGB, "
        "e.g. 1,2,3,4 for RGB + near-infrared GeoTIFFs; the tiles become images/<id>.tif (default: RGB)",
    )  # fmt: skip


def run(args: argparse.Namespace) -> int:
    """Import the pairs under ``args.src``; return 0. Raises ``SatsegError`` on bad input."""
    src: Path = args.src
    tile: int = args.tile
    stride: int = args.stride if args.stride is not None else tile
    if tile < 32:
        raise SatsegError(f"--tile must be at least 32 pixels, not {tile}")
    if not 0 < stride <= tile:
        raise SatsegError(f"--stride must be between 1 and --tile ({tile}), not {stride}")
    if not 0.05 <= args.scale <= 20:
        raise SatsegError(f"--scale must be between 0.05 and 20, not {args.scale:g}")
    if not src.is_dir():
        raise SatsegError(f"source folder not found: {src}")
    cmap = load_color_map(args.colors)
    bands = parse_band_list(getattr(args, "bands", None))
    stats = BandStats(len(bands)) if bands else None
    pairs, scenes = find_pairs(src)
    if args.scenes:
        wanted = [s.strip() for s in args.scenes.split(",") if s.strip()]
        missing = sorted(set(wanted) - set(scenes))
        if missing:
            raise SatsegError(f"scene(s) {', '.join(missing)} not in {src} (it has: {', '.join(scenes)})")
        pairs = [p for p in pairs if p[0] in wanted]
    if not pairs:
        raise SatsegError(f"no SCENE/images/*.jpg with SCENE/masks/*.png found under {src}")

    out: Path = args.out
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "labels" / "color").mkdir(parents=True, exist_ok=True)
    n = len(cmap.names)
    pixels = np.zeros(n, np.int64)
    ignored = 0
    unknown: Counter[int] = Counter()
    ids: list[str] = []
    filtered: list[str] = []
    scene_rows: list[str] = []
    skipped: list[str] = []
    by_image = getattr(args, "split_by", "scene") == "image"
    with ProgressBar(len(pairs), "import-masks") as bar:
        for scene, part, image_path, mask_path in pairs:
            try:
                if mask_path is None:
                    skipped.append(
                        f"{scene}-{part},no mask {image_path.stem}.png in {image_path.parent.parent}/masks"
                    )
                    continue
                try:
                    image, mask = _read_pair(image_path, mask_path, bands)
                except ImageError as exc:
                    skipped.append(f"{scene}-{part},{str(exc).replace(',', ';')}")
                    continue
                if image.shape[:2] != mask.shape[:2]:
                    skipped.append(
                        f"{scene}-{part},image {image.shape[1]}x{image.shape[0]} and mask "
                        f"{mask.shape[1]}x{mask.shape[0]} differ in size"
                    )
                    continue
                labels, unk = mask_to_labels(mask, cmap)
                unknown.update(unk)
                image, labels = resample(image, args.scale, False), resample(labels, args.scale, True)
                if stats is not None:
                    stats.add(image)
                h, w = labels.shape
                for r, y in enumerate(starts_inside(h, tile, stride)):
                    for c, x in enumerate(starts_inside(w, tile, stride)):
                        img_t = np.zeros((tile, tile, image.shape[2]), np.uint8)
                        lab_t = np.full((tile, tile), IGNORE_INDEX, np.uint8)  # padding is unlabelled
                        win_i = image[y : y + tile, x : x + tile]
                        img_t[: win_i.shape[0], : win_i.shape[1]] = win_i
                        lab_t[: win_i.shape[0], : win_i.shape[1]] = labels[y : y + tile, x : x + tile]
                        tile_id = f"{scene}-{part}-{r}-{c}"
                        if bands:
                            write_tiff(image_file(out, tile_id, multiband=True), img_t)
                        else:
                            write_png(image_file(out, tile_id), img_t)
                        write_png(
                            out / "labels" / "color" / f"{tile_id}.png", np.repeat(lab_t[..., None], 3, 2)
                        )
                        counts = np.bincount(lab_t.ravel(), minlength=256)
                        pixels += counts[:n]
                        ignored += int(counts[IGNORE_INDEX])
                        ids.append(tile_id)
                        scene_rows.append(f"{tile_id},{scene}-{part}" if by_image else f"{tile_id},{scene}")
                        if int(counts[:n].sum()) >= args.min_labelled:
                            filtered.append(tile_id)

            finally:
                bar.update()  # after the work, so the rate is right

    write_text_atomic(out / "skipped.csv", "id,reason\n" + "".join(f"{s}\n" for s in skipped))
    if not ids:  # after skipped.csv, which the message points to
        raise SatsegError(f"no tiles could be made from {src}; see the reasons in {out / 'skipped.csv'}")
    write_text_atomic(out / "sample.txt", "".join(f"{i}\n" for i in ids))
    write_text_atomic(out / "sample-filtered.txt", "".join(f"{i}\n" for i in filtered))
    write_text_atomic(out / "scenes.csv", "id,scene\n" + "".join(f"{r}\n" for r in scene_rows))
    used_scenes = sorted({s for s, *_ in pairs})
    manifest = {
        "schema": 1,
        "kind": "masks",
        "classes": [{"name": nm, "color": col} for nm, col in zip(cmap.names, cmap.colors, strict=False)],
        "ignore_index": IGNORE_INDEX,
        "tile_size": tile,
        "stride": stride,
        "zoom": None,
        "resolution_cm": args.resolution_cm / args.scale if args.resolution_cm else None,
        "scale": args.scale,
        "source": str(src.resolve()),
        "colors_file": str(Path(args.colors).resolve()),
        "scenes": used_scenes,
        "split_by": "image" if by_image else "scene",
        "tiles": len(ids),
        "tiles_filtered": len(filtered),
        "skipped": len(skipped),
        "pixels_per_class": {nm: int(v) for nm, v in zip(cmap.names, pixels, strict=False)},
        "ignored_pixels": ignored,
        "unknown_colors": {f"#{v:06X}": k for v, k in unknown.most_common(20)},
    }
    if stats is not None:
        manifest["bands"] = list(bands or ())
        manifest["band_mean"], manifest["band_std"] = stats.mean_std()
    write_text_atomic(out / "manifest.json", json.dumps(manifest, indent=2) + "\n")
    print(f"{len(ids)} tiles from {len(pairs) - len(skipped)} images in {len(used_scenes)} scenes -> {out}")
    for nm, v in zip(cmap.names, pixels, strict=False):
        print(f"  {nm:<20} {int(v):>12} px")
    print(f"  {'(ignored)':<20} {ignored:>12} px")
    if unknown:
        listed = ", ".join(f"#{v:06X} ({k} px)" for v, k in unknown.most_common(5))
        print(f"warning: colours not in the colour map were set to ignore: {listed}")
    if skipped:
        print(f"warning: {len(skipped)} image(s) skipped, see {out / 'skipped.csv'}")
    return 0
