"""The plugin class QGIS loads: actions, menu and toolbar entries."""

from __future__ import annotations

from pathlib import Path

from qgis.gui import QgisInterface
from qgis.PyQt.QtGui import QIcon
from qgis.PyQt.QtWidgets import QAction, QDialog, QLabel, QVBoxLayout

PLUGIN_DIR = Path(__file__).resolve().parent
MENU = "&satseg"
SEGMENT_ACTION_NAME = "satsegSegmentExtent"


class SatsegPlugin:
    """Registers "Segment extent" in the Plugins menu and on a toolbar."""

    def __init__(self, iface: QgisInterface) -> None:
        self.iface = iface
        self.actions: list[QAction] = []
        self.toolbar = None
        self.segment_action: QAction | None = None

    def initGui(self) -> None:
        """Create the actions; QGIS calls this once the main window exists."""
        icon = QIcon(str(PLUGIN_DIR / "icon.svg"))
        self.toolbar = self.iface.addToolBar("satseg")
        self.toolbar.setObjectName("satsegToolbar")
        action = QAction(icon, "Segment extent", self.iface.mainWindow())
        action.setObjectName(SEGMENT_ACTION_NAME)
        action.setToolTip("Segment the visible map extent into land-use classes")
        action.triggered.connect(self.segment_extent)
        self.iface.addPluginToMenu(MENU, action)
        self.toolbar.addAction(action)
        self.actions.append(action)
        self.segment_action = action

    def unload(self) -> None:
        """Remove every action and the toolbar; QGIS calls this on unload."""
        for action in self.actions:
            self.iface.removePluginMenu(MENU, action)
        self.actions.clear()
        if self.toolbar is not None:
            self.toolbar.deleteLater()
            self.toolbar = None
        self.segment_action = None

    def segment_extent(self) -> None:
        """Open the "Segment extent" dialog."""
        dialog = QDialog(self.iface.mainWindow())
        dialog.setObjectName("satsegSegmentDialog")
        dialog.setWindowTitle("Segment extent")
        layout = QVBoxLayout(dialog)
        layout.addWidget(QLabel("Segment extent"))
        dialog.show()
        self._dialog = dialog
