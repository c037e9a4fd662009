"""The Processing algorithm ``satseg:segment_extent``: the dialog's run, without widgets."""

from __future__ import annotations

from typing import Any

from qgis.core import (
    QgsCoordinateReferenceSystem,
    QgsProcessing,
    QgsProcessingAlgorithm,
    QgsProcessingContext,
    QgsProcessingFeedback,
    QgsProcessingLayerPostProcessorInterface,
    QgsProcessingOutputFile,
    QgsProcessingOutputFolder,
    QgsProcessingOutputNumber,
    QgsProcessingOutputRasterLayer,
    QgsProcessingOutputVectorLayer,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterDefinition,
    QgsProcessingParameterExtent,
    QgsProcessingParameterFeatureSource,
    QgsProcessingParameterFile,
    QgsProcessingParameterFolderDestination,
    QgsProcessingParameterNumber,
    QgsProcessingParameterString,
    QgsRasterLayer,
    QgsRectangle,
    QgsVectorLayer,
)

from ..inference.errors import SatsegError
from ..inference.params import PROCESSING, check_values, offered
from ..inference.tileurl import redact
from .algorithm_parts import add_imagery_parameters, given, imagery_source, processing_errors
from .layers import style_class_layer, style_polygon_layer
from .sources import parse_bands

MODEL = "MODEL"
EXTENT = "EXTENT"
MASK = "MASK"
BANDS = "BANDS"
OUTPUT_FOLDER = "OUTPUT_FOLDER"
OUT_CLASSES = "CLASSES"
OUT_HEATMAPS = "HEATMAPS"
OUT_COUNTS = "COUNTS"
OUT_POLYGONS = "POLYGONS"
OUT_TILES = "TILES"
OUT_TILES_FAILED = "TILES_FAILED"


def add_run_parameters(algorithm: QgsProcessingAlgorithm) -> None:
    """Add the parameters Processing offers (``params.offered(PROCESSING)``) with their ranges and help."""
    for p in offered(PROCESSING):
        if p.kind is bool:
            param: Any = QgsProcessingParameterBoolean(p.key, p.title, p.default)
        else:
            kind = (
                QgsProcessingParameterNumber.Integer if p.kind is int else QgsProcessingParameterNumber.Double
            )
            title = f"{p.title} (empty: {p.unset})" if p.unset else p.title
            param = QgsProcessingParameterNumber(p.key, title, kind, p.default, optional=p.optional)
            if p.minimum is not None:
                param.setMinimum(p.minimum)
            if p.maximum is not None:
                param.setMaximum(p.maximum)  # an excluded maximum is refused by checkParameterValues
        param.setHelp(p.help)
        if p.advanced:
            param.setFlags(param.flags() | QgsProcessingParameterDefinition.FlagAdvanced)
        algorithm.addParameter(param)


def run_values(
    algorithm: QgsProcessingAlgorithm, parameters: dict[str, Any], context: QgsProcessingContext
) -> dict[str, Any]:
    """The values of ``add_run_parameters``' parameters (None for an empty optional one)."""
    values: dict[str, Any] = {}
    for p in offered(PROCESSING):
        if p.kind is bool:
            values[p.name] = algorithm.parameterAsBool(parameters, p.key, context)
        elif p.optional and not given(parameters, p.key):
            values[p.name] = None
        else:
            number = algorithm.parameterAsDouble(parameters, p.key, context)
            values[p.name] = int(number) if p.kind is int and number.is_integer() else number
    return values


class _StyleClasses(QgsProcessingLayerPostProcessorInterface):
    """Styles the class raster and polygons Processing loads when the algorithm ran from the toolbox."""

    def __init__(self, class_names: list[str], class_colors: list[str]) -> None:
        super().__init__()
        self.class_names = class_names
        self.class_colors = class_colors

    def postProcessLayer(
        self, layer: Any, context: QgsProcessingContext, feedback: QgsProcessingFeedback
    ) -> None:
        if isinstance(layer, QgsRasterLayer):
            style_class_layer(layer, self.class_names, self.class_colors)
            layer.triggerRepaint()
        elif isinstance(layer, QgsVectorLayer):
            style_polygon_layer(layer, self.class_names, self.class_colors)
            layer.triggerRepaint()


#: Post-processors run after the algorithm object is gone: Python must keep them alive.
_POST_PROCESSORS: list[_StyleClasses] = []


class SegmentExtentAlgorithm(QgsProcessingAlgorithm):
    """Segment an extent of an XYZ/raster layer or a tile URL with an ONNX model."""

    def name(self) -> str:
        return "segment_extent"

    def displayName(self) -> str:
        return "Segment extent"

    def shortHelpString(self) -> str:
        return (
            "Classifies every pixel of an extent into the model's land-use classes. The imagery is an "
            "XYZ tile layer or raster layer of the project, or a tile URL "
            "(https://server/{z}/{x}/{y}.png). Writes classes.tif (class raster), heatmap_<class>.tif "
            "(probability 0 to 1 per class) and pixel_counts.csv (class, pixels, share, area_m2, "
            "area_ha) into the output folder; optionally classes.gpkg, one polygon per region with its "
            "class and ground area. A minimum region area (m²) merges smaller regions into their "
            "neighbours in the raster, the polygons and the table alike; a tolerance (m) simplifies the "
            "polygons. A processing area (polygons; Processing's 'Selected features only' applies) "
            "limits the run to them: windows touching none are not run, pixels outside are nodata "
            "and not counted; without an extent, the polygons' bounding box is segmented."
        )

    def createInstance(self) -> SegmentExtentAlgorithm:
        return SegmentExtentAlgorithm()

    def initAlgorithm(self, config: dict[str, Any] | None = None) -> None:
        self.addParameter(
            QgsProcessingParameterFile(
                MODEL, "Model (ONNX)", behavior=QgsProcessingParameterFile.File, extension="onnx"
            )
        )
        add_imagery_parameters(self)
        self.addParameter(
            QgsProcessingParameterExtent(EXTENT, "Extent (empty: the processing area's)", optional=True)
        )
        self.addParameter(
            QgsProcessingParameterFeatureSource(
                MASK,
                "Processing area: only these polygons (optional)",
                [QgsProcessing.TypeVectorPolygon],
                optional=True,
            )
        )
        self.addParameter(
            QgsProcessingParameterString(
                BANDS,
                "Raster bands for the model's input, in its order (e.g. 1,2,3,4; empty: the model's)",
                optional=True,
            )
        )
        add_run_parameters(self)  # zoom, overlap, outputs, cleaning...: inference/params.py
        self.addParameter(QgsProcessingParameterFolderDestination(OUTPUT_FOLDER, "Output folder"))
        self.addOutput(QgsProcessingOutputRasterLayer(OUT_CLASSES, "Class raster"))
        self.addOutput(QgsProcessingOutputFolder(OUT_HEATMAPS, "Heatmaps folder"))
        self.addOutput(QgsProcessingOutputFile(OUT_COUNTS, "Pixel-count table (CSV)"))
        self.addOutput(QgsProcessingOutputVectorLayer(OUT_POLYGONS, "Polygons per class"))
        self.addOutput(QgsProcessingOutputNumber(OUT_TILES, "Tiles segmented"))
        self.addOutput(QgsProcessingOutputNumber(OUT_TILES_FAILED, "Tiles that could not be had"))

    def checkParameterValues(
        self, parameters: dict[str, Any], context: QgsProcessingContext
    ) -> tuple[bool, str]:
        """Refuse a run parameter out of range with the message the CLI and the dialog give."""
        try:
            check_values(run_values(self, parameters, context))
        except SatsegError as exc:
            return False, str(exc)
        return super().checkParameterValues(parameters, context)

    def processAlgorithm(
        self, parameters: dict[str, Any], context: QgsProcessingContext, feedback: QgsProcessingFeedback
    ) -> dict[str, Any]:
        from .int8_offer import int8_speed_file
        from .segment_flow import crs_for_gdal

        with processing_errors("cancelled; no file was written"):
            from ..inference.int8speed import int8_note
            from ..inference.mask import mask_bounds
            from ..inference.segment import SegmentRequest, run_segment

            source = imagery_source(self, parameters, context)
            mask_path = None
            if parameters.get(MASK) not in (None, ""):
                # A file of just the polygons asked for (selected ones only, when so chosen).
                mask_path = self.parameterAsCompatibleSourceLayerPath(
                    parameters, MASK, context, ["gpkg", "shp", "geojson"], "gpkg", feedback
                )
            extent = self.parameterAsExtent(parameters, EXTENT, context)
            crs = self.parameterAsExtentCrs(parameters, EXTENT, context)
            if extent.isNull() or extent.isEmpty():
                if mask_path is None:
                    raise SatsegError("give an extent or a processing area (polygons)")
                box, wkt = mask_bounds(mask_path)  # the polygons' own bounding box
                extent, crs = QgsRectangle(*box), QgsCoordinateReferenceSystem.fromWkt(wkt)
            if not crs.isValid():
                crs = context.project().crs() if context.project() else QgsCoordinateReferenceSystem()
            if not crs.isValid():
                crs = QgsCoordinateReferenceSystem("EPSG:3857")
            values = check_values(run_values(self, parameters, context), raster=bool(source.raster_path))
            # run_segment makes and locks the folder and stages the outputs, as the dialog's task
            # does: they appear together, replacing an earlier run's, or not at all.
            out_dir = self.parameterAsString(parameters, OUTPUT_FOLDER, context)
            request = SegmentRequest(
                model=self.parameterAsFile(parameters, MODEL, context),
                bbox=(extent.xMinimum(), extent.yMinimum(), extent.xMaximum(), extent.yMaximum()),
                bbox_crs=crs_for_gdal(crs),
                tiles_url=source.tiles_url,
                raster_path=source.raster_path,
                out_dir=out_dir,
                mask_path=mask_path,
                bands=list(parse_bands(self.parameterAsString(parameters, BANDS, context)) or []) or None,
                **values,
            )
            feedback.pushInfo(f"imagery: {source.label}; extent {extent.toString()} in {crs.authid()}")
            note = int8_note(request.model, int8_speed_file())
            if note:
                feedback.pushInfo(note)

            def progress(fraction: float, message: str) -> None:
                feedback.setProgress(100.0 * float(fraction))
                if message:
                    feedback.setProgressText(message)

            result = run_segment(request, progress=progress, is_cancelled=feedback.isCanceled)
        # When run from the toolbox, the class raster and the polygons open styled.
        _POST_PROCESSORS.clear()
        for path, name, output in (
            (result.classes_path, "classes", OUT_CLASSES),
            (result.vectors_path, "polygons", OUT_POLYGONS),
        ):
            if path:
                styler = _StyleClasses(list(result.class_names), list(result.class_colors))
                _POST_PROCESSORS.append(styler)
                details = QgsProcessingContext.LayerDetails(name, context.project(), output)
                details.setPostProcessor(styler)
                context.addLayerToLoadOnCompletion(path, details)
        for tile, reason in result.tiles_failed:
            feedback.reportError(f"tile {tile} could not be had: {redact(reason)}; left empty (nodata)")
        for note in result.notes:
            feedback.pushWarning(note)
        return {
            OUT_CLASSES: result.classes_path,
            OUT_HEATMAPS: out_dir if result.heatmap_paths else None,
            OUT_COUNTS: result.counts_csv,
            OUT_POLYGONS: result.vectors_path,
            OUT_TILES: result.tiles_total,
            OUT_TILES_FAILED: len(result.tiles_failed),
        }
