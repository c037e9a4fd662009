"""The "Segment extent" dialog: which model, which imagery, area, run parameters and outputs, where to write.

The run parameters' widgets (zoom, overlap, cleaning) are built from ``inference.params``, the
spec the CLI and Processing derive theirs from; ``segment_flow.make_request`` checks the values
against it.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

from qgis.core import QgsMapLayerProxyModel, QgsProject, QgsRasterLayer
from qgis.gui import QgsFileWidget, QgsMapLayerComboBox
from qgis.PyQt.QtCore import Qt, pyqtSignal
from qgis.PyQt.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ..inference.params import DIALOG, PARAMETERS, RunParameter, offered
from . import settings
from .int8_offer import Int8Choice
from .layers import satseg_kind
from .model_info import describe_model, model_label
from .sources import (
    ImagerySource,
    is_supported_layer,
    parse_bands,
    source_of_layer,
    source_of_url,
    xyz_url_from_source,
)


def spin_box(param: RunParameter, suffix: str = "") -> QSpinBox | QDoubleSpinBox:
    """A spin box over ``param``'s range; its minimum shows ``param.unset`` and stands for None."""
    spin: QSpinBox | QDoubleSpinBox
    if param.kind is int:
        spin, step = QSpinBox(), 1.0
    else:
        spin = QDoubleSpinBox()
        spin.setDecimals(param.decimals)
        step = 10.0**-param.decimals
    lo, hi = param.widget_range()
    if param.unset and param.off is None:  # one step below the range: "the model's"
        lo -= step
    hi = 1e9 if hi is None else hi
    if param.kind is int:
        spin.setRange(int(lo), int(hi))
    else:
        spin.setRange(lo, hi)
    if param.unset:
        spin.setSpecialValueText(param.unset)
    spin.setValue(spin.minimum())
    spin.setSuffix(suffix)
    spin.setToolTip(param.help[:1].upper() + param.help[1:])
    return spin


def spin_value(spin: QSpinBox | QDoubleSpinBox, param: RunParameter) -> float | int | None:
    """The value of a ``spin_box``: None at the minimum when that means ``param.unset``."""
    value = spin.value()
    if param.unset and value == spin.minimum():
        return None
    return int(value) if param.kind is int else float(value)


@dataclass(frozen=True)
class SegmentChoices:
    """What the user chose in the dialog (the extent: the canvas's, or the processing area layer's).

    ``zoom`` and ``overlap_percent`` None: the model's. ``run_values()`` gives the run
    parameters by ``SegmentRequest`` field, for ``params.check_values``.
    """

    model_path: str
    source: ImagerySource
    zoom: int | None  # None: the model's
    out_parent: str
    write_classes: bool
    write_heatmaps: bool
    write_counts: bool
    write_vectors: bool = False
    min_area_m2: float | None = None  # None: keep every region
    simplify_m: float | None = None  # None: the exact pixel outlines
    area_layer_id: str | None = None  # processing area: None for the visible extent
    selected_only: bool = True  # of a vector area layer: its selected polygons, when any
    bands: tuple[int, ...] | None = None  # raster bands for the model's input, in its order
    overlap_percent: float | None = None  # None: the model's

    def run_values(self) -> dict[str, object]:
        """The run parameters chosen (``inference.params``), by ``SegmentRequest`` field."""
        return {p.name: getattr(self, p.name) for p in offered(DIALOG)}


class SegmentDialog(QDialog):
    """Non-modal dialog; emits ``run_requested(dialog)`` (itself) when the user clicks Run.

    The slot (``TaskController._dialog_run``) calls ``choices()``, which can raise
    ``SatsegError`` (no source, say), and reports it in the message bar. The zoom
    applies to tile sources only: it is disabled for a raster or WMS layer.
    """

    run_requested = pyqtSignal(object)

    def __init__(
        self,
        project: QgsProject,
        extent_text: str = "",
        parent: QWidget | None = None,
        model_path: str | None = None,
    ) -> None:
        super().__init__(parent)
        self.setObjectName("satsegSegmentDialog")
        self.setWindowTitle("Segment extent")
        self.setMinimumWidth(560)
        self.project = project

        self.model_widget = QgsFileWidget()
        self.model_widget.setObjectName("satsegModel")
        self.model_widget.setFilter("ONNX models (*.onnx)")
        self.model_widget.setDialogTitle("Choose a segmentation model")
        self.model_info = QLabel()
        self.model_info.setWordWrap(True)
        self.models_combo = QComboBox()  # the bundled models and those "Train on this area" made
        self.models_combo.setObjectName("satsegKnownModels")
        self.models_combo.addItem("(pick a model listed here, or a file above)", "")
        known = settings.known_models()
        for path in known:
            if path.endswith("-int8.onnx") and path[: -len("-int8.onnx")] + ".onnx" in known:
                continue  # an int8 copy is offered beside its model where measured faster (self.int8)
            self.models_combo.addItem(model_label(path), path)
            self.models_combo.setItemData(self.models_combo.count() - 1, path, Qt.ToolTipRole)
        self.models_combo.activated.connect(self._known_model_picked)
        self.int8 = Int8Choice()  # the model's int8 copy, where measured faster on this machine

        self.layer_combo = QgsMapLayerComboBox()
        self.layer_combo.setObjectName("satsegSourceLayer")
        self.layer_combo.setFilters(QgsMapLayerProxyModel.RasterLayer)
        self.layer_combo.setAllowEmptyLayer(True)
        with contextlib.suppress(TypeError):  # QGIS >= 3.24 can label the empty entry
            self.layer_combo.setAllowEmptyLayer(True, "(the tile URL below)")  # type: ignore[call-arg]
        self.layer_combo.setExceptedLayerList(
            [lyr for lyr in project.mapLayers().values() if not is_supported_layer(lyr) or satseg_kind(lyr)]
        )
        self.url_edit = QLineEdit()
        self.url_edit.setObjectName("satsegSourceUrl")
        self.url_edit.setPlaceholderText("https://server/{z}/{x}/{y}.png  (used when no layer is chosen)")

        self.bands_edit = QLineEdit()
        self.bands_edit.setObjectName("satsegBands")
        self.bands_edit.setPlaceholderText("the model's, else the raster's first bands (e.g. 1,2,3,4)")
        self.bands_edit.setToolTip(
            "Raster bands (numbered from 1) for the model's input, in the model's order; RGB + "
            "near-infrared is 1,2,3,4. Only for raster layers: XYZ tiles are RGB"
        )

        self.zoom_spin = spin_box(PARAMETERS["zoom"])
        self.zoom_spin.setObjectName("satsegZoom")
        self.overlap_spin = spin_box(PARAMETERS["overlap_percent"], " %")
        self.overlap_spin.setObjectName("satsegOverlap")

        self.out_widget = QgsFileWidget()
        self.out_widget.setObjectName("satsegOutDir")
        self.out_widget.setStorageMode(QgsFileWidget.GetDirectory)
        self.out_widget.setDialogTitle("Folder the runs are written under")

        classes, heatmaps, counts = settings.remembered_outputs()
        self.classes_check = QCheckBox("class raster")
        self.classes_check.setChecked(classes)
        self.heatmaps_check = QCheckBox("one probability heatmap per class")
        self.heatmaps_check.setChecked(heatmaps)
        self.counts_check = QCheckBox("pixel-count table")
        self.counts_check.setChecked(counts)
        self.vectors_check = QCheckBox("polygons per class")
        self.vectors_check.setObjectName("satsegVectors")
        self.vectors_check.setToolTip("classes.gpkg: one polygon per region, with its class and area in m²")
        outputs = QHBoxLayout()
        for check in (self.classes_check, self.vectors_check, self.heatmaps_check, self.counts_check):
            outputs.addWidget(check)

        self.min_area_spin = spin_box(PARAMETERS["min_area_m2"], " m²")
        self.min_area_spin.setObjectName("satsegMinArea")
        self.simplify_spin = spin_box(PARAMETERS["simplify_m"], " m")
        self.simplify_spin.setObjectName("satsegSimplify")
        self.simplify_spin.setEnabled(False)
        self.vectors_check.toggled.connect(self.simplify_spin.setEnabled)
        clean = QHBoxLayout()
        clean.addWidget(QLabel("minimum region"))
        clean.addWidget(self.min_area_spin)
        clean.addWidget(QLabel("simplify polygons"))
        clean.addWidget(self.simplify_spin)

        self.extent_label = QLabel(extent_text)
        self.extent_label.setWordWrap(True)
        self.area_combo = QgsMapLayerComboBox()
        self.area_combo.setObjectName("satsegArea")
        self.area_combo.setFilters(QgsMapLayerProxyModel.PolygonLayer | QgsMapLayerProxyModel.RasterLayer)
        self.area_combo.setAllowEmptyLayer(True)
        with contextlib.suppress(TypeError):  # QGIS >= 3.24 can label the empty entry
            self.area_combo.setAllowEmptyLayer(True, "(the visible extent)")  # type: ignore[call-arg]
        self.area_combo.setExceptedLayerList(
            [lyr for lyr in project.mapLayers().values() if satseg_kind(lyr)]
        )
        self.area_combo.setLayer(None)
        self.area_combo.setToolTip(
            "Segment the visible extent (empty), the whole extent of a raster layer, or only the "
            "polygons of a vector layer: windows touching none are not run, pixels outside are nodata"
        )
        self.selected_check = QCheckBox("selected polygons only (when any are selected)")
        self.selected_check.setObjectName("satsegSelectedOnly")
        self.selected_check.setChecked(True)
        area_row = QHBoxLayout()
        area_row.addWidget(self.area_combo, 1)
        area_row.addWidget(self.selected_check)

        form = QFormLayout()
        form.addRow("Model", self.model_widget)
        form.addRow("", self.models_combo)
        form.addRow("", self.model_info)
        form.addRow("", self.int8.check)
        form.addRow("Imagery layer", self.layer_combo)
        form.addRow("or tile URL", self.url_edit)
        form.addRow("Bands", self.bands_edit)
        form.addRow("Zoom", self.zoom_spin)
        form.addRow("Window overlap", self.overlap_spin)
        form.addRow("Output folder", self.out_widget)
        form.addRow("Outputs", outputs)
        form.addRow("Clean classes", clean)
        form.addRow("Extent", self.extent_label)
        form.addRow("Processing area", area_row)

        self.buttons = QDialogButtonBox(QDialogButtonBox.Ok | QDialogButtonBox.Cancel)
        self.buttons.button(QDialogButtonBox.Ok).setText("Run")
        self.buttons.accepted.connect(self.accept)
        self.buttons.rejected.connect(self.reject)

        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.buttons)

        self.model_widget.fileChanged.connect(self._model_changed)
        self.layer_combo.layerChanged.connect(self._layer_changed)
        self.model_widget.setFilePath(model_path or settings.remembered_model_path())
        self.out_widget.setFilePath(settings.remembered_out_dir())
        self._model_changed(self.model_widget.filePath())
        self._select_default_layer()
        self._restore_cleaning(settings.remembered_cleaning())

    def _restore_cleaning(self, choice: settings.CleaningChoice) -> None:
        """Show last time's polygons, cleaning and processing area; an area layer no longer in the
        project leaves the visible extent."""
        self.vectors_check.setChecked(choice.vectors)
        for spin, value in (
            (self.min_area_spin, choice.min_area_m2),
            (self.simplify_spin, choice.simplify_m),
        ):
            spin.setValue(spin.minimum() if value is None else value)
        layer = self.project.mapLayer(choice.area_layer_id) if choice.area_layer_id else None
        if layer is not None and not satseg_kind(layer):
            self.area_combo.setLayer(layer)
        self.selected_check.setChecked(choice.selected_only)

    def _cleaning_choice(self) -> settings.CleaningChoice:
        """What ``_restore_cleaning`` shows again next time."""
        area = self.area_combo.currentLayer()
        return settings.CleaningChoice(
            vectors=self.vectors_check.isChecked(),
            min_area_m2=spin_value(self.min_area_spin, PARAMETERS["min_area_m2"]),
            simplify_m=spin_value(self.simplify_spin, PARAMETERS["simplify_m"]),
            area_layer_id=area.id() if area is not None else None,
            selected_only=self.selected_check.isChecked(),
        )

    def _select_default_layer(self) -> None:
        """Pick the first XYZ layer of the project, else the first raster file layer."""
        layers = [
            lyr
            for lyr in self.project.layerTreeRoot().layerOrder() or self.project.mapLayers().values()
            if is_supported_layer(lyr) and not satseg_kind(lyr)
        ]
        xyz = [lyr for lyr in layers if isinstance(lyr, QgsRasterLayer) and xyz_url_from_source(lyr.source())]
        chosen = (xyz or layers or [None])[0]
        self.layer_combo.setLayer(chosen)
        self._layer_changed(chosen)

    def _layer_changed(self, layer: object) -> None:
        self.url_edit.setEnabled(layer is None)
        self.bands_edit.setEnabled(isinstance(layer, QgsRasterLayer) and layer.providerType() == "gdal")
        # A zoom is of tiles: a raster (file or WMS) is read at the model's resolution, else its own.
        tiles = layer is None or (
            isinstance(layer, QgsRasterLayer) and bool(xyz_url_from_source(layer.source()))
        )
        self.zoom_spin.setEnabled(tiles)

    def _known_model_picked(self, index: int) -> None:
        path = self.models_combo.itemData(index)
        if path:
            self.model_widget.setFilePath(path)

    def _model_changed(self, path: str) -> None:
        index = self.models_combo.findData(str(Path(path).resolve()) if path else "")
        self.models_combo.setCurrentIndex(max(0, index))
        summary, zoom = describe_model(path)
        self.model_info.setText(summary)
        self.bands_edit.setText(settings.remembered_bands(path))  # a mapping belongs to its model
        unset = PARAMETERS["zoom"].unset
        self.zoom_spin.setSpecialValueText(f"{unset} ({zoom})" if zoom is not None else f"{unset} zoom")
        self.int8.model_changed(path)

    def choices(self) -> SegmentChoices:
        """Return the choices; ``SatsegError`` when the source is missing or unusable."""
        layer = self.layer_combo.currentLayer()
        source = source_of_layer(layer) if layer is not None else source_of_url(self.url_edit.text())
        return SegmentChoices(
            model_path=self.int8.model_for_run(self.model_widget.filePath().strip()),
            source=source,
            zoom=spin_value(self.zoom_spin, PARAMETERS["zoom"]) if self.zoom_spin.isEnabled() else None,
            out_parent=self.out_widget.filePath().strip() or settings.default_out_dir(),
            write_classes=self.classes_check.isChecked(),
            write_heatmaps=self.heatmaps_check.isChecked(),
            write_counts=self.counts_check.isChecked(),
            write_vectors=self.vectors_check.isChecked(),
            min_area_m2=spin_value(self.min_area_spin, PARAMETERS["min_area_m2"]),
            simplify_m=spin_value(self.simplify_spin, PARAMETERS["simplify_m"])
            if self.vectors_check.isChecked()
            else None,
            area_layer_id=area.id() if (area := self.area_combo.currentLayer()) is not None else None,
            selected_only=self.selected_check.isChecked(),
            bands=parse_bands(self.bands_edit.text()) if self.bands_edit.isEnabled() else None,
            overlap_percent=spin_value(self.overlap_spin, PARAMETERS["overlap_percent"]),
        )

    def accept(self) -> None:
        """Remember the model, folder, outputs, cleaning, area and bands, close, and ask for the run."""
        model = self.model_widget.filePath().strip()
        settings.remember_model_path(model)
        settings.remember_out_dir(self.out_widget.filePath().strip())
        settings.remember_outputs(
            self.classes_check.isChecked(), self.heatmaps_check.isChecked(), self.counts_check.isChecked()
        )
        settings.remember_cleaning(self._cleaning_choice())
        settings.remember_bands(model, self.bands_edit.text())
        super().accept()
        self.run_requested.emit(self)
