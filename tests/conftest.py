"""Shared fixtures: paths to the repo, ../shared data and test artefacts.

QGIS runs offscreen in the tests (pytest-qgis makes the QgsApplication); the
GUI tests start the real ``qgis`` binary under Xvfb (tests/qgis_gui.py).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # without a display Qt aborts

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
ARTIFACTS = ROOT / "artifacts"

for p in (str(ROOT), str(ROOT / "tests")):
    if p not in sys.path:
        sys.path.insert(0, p)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real data of ../shared/data; the suite needs it, so its absence fails loudly."""
    if not SHARED.is_dir():
        pytest.fail(f"{SHARED} is missing: clone the project beside its shared/ folder")
    return SHARED


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    """Where tests leave files for people to look at (screenshots, previews)."""
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS
