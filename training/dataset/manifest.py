"""The dataset's ``manifest.json`` (fields in docs/design.md) and its side files."""

from __future__ import annotations

import csv
import io
import json
import os
import re
from datetime import UTC, datetime
from pathlib import Path

from satseg_plugin.inference.atomic import write_text_atomic
from satseg_plugin.inference.errors import SatsegError

SCHEMA = 1
#: The label byte of unlabelled or unknown pixels (``ignore_index`` of the manifest): no loss, no score.
IGNORE_INDEX = 255
#: The sample lists, the first that exists wins: the filtered one, else every sampled tile.
SAMPLE_LISTS = ("sample-filtered.txt", "sample.txt")


class DatasetError(SatsegError):
    """The dataset folder is missing, incomplete or inconsistent."""


def read_manifest(
    folder: str | os.PathLike[str],
    kind: str | None = None,
    hint: str = "build it with python -m training.dataset",
) -> dict:
    """The manifest of the dataset in ``folder``, its ``classes`` list checked.

    ``kind`` (``"osm"`` or ``"masks"``) also asks for that kind of dataset;
    ``hint`` says what to do when there is no manifest. ``DatasetError`` when
    the folder or manifest is missing or unusable.
    """
    root = Path(folder)
    path = root / "manifest.json"
    if not root.is_dir():
        raise DatasetError(f"dataset folder not found: {root} ({hint})")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DatasetError(f"{root} has no manifest.json: {hint}") from None
    except ValueError as exc:  # also undecodable bytes
        raise DatasetError(f"{path} is not valid JSON: {exc}") from None
    except OSError as exc:
        raise DatasetError(f"cannot read {path}: {exc}") from None
    classes = manifest.get("classes") if isinstance(manifest, dict) else None
    if (
        not isinstance(classes, list)
        or not classes
        or not all(isinstance(c, dict) and "name" in c for c in classes)
    ):
        raise DatasetError(f"{path} has no usable 'classes' list")
    if kind is not None and manifest.get("kind") != kind:
        raise DatasetError(
            f"{path} is the manifest of a {manifest.get('kind')!r} dataset, not of kind {kind!r}"
        )
    return manifest


def sample_ids(folder: str | os.PathLike[str]) -> list[str]:
    """The ids of the dataset's sample list (``SAMPLE_LISTS``), each checked; ``DatasetError`` without one."""
    root = Path(folder)
    for name in SAMPLE_LISTS:
        if (root / name).is_file():
            return read_ids(root / name, DatasetError)  # ids become paths: no '..', no separators
    raise DatasetError(f"{root} has neither {' nor '.join(SAMPLE_LISTS)}")


def image_bands(manifest: dict) -> tuple[int, ...] | None:
    """The source bands an N-band dataset's images hold, in channel order (``bands`` of the
    manifest, e.g. ``[1, 2, 3, 4]`` for RGB + near-infrared); None for an RGB dataset."""
    bands = manifest.get("bands")
    if bands is None:
        return None
    if not isinstance(bands, list) or not bands or not all(isinstance(b, int) and b >= 1 for b in bands):
        raise DatasetError(f"the manifest's 'bands' must list band numbers from 1, not {bands!r}")
    return tuple(bands)


def image_file(folder: str | os.PathLike[str], tile_id: str, multiband: bool = False) -> Path:
    """The image of tile ``tile_id``: ``images/<id>.png`` (RGB), or ``images/<id>.tif`` in an
    N-band dataset, since PNG holds at most 4 bands and takes a 4th for alpha."""
    return Path(folder) / "images" / f"{tile_id}{'.tif' if multiband else '.png'}"


def write_manifest(folder: str | os.PathLike[str], manifest: dict) -> Path:
    """Write ``manifest`` (with ``schema`` and ``updated`` set) atomically; return its path."""
    manifest = {"schema": SCHEMA, **manifest}
    manifest["updated"] = datetime.now(UTC).replace(microsecond=0).isoformat()
    path = Path(folder) / "manifest.json"
    write_text_atomic(path, json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    return path


def write_ids(path: str | os.PathLike[str], ids: list[str]) -> None:
    """One id per line."""
    write_text_atomic(path, "".join(f"{i}\n" for i in ids))


#: A tile id becomes a file name (images/<id>.png): letters, digits, '.', '-', '_'; no separator, no '..'.
_ID_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,199}")


def check_id(value: str, source: str | os.PathLike[str], error: type[SatsegError] = SatsegError) -> str:
    """``value`` when it is a safe tile id, else ``error`` naming ``source`` (the file it was read from).

    An id such as ``../../x`` would make the tools read, write or delete files
    outside the dataset folder.
    """
    if not _ID_RE.fullmatch(value) or ".." in value:
        raise error(
            f"{source}: the tile id {value[:80]!r} is not a plain file name (only letters, digits, '.', "
            "'-' and '_', no '..', at most 200 characters)"
        )
    return value


def read_ids(path: str | os.PathLike[str], error: type[SatsegError] = SatsegError) -> list[str]:
    """The ids of a sample list (one per line), each checked by ``check_id``."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [check_id(line.strip(), path, error) for line in lines if line.strip()]


def write_skipped(path: str | os.PathLike[str], skipped: list[tuple[str, str]]) -> None:
    """``skipped.csv`` with header ``id,reason``."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["id", "reason"])
    writer.writerows(sorted(skipped))
    write_text_atomic(path, buf.getvalue())
