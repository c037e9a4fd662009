"""The satseg Processing provider (id ``satseg``): batch mode, Graphical Modeler, qgis_process."""

from __future__ import annotations

from pathlib import Path

from qgis.core import QgsApplication, QgsProcessingProvider
from qgis.PyQt.QtGui import QIcon

from .learn_algorithm import LearnAreaAlgorithm
from .segment_algorithm import SegmentExtentAlgorithm

PROVIDER_ID = "satseg"
ICON = Path(__file__).resolve().parents[1] / "icon.svg"


class SatsegProvider(QgsProcessingProvider):
    """Provides ``satseg:segment_extent`` and ``satseg:learn_area``."""

    def id(self) -> str:
        return PROVIDER_ID

    def name(self) -> str:
        return "satseg"

    def longName(self) -> str:
        return "satseg land-use segmentation"

    def icon(self) -> QIcon:
        return QIcon(str(ICON))

    def loadAlgorithms(self) -> None:
        self.addAlgorithm(SegmentExtentAlgorithm())
        self.addAlgorithm(LearnAreaAlgorithm())


def register_provider() -> SatsegProvider | None:
    """Add the provider to QGIS's Processing registry unless it is there; return the one added.

    Standalone scripts (``processing.run("satseg:segment_extent", ...)`` outside the
    desktop) call this after ``Processing.initialize()``; the plugin calls it from
    ``initProcessing``.
    """
    registry = QgsApplication.processingRegistry()
    if registry.providerById(PROVIDER_ID) is not None:
        return None
    provider = SatsegProvider()
    registry.addProvider(provider)
    _KEEP_ALIVE[:] = [provider]  # a Python provider must outlive this call, or its algorithms vanish
    return provider


_KEEP_ALIVE: list[SatsegProvider] = []
