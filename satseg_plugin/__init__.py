"""satseg QGIS plugin: segment the visible map extent into land-use classes."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from qgis.gui import QgisInterface

    from .plugin import SatsegPlugin


def classFactory(iface: QgisInterface) -> SatsegPlugin:  # noqa: N802 - the name QGIS looks up
    """Return the plugin instance QGIS asks for when it loads the plugin."""
    from .plugin import SatsegPlugin

    return SatsegPlugin(iface)
