"""End to end: the plugin zip installed in a fresh profile of the real QGIS desktop."""

from __future__ import annotations

from pathlib import Path

import pytest
from qgis_gui import run_plugin

pytestmark = pytest.mark.gui


def test_zip_installs_loads_and_segment_extent_is_clickable(
    plugin_zip: Path, tmp_path: Path, artifacts_dir: Path
) -> None:
    shot = artifacts_dir / "gui_plugin_loaded.png"
    body = f"""
    from qgis.PyQt.QtWidgets import QAction, QApplication, QToolBar
    result["loaded"] = "satseg_plugin" in qgis.utils.active_plugins
    plugin = qgis.utils.plugins.get("satseg_plugin")
    result["plugin_file"] = sys.modules["satseg_plugin"].__file__ if "satseg_plugin" in sys.modules else None
    win = iface.mainWindow()
    actions = [a for a in win.findChildren(QAction) if a.text() == "Segment extent"]
    result["actions"] = len(actions)
    menu_texts = [a.text() for a in iface.pluginMenu().actions()]
    result["menu"] = menu_texts
    bars = [b for b in win.findChildren(QToolBar) if b.objectName() == "satsegToolbar"]
    result["toolbar_actions"] = [a.text() for b in bars for a in b.actions()]
    plugin.segment_action.trigger()
    QApplication.processEvents()
    dialogs = [w for w in QApplication.topLevelWidgets() if w.objectName() == "satsegSegmentDialog"]
    result["dialog_visible"] = any(d.isVisible() for d in dialogs)
    QApplication.processEvents()
    result["screenshot_saved"] = win.screen().grabWindow(0).save({str(shot)!r})
    """
    # QGIS's Python is the system one: onnxruntime comes from the test venv (without it the
    # click offers to install it; tests/test_gui_segment_extent.py covers that)
    result = run_plugin(body, plugin_zip, tmp_path)
    assert "error" not in result, result["error"]
    assert result["loaded"]
    assert result["plugin_file"].startswith(str(tmp_path))  # the profile's copy, not the checkout
    assert result["actions"] >= 1
    assert "&satseg" in result["menu"]
    assert "Segment extent" in result["toolbar_actions"]
    assert result["dialog_visible"]
    assert result["screenshot_saved"] and shot.stat().st_size > 10_000
