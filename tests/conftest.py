"""Shared fixtures: paths to the repo, ../shared data and test artefacts; served tiles, test models.

QGIS runs offscreen in the tests (pytest-qgis makes the QgsApplication); the
GUI tests start the real ``qgis`` binary under Xvfb (tests/qgis_gui.py).
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tileserver import TileServer

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # without a display Qt aborts
# The dialog measures int8 against fp32 in the background on a cache miss: not in every test that
# opens it (sessions and CPU behind other tests' backs); test_int8_offer turns it on where it is the subject.
os.environ.setdefault("SATSEG_INT8_MEASURE", "0")

# A job started in the background (`make test &`, nohup) ignores SIGINT, and so would every process the
# tests start, so the Ctrl-C tests would see their real SIGINT ignored. A Python handler here is reset
# to the default on exec, so each child takes Ctrl-C as it would from a terminal.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

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


# --- served imagery and test models, shared by the inference and the QGIS-side tests ------------
# (imported inside the fixtures: conftest stays light for the tests that need none of them)


@pytest.fixture(scope="module")
def pattern_server() -> Iterator[TileServer]:
    """The pattern tiles of ``inference_helpers.pattern_tile`` on 127.0.0.1, one server a test module."""
    from inference_helpers import pattern_provider
    from tileserver import TileServer

    with TileServer(pattern_provider) as server:
        yield server


@pytest.fixture(scope="session")
def area2_server(shared_data: Path) -> Iterator[TileServer]:
    """OpenAerialMap area2 (Kampala; zoom-20 tiles ``ui_helpers.AREA2_Z20``) on 127.0.0.1."""
    from tileserver import TileServer, oam_provider

    with TileServer(oam_provider(shared_data / "oam-osm-buildings" / "area2")) as server:
        yield server


@pytest.fixture(scope="session")
def color_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``ui_helpers.make_color_model``: its class per pixel is the dominant normalised RGB channel."""
    from ui_helpers import make_color_model

    return make_color_model(tmp_path_factory.mktemp("models") / "colors.onnx")


@pytest.fixture(scope="session")
def plugin_zip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The plugin zip exactly as scripts/build_plugin.py makes it for users (the GUI tests install it)."""
    from qgis_gui import build_plugin_zip

    return build_plugin_zip(tmp_path_factory.mktemp("dist"))


@pytest.fixture()
def clean_settings(qgis_app: object) -> Iterator[None]:
    """Every choice the Segment extent dialog remembers (model, folder, outputs, cleaning, area,
    bands) cleared before and after."""
    from qgis.core import QgsSettings

    from satseg_plugin.ui import settings

    keys = settings.REMEMBERED_KEYS
    for key in keys:
        QgsSettings().remove(key)
    yield
    for key in keys:
        QgsSettings().remove(key)
