"""Merge datasets into one, matching classes by name.

``python -m training.dataset merge A B ... --out C`` combines datasets made by
``build`` (OpenStreetMap labels) and ``import-masks`` (pixel masks) so that one
model can learn from both, e.g. buildings from OSM over drone imagery and land
cover from a masked dataset.

The merged class list is ``background`` followed by every other class name in
order of first appearance; each input's label bytes are remapped to it (the
ignore label 255 stays 255). Tiles keep their ids, prefixed with the input's
folder name when two inputs share an id. Scenes are kept (``scenes.csv``), and
an XYZ tile without a recorded scene gets its spatial block (8x8 tiles of the
coarsest zoom, the same for every input), so a validation split never puts a
tile's neighbours, or a copy of it, on the other side. Images are hard-linked
where the file system allows, else copied.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import shutil
from pathlib import Path

import numpy as np

from satseg_plugin.inference.atomic import write_text_atomic
from satseg_plugin.inference.imageio import read_image, write_png
from satseg_plugin.inference.progress import ProgressBar
from satseg_plugin.inference.tileurl import strip_secrets

from .manifest import IGNORE_INDEX, DatasetError, check_id, image_bands, read_manifest, sample_ids
from .tiles import xyz_blocks


def _scenes(folder: Path) -> dict[str, str]:
    path = folder / "scenes.csv"
    if not path.is_file():
        return {}
    with path.open(newline="") as f:
        return {check_id(row["id"], path, DatasetError): row["scene"] for row in csv.DictReader(f)}


def merged_classes(manifests: list[dict]) -> tuple[list[dict], list[np.ndarray]]:
    """Return the merged class list and, per input, a 256-entry label lookup table."""
    classes: list[dict] = [{"name": "background", "color": "#000000"}]
    index = {"background": 0}
    luts = []
    for manifest in manifests:
        lut = np.full(256, IGNORE_INDEX, np.uint8)
        for i, cls in enumerate(manifest["classes"]):
            name = cls["name"]
            if name not in index:
                index[name] = len(classes)
                classes.append({"name": name, "color": cls.get("color", "#000000")})
            lut[i] = index[name]
        luts.append(lut)
    if len(classes) > IGNORE_INDEX:
        raise DatasetError(f"{len(classes)} classes do not fit in 8-bit labels")
    return classes, luts


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists():
        dst.unlink()
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def merge(inputs: list[Path], out: Path) -> dict:
    """Merge the datasets ``inputs`` into ``out``; return the new manifest."""
    if out.resolve() in {p.resolve() for p in inputs}:
        raise DatasetError("the output folder must differ from every input")
    manifests = [read_manifest(p, hint="not a satseg dataset") for p in inputs]
    for folder, manifest in zip(inputs, manifests, strict=True):
        if image_bands(manifest) is not None:  # their band statistics would need merging too
            raise DatasetError(f"merge takes RGB datasets; {folder} holds bands {manifest['bands']}")
    classes, luts = merged_classes(manifests)
    ids_seen: set[str] = set()
    plan = []
    inputs_scenes = [_scenes(folder) for folder in inputs]
    # XYZ tiles without a recorded scene go by spatial block over all inputs (copies of one
    # tile and tiles of two zooms over one piece of ground share a block); others by themselves.
    blocks = xyz_blocks(
        [
            t
            for folder, sc in zip(inputs, inputs_scenes, strict=True)
            for t in sample_ids(folder)
            if t not in sc
        ]
    )
    for folder, lut, scenes in zip(inputs, luts, inputs_scenes, strict=True):
        for tile in sample_ids(folder):
            image, label = folder / "images" / f"{tile}.png", folder / "labels" / "color" / f"{tile}.png"
            if not (image.is_file() and label.is_file()):
                continue
            new_id = tile if tile not in ids_seen else f"{folder.name}-{tile}"
            ids_seen.add(new_id)
            scene = scenes.get(tile) or blocks.get(tile) or f"{folder.name}-{tile}"
            plan.append((folder, tile, new_id, scene, lut))
    if not plan:
        raise DatasetError("the inputs hold no tiles with both an image and a label")
    counts = np.zeros(256, np.int64)
    with ProgressBar(len(plan), "merge") as bar:
        for folder, tile, new_id, _, lut in plan:
            _link_or_copy(folder / "images" / f"{tile}.png", out / "images" / f"{new_id}.png")
            labels = lut[read_image(folder / "labels" / "color" / f"{tile}.png")[..., 0]]
            counts += np.bincount(labels.ravel(), minlength=256)
            write_png(out / "labels" / "color" / f"{new_id}.png", np.repeat(labels[..., None], 3, axis=2))
            bar.update()
    ids = "".join(f"{p[2]}\n" for p in plan)
    write_text_atomic(out / "sample.txt", ids)
    write_text_atomic(out / "sample-filtered.txt", ids)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["id", "scene"])
    writer.writerows((p[2], p[3]) for p in plan)
    write_text_atomic(out / "scenes.csv", buf.getvalue())
    zooms = {m.get("zoom") for m in manifests}
    manifest = {
        "schema": 1,
        "kind": "merged",
        "classes": classes,
        "ignore_index": IGNORE_INDEX,
        "tile_size": manifests[0].get("tile_size", 256),
        "zoom": zooms.pop() if len(zooms) == 1 else None,
        "resolution_cm": manifests[0].get("resolution_cm"),
        "inputs": [
            {
                "folder": str(p),
                "kind": m.get("kind"),
                "source": strip_secrets(str(m["source"])) if m.get("source") else None,
            }
            for p, m in zip(inputs, manifests, strict=True)
        ],
        "tiles": len(plan),
        "pixels_per_class": {c["name"]: int(counts[i]) for i, c in enumerate(classes)},
        "ignored_pixels": int(counts[IGNORE_INDEX]),
    }
    write_text_atomic(out / "manifest.json", json.dumps(manifest, indent=2) + "\n")
    return manifest


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``merge`` options to ``parser``."""
    parser.add_argument("inputs", nargs="+", type=Path, help="dataset folders made by build or import-masks")
    parser.add_argument("--out", type=Path, required=True, help="folder for the merged dataset")


def run(args: argparse.Namespace) -> int:
    """Run ``merge`` from parsed arguments; print a summary."""
    manifest = merge(args.inputs, args.out)
    names = ", ".join(c["name"] for c in manifest["classes"])
    print(f"merged {manifest['tiles']} tiles into {args.out} (classes: {names})")
    return 0
