"""The plugin class QGIS loads: actions, menu and toolbar entries, the Processing provider."""

from __future__ import annotations

from pathlib import Path

from qgis.core import QgsApplication, QgsMapLayerType
from qgis.gui import QgisInterface
from qgis.PyQt.QtGui import QIcon
from qgis.PyQt.QtWidgets import QAction

from .ui.dependencies import add_deps_to_path, plugin_deps_dir

PLUGIN_DIR = Path(__file__).resolve().parent
MENU = "&satseg"
SEGMENT_ACTION_NAME = "satsegSegmentExtent"
LEARN_ACTION_NAME = "satsegLearnArea"
EXPORT_ACTION_NAME = "satsegExportGeoTiff"
DIAGNOSTICS_ACTION_NAME = "satsegDiagnostics"


class SatsegPlugin:
    """Registers "Segment extent", "Train on this area…", the GeoTIFF export, the diagnostics, Processing."""

    def __init__(self, iface: QgisInterface) -> None:
        self.iface = iface
        self.actions: list[QAction] = []
        self.toolbar = None
        self.segment_action: QAction | None = None
        self.learn_action: QAction | None = None
        self.export_action: QAction | None = None
        self.diagnostics_action: QAction | None = None
        self.provider = None
        self.controller = None
        self.learn_controller = None
        self._dialogs: list[object] = []
        # packages installed by the plugin (onnxruntime...) come before any import of them
        add_deps_to_path(plugin_deps_dir())

    def _action(self, text: str, name: str, tip: str, slot: object, icon: QIcon | None = None) -> QAction:
        action = QAction(icon or QIcon(), text, self.iface.mainWindow())
        action.setObjectName(name)
        action.setToolTip(tip)
        action.triggered.connect(slot)
        self.iface.addPluginToMenu(MENU, action)
        self.actions.append(action)
        return action

    def initProcessing(self) -> None:
        """Register the Processing provider (QGIS calls this, qgis_process included)."""
        from .ui.processing_provider import register_provider

        if self.provider is None:
            self.provider = register_provider()

    def initGui(self) -> None:
        """Create the actions; QGIS calls this once the main window exists."""
        from .ui.learn_flow import LearnController
        from .ui.segment_flow import SegmentController

        self.initProcessing()
        self.controller = SegmentController(self.iface)
        self.learn_controller = LearnController(self.iface, self.controller)
        icon = QIcon(str(PLUGIN_DIR / "icon.svg"))
        self.toolbar = self.iface.addToolBar("satseg")
        self.toolbar.setObjectName("satsegToolbar")
        self.segment_action = self._action(
            "Segment extent",
            SEGMENT_ACTION_NAME,
            "Segment the visible map extent into land-use classes",
            self.segment_extent,
            icon,
        )
        self.toolbar.addAction(self.segment_action)
        self.learn_action = self._action(
            "Train on this area…",
            LEARN_ACTION_NAME,
            "Fine-tune a model on OpenStreetMap labels over this area's imagery (runs in a Python with torch)",
            self.learn_area,
            icon,
        )
        self.toolbar.addAction(self.learn_action)
        self.export_action = self._action(
            "Export class raster as GeoTIFF",
            EXPORT_ACTION_NAME,
            "Save the selected satseg class raster or heatmap as a GeoTIFF file",
            self.export_geotiff,
        )
        self.diagnostics_action = self._action(
            "satseg diagnostics",
            DIAGNOSTICS_ACTION_NAME,
            "Versions, onnxruntime execution providers and the chosen model's metadata",
            self.diagnostics,
        )
        if hasattr(self.iface, "addCustomActionForLayerType"):  # the layer's right-click menu
            self.iface.addCustomActionForLayerType(
                self.export_action, "satseg", QgsMapLayerType.RasterLayer, True
            )

    def unload(self) -> None:
        """Remove every action, the toolbar and the provider; QGIS calls this on unload."""
        if self.export_action is not None and hasattr(self.iface, "removeCustomActionForLayerType"):
            self.iface.removeCustomActionForLayerType(self.export_action)
        for action in self.actions:
            self.iface.removePluginMenu(MENU, action)
        self.actions.clear()
        if self.toolbar is not None:
            self.toolbar.deleteLater()
            self.toolbar = None
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)
            self.provider = None
        self.segment_action = self.learn_action = self.export_action = self.diagnostics_action = None

    def segment_extent(self) -> None:
        """Open the "Segment extent" dialog (or say which Python package is missing)."""
        if self.controller is not None:
            self.controller.open_dialog()

    def learn_area(self) -> None:
        """Open the "Train on this area" dialog."""
        if self.learn_controller is not None:
            self.learn_controller.open_dialog()

    def export_geotiff(self) -> None:
        """Export the selected satseg raster layer as a GeoTIFF the user names."""
        from .ui.export import export_active_layer

        export_active_layer(self.iface)

    def diagnostics(self) -> None:
        """Show the diagnostics report for the remembered model."""
        from .ui.diagnostics import show_diagnostics
        from .ui.settings import remembered_model_path

        self._dialogs = [show_diagnostics(self.iface, remembered_model_path())]
