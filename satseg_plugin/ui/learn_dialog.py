"""The "Train on this area" dialog: extent, imagery, OSM data, classes, base model, budget, folders."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from qgis.core import QgsMapLayerProxyModel, QgsProject, QgsRasterLayer, QgsVectorLayer, QgsWkbTypes
from qgis.gui import QgsFileWidget, QgsMapLayerComboBox
from qgis.PyQt.QtCore import pyqtSignal
from qgis.PyQt.QtWidgets import (
    QButtonGroup,
    QCheckBox,
    QDialog,
    QDialogButtonBox,
    QDoubleSpinBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QRadioButton,
    QVBoxLayout,
    QWidget,
)

from ..inference.errors import SatsegError
from . import learn_inputs, learn_runtime
from .layers import satseg_kind
from .sources import ImagerySource, is_supported_layer, source_of_layer, source_of_url

MAX_MINUTES = 24 * 60.0


@dataclass(frozen=True)
class LearnChoices:
    """What the user chose; the visible extent itself comes from the canvas when ``polygons`` is None."""

    polygons: QgsVectorLayer | None
    selected_only: bool
    source: ImagerySource
    source_layer: QgsRasterLayer | None
    osm_file: str | None
    osm_layer: QgsVectorLayer | None
    classes_path: str
    base: str | None
    minutes: float
    out_parent: str
    runtime: learn_runtime.TrainingRuntime


class LearnDialog(QDialog):
    """Non-modal dialog; emits ``run_requested(dialog)`` when the user clicks Train."""

    run_requested = pyqtSignal(object)

    def __init__(self, project: QgsProject, extent_text: str = "", parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("satsegLearnDialog")
        self.setWindowTitle("Train on this area")
        self.setMinimumWidth(620)
        self.project = project
        runtime = learn_runtime.configured_runtime()

        # where
        self.extent_canvas = QRadioButton(f"the visible map extent ({extent_text})" if extent_text else "")
        self.extent_canvas.setObjectName("satsegLearnExtentCanvas")
        self.extent_polygons = QRadioButton("the polygons of")
        self.extent_polygons.setObjectName("satsegLearnExtentPolygons")
        group = QButtonGroup(self)
        group.addButton(self.extent_canvas)
        group.addButton(self.extent_polygons)
        self.polygon_combo = QgsMapLayerComboBox()
        self.polygon_combo.setObjectName("satsegLearnPolygons")
        self.polygon_combo.setFilters(QgsMapLayerProxyModel.PolygonLayer)
        self.selected_check = QCheckBox("selected only")
        self.selected_check.setObjectName("satsegLearnSelectedOnly")
        polygons = QHBoxLayout()
        polygons.addWidget(self.extent_polygons)
        polygons.addWidget(self.polygon_combo, 1)
        polygons.addWidget(self.selected_check)

        # imagery
        self.layer_combo = QgsMapLayerComboBox()
        self.layer_combo.setObjectName("satsegLearnImagery")
        self.layer_combo.setFilters(QgsMapLayerProxyModel.RasterLayer)
        self.layer_combo.setAllowEmptyLayer(True)
        self.layer_combo.setExceptedLayerList(
            [lyr for lyr in project.mapLayers().values() if not is_supported_layer(lyr) or satseg_kind(lyr)]
        )
        self.url_edit = QLineEdit()
        self.url_edit.setObjectName("satsegLearnUrl")
        self.url_edit.setPlaceholderText("https://server/{z}/{x}/{y}.png  (used when no layer is chosen)")

        # labels
        self.osm_file_radio = QRadioButton("file")
        self.osm_layer_radio = QRadioButton("layer")
        osm_group = QButtonGroup(self)
        osm_group.addButton(self.osm_file_radio)
        osm_group.addButton(self.osm_layer_radio)
        self.osm_file = QgsFileWidget()
        self.osm_file.setObjectName("satsegLearnOsmFile")
        self.osm_file.setFilter(learn_inputs.OSM_FILE_FILTER)
        self.osm_file.setDialogTitle("OpenStreetMap data (.osm.pbf, .geojson or OSM QA .mbtiles)")
        self.osm_layer = QgsMapLayerComboBox()
        self.osm_layer.setObjectName("satsegLearnOsmLayer")
        self.osm_layer.setFilters(QgsMapLayerProxyModel.VectorLayer)
        osm_file_row = QHBoxLayout()
        osm_file_row.addWidget(self.osm_file_radio)
        osm_file_row.addWidget(self.osm_file, 1)
        osm_layer_row = QHBoxLayout()
        osm_layer_row.addWidget(self.osm_layer_radio)
        osm_layer_row.addWidget(self.osm_layer, 1)

        self.classes_widget = QgsFileWidget()
        self.classes_widget.setObjectName("satsegLearnClasses")
        self.classes_widget.setFilter("Class configs (*.json)")
        self.base_widget = QgsFileWidget()
        self.base_widget.setObjectName("satsegLearnBase")
        self.base_widget.setFilter("Torch checkpoints (*.pt)")
        with contextlib.suppress(AttributeError):
            self.base_widget.lineEdit().setPlaceholderText("empty: train from scratch")
        self.minutes_spin = QDoubleSpinBox()
        self.minutes_spin.setObjectName("satsegLearnMinutes")
        self.minutes_spin.setRange(0.1, MAX_MINUTES)
        self.minutes_spin.setDecimals(1)
        self.minutes_spin.setSuffix(" min")
        self.minutes_spin.setToolTip("Training time; validation can stop it earlier")
        self.out_widget = QgsFileWidget()
        self.out_widget.setObjectName("satsegLearnOutDir")
        self.out_widget.setStorageMode(QgsFileWidget.GetDirectory)

        # the training Python (plugin settings)
        self.checkout_widget = QgsFileWidget()
        self.checkout_widget.setObjectName("satsegLearnCheckout")
        self.checkout_widget.setStorageMode(QgsFileWidget.GetDirectory)
        self.checkout_widget.setToolTip(
            "A clone of the satseg repository: its training/ folder does the work"
        )
        self.python_widget = QgsFileWidget()
        self.python_widget.setObjectName("satsegLearnPython")
        self.python_widget.setToolTip("A Python with torch, e.g. the checkout's .venv/bin/python")

        form = QFormLayout()
        form.addRow("Area", self.extent_canvas)
        form.addRow("", polygons)
        form.addRow("Imagery layer", self.layer_combo)
        form.addRow("or tile URL", self.url_edit)
        form.addRow("OSM data", osm_file_row)
        form.addRow("", osm_layer_row)
        form.addRow("Class config", self.classes_widget)
        form.addRow("Base model", self.base_widget)
        form.addRow("Time budget", self.minutes_spin)
        form.addRow("Output folder", self.out_widget)
        runtime_box = QGroupBox("Training Python (QGIS's own never loads torch)")
        runtime_form = QFormLayout(runtime_box)
        runtime_form.addRow("satseg checkout", self.checkout_widget)
        runtime_form.addRow("its Python", self.python_widget)

        self.buttons = QDialogButtonBox(QDialogButtonBox.Ok | QDialogButtonBox.Cancel)
        self.buttons.button(QDialogButtonBox.Ok).setText("Train")
        self.buttons.accepted.connect(self.accept)
        self.buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(runtime_box)
        layout.addWidget(QLabel("The new model joins the Segment extent list when training is done."))
        layout.addWidget(self.buttons)

        # Bound methods (PyQt holds them weakly), not lambdas holding the dialog: a dropped dialog
        # must not be a reference cycle holding the project (see SegmentTask.finished).
        self.layer_combo.layerChanged.connect(self._layer_changed)
        self.polygon_combo.layerChanged.connect(self._polygons_changed)
        self.osm_file.fileChanged.connect(self._osm_file_changed)
        self.osm_layer.layerChanged.connect(self._osm_layer_changed)

        self.checkout_widget.fileChanged.connect(self._checkout_changed)
        self.checkout_widget.setFilePath(runtime.checkout)
        self.python_widget.setFilePath(runtime.python)
        self.classes_widget.setFilePath(learn_inputs.default_classes(runtime.checkout))
        self.base_widget.setFilePath(learn_inputs.default_base(runtime.checkout))
        self.minutes_spin.setValue(learn_inputs.remembered_minutes())
        self.out_widget.setFilePath(learn_inputs.remembered_out_dir())
        self._select_defaults()

    def _checkout_changed(self, checkout: str) -> None:
        """Fill what is still empty from the newly chosen checkout."""
        checkout = checkout.strip()
        if not self.python_widget.filePath().strip():
            self.python_widget.setFilePath(learn_runtime.default_python(checkout))
        if not self.classes_widget.filePath().strip():
            self.classes_widget.setFilePath(learn_inputs.default_classes(checkout))
        if not self.base_widget.filePath().strip():
            self.base_widget.setFilePath(learn_inputs.default_base(checkout))

    def _select_defaults(self) -> None:
        """The visible extent, the first XYZ layer, the first vector layer as OSM data (else a file)."""
        self.extent_canvas.setChecked(True)
        order = self.project.layerTreeRoot().layerOrder() or list(self.project.mapLayers().values())
        rasters = [lyr for lyr in order if is_supported_layer(lyr) and not satseg_kind(lyr)]
        xyz = [lyr for lyr in rasters if isinstance(lyr, QgsRasterLayer) and lyr.providerType() == "wms"]
        imagery = (xyz or rasters or [None])[0]
        self.layer_combo.setLayer(imagery)
        self.url_edit.setEnabled(imagery is None)
        vectors = [lyr for lyr in order if isinstance(lyr, QgsVectorLayer) and not satseg_kind(lyr)]
        self.osm_layer.setLayer(vectors[0] if vectors else None)
        (self.osm_layer_radio if vectors else self.osm_file_radio).setChecked(True)
        self._polygons_changed(self.polygon_combo.currentLayer())

    def _layer_changed(self, layer: object) -> None:
        self.url_edit.setEnabled(layer is None)

    def _osm_file_changed(self, _path: str) -> None:
        self.osm_file_radio.setChecked(True)

    def _osm_layer_changed(self, layer: object) -> None:
        if layer is not None:
            self.osm_layer_radio.setChecked(True)

    def _polygons_changed(self, layer: object) -> None:
        has = isinstance(layer, QgsVectorLayer) and layer.geometryType() == QgsWkbTypes.PolygonGeometry
        self.extent_polygons.setEnabled(has)
        self.selected_check.setChecked(has and layer.selectedFeatureCount() > 0)  # type: ignore[union-attr]

    def choices(self) -> LearnChoices:
        """Return the choices; ``SatsegError`` for a missing source or OSM data."""
        layer = self.layer_combo.currentLayer()
        source = source_of_layer(layer) if layer is not None else source_of_url(self.url_edit.text())
        polygons = self.polygon_combo.currentLayer() if self.extent_polygons.isChecked() else None
        if self.extent_polygons.isChecked() and polygons is None:
            raise SatsegError("choose the polygon layer whose extent to train on")
        osm_file = self.osm_file.filePath().strip() if self.osm_file_radio.isChecked() else None
        osm_layer = self.osm_layer.currentLayer() if self.osm_layer_radio.isChecked() else None
        if not osm_file and osm_layer is None:
            raise SatsegError("choose the OpenStreetMap data: a .osm.pbf/.geojson/.mbtiles file or a layer")
        checkout = self.checkout_widget.filePath().strip()
        python = self.python_widget.filePath().strip() or learn_runtime.default_python(checkout)
        return LearnChoices(
            polygons=polygons,  # type: ignore[arg-type]
            selected_only=self.selected_check.isChecked(),
            source=source,
            source_layer=layer,  # type: ignore[arg-type]
            osm_file=osm_file or None,
            osm_layer=osm_layer,  # type: ignore[arg-type]
            classes_path=self.classes_widget.filePath().strip(),
            base=self.base_widget.filePath().strip() or None,
            minutes=float(self.minutes_spin.value()),
            out_parent=self.out_widget.filePath().strip() or learn_inputs.default_out_dir(),
            runtime=learn_runtime.TrainingRuntime(checkout, python),
        )

    def accept(self) -> None:
        """Remember the settings, close, and ask for the run."""
        learn_inputs.remember(
            self.minutes_spin.value(),
            self.out_widget.filePath().strip(),
            self.classes_widget.filePath().strip(),
        )
        learn_runtime.remember_runtime(
            self.checkout_widget.filePath().strip(), self.python_widget.filePath().strip()
        )
        super().accept()
        self.run_requested.emit(self)
