"""The plugin class in real (offscreen) QGIS: actions, menu, toolbar, unload."""

from __future__ import annotations

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
