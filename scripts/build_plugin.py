#!/usr/bin/env python3
"""Build the installable QGIS plugin zip: ``dist/satseg_plugin-<version>.zip``.

The zip holds one top-level folder, ``satseg_plugin/``, as QGIS's "Install from
ZIP" expects, with the LICENSE and the default model(s) of ``models/`` inside,
and no caches, tests or build leftovers. A ``metadata.txt`` missing a field the
QGIS plugin repository requires is refused with a message and exit status 2.
"""

from __future__ import annotations

import argparse
import configparser
import fnmatch
import os
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PLUGIN_NAME = "satseg_plugin"
#: Fields plugins.qgis.org refuses a plugin without.
REQUIRED_FIELDS = (
    "name",
    "qgisMinimumVersion",
    "description",
    "about",
    "version",
    "author",
    "email",
    "repository",
)
EXCLUDE = ("__pycache__", "*.pyc", "*.pyo", ".*", "*.part*", "tests", "test_*", "*.orig", "*.rej")


class BuildError(Exception):
    """The plugin cannot be packaged as it is; the message says why."""


def read_metadata(plugin_dir: Path) -> dict[str, str]:
    """Return the ``[general]`` fields of ``plugin_dir/metadata.txt``, checked.

    Raises ``BuildError`` when the file is missing or a required field is
    absent or empty.
    """
    path = plugin_dir / "metadata.txt"
    if not path.is_file():
        raise BuildError(f"{path} is missing")
    parser = configparser.ConfigParser(interpolation=None)
    parser.optionxform = str  # keep qgisMinimumVersion's case
    parser.read(path, encoding="utf-8")
    if not parser.has_section("general"):
        raise BuildError(f"{path} has no [general] section")
    fields = dict(parser["general"])
    missing = [f for f in REQUIRED_FIELDS if not fields.get(f, "").strip()]
    if missing:
        raise BuildError(f"{path} lacks required field(s): {', '.join(missing)}")
    return fields


def _excluded(rel: Path) -> bool:
    return any(fnmatch.fnmatch(part, pat) for part in rel.parts for pat in EXCLUDE)


def plugin_files(plugin_dir: Path) -> list[Path]:
    """Return the files of ``plugin_dir`` that belong in the zip, sorted."""
    out = []
    for dirpath, dirnames, filenames in os.walk(plugin_dir):
        dirnames[:] = sorted(d for d in dirnames if not _excluded(Path(d)))
        for name in sorted(filenames):
            path = Path(dirpath) / name
            if not _excluded(path.relative_to(plugin_dir)):
                out.append(path)
    return out


def build(plugin_dir: Path, out_dir: Path, license_file: Path, models_dir: Path | None) -> Path:
    """Write the plugin zip into ``out_dir`` and return its path."""
    meta = read_metadata(plugin_dir)
    if not license_file.is_file():
        raise BuildError(f"{license_file} is missing: a QGIS plugin must carry its licence")
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{PLUGIN_NAME}-{meta['version']}.zip"
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=out_dir)
    os.close(fd)
    try:
        with zipfile.ZipFile(tmp_name, "w", zipfile.ZIP_DEFLATED) as zf:
            for path in plugin_files(plugin_dir):
                zf.write(path, f"{PLUGIN_NAME}/{path.relative_to(plugin_dir).as_posix()}")
            zf.write(license_file, f"{PLUGIN_NAME}/LICENSE")
            if models_dir is not None and models_dir.is_dir():
                for model in sorted(models_dir.iterdir()):
                    if model.suffix in (".onnx", ".md") and not _excluded(Path(model.name)):
                        zf.write(model, f"{PLUGIN_NAME}/models/{model.name}")
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Build the satseg QGIS plugin zip (install it with Plugins > Manage and Install "
        "Plugins > Install from ZIP).",
    )
    parser.add_argument(
        "--source", type=Path, default=ROOT / PLUGIN_NAME, help="plugin folder (default: %(default)s)"
    )
    parser.add_argument(
        "--out", type=Path, default=ROOT / "dist", help="output folder (default: %(default)s)"
    )
    parser.add_argument(
        "--license", type=Path, default=ROOT / "LICENSE", help="licence file (default: %(default)s)"
    )
    parser.add_argument(
        "--models",
        type=Path,
        default=ROOT / "models",
        help="folder whose .onnx models (and model cards) ship in the zip; '' for none (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    try:
        target = build(args.source, args.out, args.license, args.models if str(args.models) else None)
    except BuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(target)
    return 0


if __name__ == "__main__":
    sys.exit(main())
