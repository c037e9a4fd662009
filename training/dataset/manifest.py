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
IGNORE_INDEX = 255


def read_manifest(folder: str | os.PathLike[str]) -> dict:
    """The manifest of the dataset in ``folder``; ``SatsegError`` when it has none."""
    path = Path(folder) / "manifest.json"
    if not path.is_file():
        raise SatsegError(
            f"{folder} has no manifest.json: build the labels first (give --osm, --bbox and --classes)"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise SatsegError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict) or data.get("kind") != "osm":
        raise SatsegError(f"{path} is not the manifest of an OpenStreetMap dataset (kind 'osm')")
    return data


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
