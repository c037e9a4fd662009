"""The plugin class in real (offscreen) QGIS: actions, menu, toolbar, unload."""

from __future__ import annotations

import os
import subprocess
import sys

from conftest import ROOT
from qgis.PyQt.QtWidgets import QAction


def test_init_gui_adds_segment_extent_and_unload_removes_it(qgis_iface, monkeypatch) -> None:
    import satseg_plugin

    removed: list[tuple[str, QAction]] = []
    # pytest-qgis's stand-in iface lacks removePluginMenu; record the calls instead
    monkeypatch.setattr(qgis_iface, "removePluginMenu", lambda m, a: removed.append((m, a)), raising=False)

    plugin = satseg_plugin.classFactory(qgis_iface)
    plugin.initGui()
    try:
        action = plugin.segment_action
        assert isinstance(action, QAction)
        assert action.text() == "Segment extent"
        assert not action.icon().isNull()
        assert action in plugin.toolbar.actions()
        learn = plugin.learn_action
        assert learn.text() == "Train on this area…" and learn in plugin.toolbar.actions()
    finally:
        plugin.unload()
    assert [a.text() for _, a in removed] == [
        "Segment extent",
        "Train on this area…",
        "Export class raster as GeoTIFF",
        "satseg diagnostics",
    ]
    assert plugin.segment_action is None and plugin.learn_action is None and plugin.toolbar is None


# Runs in a fresh Python where the packages QGIS's own Python may lack do not import.
_WITHOUT_PACKAGES = """
import importlib.abc, sys

MISSING = {"onnxruntime", "requests", "mercantile"}


class Missing(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.partition(".")[0] in MISSING:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, Missing())
import satseg_plugin.plugin, satseg_plugin.ui.learn_flow, satseg_plugin.ui.processing_provider
import satseg_plugin.ui.segment_flow
from satseg_plugin.ui.dependencies import check_requirements

print(sorted(p.requirement.module for p in check_requirements()))
"""


def test_plugin_loads_without_the_packages_the_dependency_check_offers() -> None:
    """What initGui imports must load without onnxruntime, requests or mercantile.

    Else QGIS shows its plugin error box at start-up instead of satseg's own offer to
    pip-install them (tests/test_gui_segment_extent.py checks that offer in the real window).
    """
    proc = subprocess.run(
        [sys.executable, "-c", _WITHOUT_PACKAGES],
        cwd=ROOT,
        env=dict(os.environ, QT_QPA_PLATFORM="offscreen"),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "['mercantile', 'onnxruntime', 'requests']"
