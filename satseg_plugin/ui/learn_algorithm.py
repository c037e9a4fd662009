"""The Processing algorithm ``satseg:learn_area``: "Train on this area" without widgets."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from qgis.core import (
    QgsCoordinateReferenceSystem,
    QgsFeatureRequest,
    QgsProcessing,
    QgsProcessingAlgorithm,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingOutputFile,
    QgsProcessingParameterExtent,
    QgsProcessingParameterFeatureSource,
    QgsProcessingParameterFile,
    QgsProcessingParameterFolderDestination,
    QgsProcessingParameterNumber,
    QgsRectangle,
)

from ..inference.errors import SatsegError
from . import learn_inputs, learn_runtime, settings
from .algorithm_parts import add_imagery_parameters, given, imagery_source, processing_errors
from .learn_process import LearnCrashError, LearnProgress, LearnRequest, run_learn

EXTENT = "EXTENT"
POLYGONS = "POLYGONS"
OSM_FILE = "OSM_FILE"
OSM_LAYER = "OSM_LAYER"
CLASSES = "CLASSES"
BASE = "BASE"
MINUTES = "MINUTES"
CHECKOUT = "CHECKOUT"
PYTHON = "PYTHON"
OUTPUT_FOLDER = "OUTPUT_FOLDER"
OUT_MODEL = "MODEL"
OUT_REPORT = "REPORT"
OUT_CARD = "CARD"


class LearnAreaAlgorithm(QgsProcessingAlgorithm):
    """Fine-tune a model on OSM labels over an extent of imagery, in the training Python."""

    def name(self) -> str:
        return "learn_area"

    def displayName(self) -> str:
        return "Train on this area"

    def shortHelpString(self) -> str:
        return (
            "Builds a training set from OpenStreetMap labels (a .osm.pbf, .geojson or OSM QA .mbtiles "
            "file, or a vector layer) over the imagery of an extent (the extent given, else the bounding "
            "box of the polygons given), fine-tunes the base model (a .pt checkpoint; empty: from "
            "scratch) for the time budget, exports it as ONNX and scores it against the base model on a "
            "held-out block. Runs python -m training.learn_area in a separate Python that has torch "
            "(the satseg checkout's .venv unless set here or in the plugin). Writes the model, report.csv "
            "(IoU per class before and after) and a model card into the output folder; the model joins "
            "the Segment extent list."
        )

    def createInstance(self) -> LearnAreaAlgorithm:
        return LearnAreaAlgorithm()

    def initAlgorithm(self, config: dict[str, Any] | None = None) -> None:
        runtime = learn_runtime.configured_runtime()
        self.addParameter(
            QgsProcessingParameterExtent(EXTENT, "Extent (empty: the polygons')", optional=True)
        )
        self.addParameter(
            QgsProcessingParameterFeatureSource(
                POLYGONS,
                "or the bounding box of these polygons",
                [QgsProcessing.TypeVectorPolygon],
                optional=True,
            )
        )
        add_imagery_parameters(self)
        self.addParameter(
            QgsProcessingParameterFile(
                OSM_FILE, "OpenStreetMap file (.osm.pbf, .geojson, .mbtiles)", optional=True
            )
        )
        self.addParameter(
            QgsProcessingParameterFeatureSource(
                OSM_LAYER, "or OpenStreetMap data from a vector layer", optional=True
            )
        )
        self.addParameter(
            QgsProcessingParameterFile(
                CLASSES,
                "Class config (JSON; empty: the checkout's training/classes/buildings.json)",
                extension="json",
                optional=True,
            )
        )
        self.addParameter(
            QgsProcessingParameterFile(
                BASE,
                "Base model (.pt; empty: train from scratch)",
                extension="pt",
                defaultValue=learn_inputs.default_base(runtime.checkout) or None,
                optional=True,
            )
        )
        minutes = QgsProcessingParameterNumber(
            MINUTES,
            "Time budget (minutes)",
            QgsProcessingParameterNumber.Double,
            defaultValue=learn_inputs.DEFAULT_MINUTES,
        )
        minutes.setMinimum(0.01)
        self.addParameter(minutes)
        self.addParameter(
            QgsProcessingParameterFile(
                CHECKOUT,
                "satseg checkout (empty: the plugin's setting)",
                behavior=QgsProcessingParameterFile.Folder,
                optional=True,
            )
        )
        python = QgsProcessingParameterFile(
            PYTHON, "Training Python with torch (empty: the setting)", optional=True
        )
        python.setFileFilter("All files (*)")  # the default, *.*, refuses bin/python
        self.addParameter(python)
        self.addParameter(QgsProcessingParameterFolderDestination(OUTPUT_FOLDER, "Output folder"))
        self.addOutput(QgsProcessingOutputFile(OUT_MODEL, "New model (ONNX)"))
        self.addOutput(QgsProcessingOutputFile(OUT_REPORT, "Before/after report (CSV)"))
        self.addOutput(QgsProcessingOutputFile(OUT_CARD, "Model card (Markdown)"))

    # --- parameters to a request ---------------------------------------------------------
    def runtime(
        self, parameters: dict[str, Any], context: QgsProcessingContext
    ) -> learn_runtime.TrainingRuntime:
        """The training Python: the parameters, else the plugin's settings and their defaults."""
        configured = learn_runtime.configured_runtime()
        checkout = self.parameterAsFile(parameters, CHECKOUT, context) if given(parameters, CHECKOUT) else ""
        python = self.parameterAsFile(parameters, PYTHON, context) if given(parameters, PYTHON) else ""
        checkout = checkout or configured.checkout
        if not python:
            python = (
                configured.python
                if checkout == configured.checkout
                else learn_runtime.default_python(checkout)
            )
        return learn_runtime.TrainingRuntime(checkout, python)

    def _extent(
        self, parameters: dict[str, Any], context: QgsProcessingContext
    ) -> tuple[QgsRectangle, QgsCoordinateReferenceSystem]:
        if given(parameters, EXTENT):
            extent = self.parameterAsExtent(parameters, EXTENT, context)
            crs = self.parameterAsExtentCrs(parameters, EXTENT, context)
            if not crs.isValid() and context.project() is not None:
                crs = context.project().crs()
            return extent, crs
        polygons = (
            self.parameterAsSource(parameters, POLYGONS, context) if given(parameters, POLYGONS) else None
        )
        if polygons is None:
            raise SatsegError("give the extent, or polygons whose bounding box to train on")
        box = QgsRectangle()
        box.setMinimal()
        for feature in polygons.getFeatures(QgsFeatureRequest().setNoAttributes()):
            if feature.hasGeometry():
                box.combineExtentWith(feature.geometry().boundingBox())
        if box.isNull() or box.isEmpty():
            raise SatsegError("the polygons given have no extent (none selected, or no geometry)")
        return box, polygons.sourceCrs()

    def request(
        self, parameters: dict[str, Any], context: QgsProcessingContext, temp: list[str], checkout: str = ""
    ) -> LearnRequest:
        """Return the CLI request of the parameters; an OSM layer is written to a temporary GeoJSON (in ``temp``)."""
        source = imagery_source(self, parameters, context)
        extent, crs = self._extent(parameters, context)
        if not crs.isValid():
            crs = QgsCoordinateReferenceSystem("EPSG:3857")
        if given(parameters, OSM_FILE):
            osm = self.parameterAsFile(parameters, OSM_FILE, context)
            if not Path(osm).is_file():
                raise SatsegError(f"the OpenStreetMap file {osm} does not exist")
        elif given(parameters, OSM_LAYER):
            layer = self.parameterAsSource(parameters, OSM_LAYER, context)
            path = learn_inputs.layer_to_geojson(layer, context=context.transformContext())
            temp.append(str(path.parent))
            osm = str(path)
        else:
            raise SatsegError("give the OpenStreetMap data: a file or a vector layer")
        classes = self.parameterAsFile(parameters, CLASSES, context) if given(parameters, CLASSES) else ""
        classes = classes or learn_inputs.checkout_classes(checkout)
        if not classes or not Path(classes).is_file():
            raise SatsegError(f"the class config {classes or '(none)'} does not exist")
        base = self.parameterAsFile(parameters, BASE, context) if given(parameters, BASE) else ""
        if base and not Path(base).is_file():
            raise SatsegError(f"the base model {base} does not exist (leave it empty to train from scratch)")
        request = LearnRequest(
            bbox=(extent.xMinimum(), extent.yMinimum(), extent.xMaximum(), extent.yMaximum()),
            bbox_crs=learn_inputs.crs_text(crs),
            osm_path=osm,
            out_dir=self.parameterAsString(parameters, OUTPUT_FOLDER, context),
            tiles_url=source.tiles_url,
            raster_path=source.raster_path,
            classes_path=classes,
            base=base or None,
            minutes=self.parameterAsDouble(parameters, MINUTES, context),
        )
        request.args()
        return request

    def processAlgorithm(
        self, parameters: dict[str, Any], context: QgsProcessingContext, feedback: QgsProcessingFeedback
    ) -> dict[str, Any]:
        temp: list[str] = []
        try:
            with processing_errors("cancelled; the training run removed what it had half-written"):
                runtime = self.runtime(parameters, context)
                check = learn_runtime.check_runtime(runtime)
                if not check.ok:
                    raise SatsegError(
                        f"cannot train: {check.message} (Plugins > satseg > Train on this area… offers to "
                        "create a training Python)"
                    )
                request = self.request(parameters, context, temp, runtime.checkout)
                feedback.pushInfo(
                    f"training in {runtime.python} from {runtime.checkout}; output {request.out_dir}"
                )

                def progress(step: LearnProgress) -> None:
                    feedback.setProgress(100.0 * step.fraction)
                    feedback.setProgressText(step.describe())

                result = run_learn(
                    runtime,
                    request,
                    progress=progress,
                    is_cancelled=feedback.isCanceled,
                    log=feedback.pushConsoleInfo,
                )
        except LearnCrashError as exc:
            raise QgsProcessingException(f"{exc}:\n{exc.details}") from None
        finally:
            for folder in temp:
                shutil.rmtree(folder, ignore_errors=True)
        settings.add_model_dir(Path(result.model).parent)
        feedback.pushInfo(f"new model: {result.model}; report: {result.report}; card: {result.card}")
        return {OUT_MODEL: result.model, OUT_REPORT: result.report, OUT_CARD: result.card}
