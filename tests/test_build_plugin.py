"""scripts/build_plugin.py: the zip QGIS's "Install from ZIP" takes."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from conftest import ROOT

SCRIPT = ROOT / "scripts" / "build_plugin.py"


def _build(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, check=False)


def test_zip_has_one_top_folder_license_and_no_caches(tmp_path: Path) -> None:
    # a cache folder in the source must not reach the zip
    (ROOT / "satseg_plugin" / "__pycache__").mkdir(exist_ok=True)
    proc = _build("--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    zips = list(tmp_path.glob("satseg_plugin-*.zip"))
    assert len(zips) == 1
    version = zips[0].stem.split("-", 1)[1]
    names = zipfile.ZipFile(zips[0]).namelist()
    assert {n.split("/")[0] for n in names} == {"satseg_plugin"}
    for required in ("__init__.py", "metadata.txt", "plugin.py", "LICENSE", "icon.svg"):
        assert f"satseg_plugin/{required}" in names
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc") or "/tests/" in n]
    meta = zipfile.ZipFile(zips[0]).read("satseg_plugin/metadata.txt").decode()
    assert f"version={version}" in meta
    assert not list(tmp_path.glob("*.part"))


def test_refuses_metadata_without_required_field(tmp_path: Path) -> None:
    src = tmp_path / "satseg_plugin"
    shutil.copytree(ROOT / "satseg_plugin", src, ignore=shutil.ignore_patterns("__pycache__"))
    meta = src / "metadata.txt"
    meta.write_text(
        "".join(line for line in meta.read_text().splitlines(True) if not line.startswith("email="))
    )
    proc = _build("--source", str(src), "--out", str(tmp_path / "dist"))
    assert proc.returncode == 2
    assert "email" in proc.stderr and "required" in proc.stderr
    assert not (tmp_path / "dist").exists() or not list((tmp_path / "dist").iterdir())


def test_metadata_has_repository_fields() -> None:
    sys.path.insert(0, str(ROOT / "scripts"))
    from build_plugin import read_metadata

    fields = read_metadata(ROOT / "satseg_plugin")
    assert fields["qgisMinimumVersion"] == "3.22"
    for key in ("tracker", "homepage", "tags", "category", "icon", "hasProcessingProvider"):
        assert fields.get(key), key
    assert (ROOT / "satseg_plugin" / fields["icon"]).is_file()
