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
from ..inference.tileurl import redact
from .algorithm_parts import add_imagery_parameters, given, imagery_source, processing_errors
from .layers import style_class_layer, style_polygon_layer
from .sources import parse_bands

MODEL = "MODEL"
EXTENT = "EXTENT"
MASK = "MASK"
BANDS = "BANDS"
ZOOM = "ZOOM"
WRITE_CLASSES = "WRITE_CLASSES"
WRITE_HEATMAPS = "WRITE_HEATMAPS"
WRITE_COUNTS = "WRITE_COUNTS"
WRITE_VECTORS = "WRITE_VECTORS"
MIN_AREA = "MIN_AREA"
SIMPLIFY = "SIMPLIFY"
OUTPUT_FOLDER = "OUTPUT_FOLDER"
OUT_CLASSES = "CLASSES"
OUT_HEATMAPS = "HEATMAPS"
OUT_COUNTS = "COUNTS"
OUT_POLYGONS = "POLYGONS"
OUT_TILES = "TILES"
OUT_TILES_FAILED = "TILES_FAILED"


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
        zoom = QgsProcessingParameterNumber(
            ZOOM, "Zoom (empty: the model's)", QgsProcessingParameterNumber.Integer, optional=True
        )
        zoom.setMinimum(0)
        zoom.setMaximum(24)
        self.addParameter(zoom)
        self.addParameter(QgsProcessingParameterBoolean(WRITE_CLASSES, "Write the class raster", True))
        self.addParameter(QgsProcessingParameterBoolean(WRITE_HEATMAPS, "Write one heatmap per class", True))
        self.addParameter(QgsProcessingParameterBoolean(WRITE_COUNTS, "Write the pixel-count table", True))
        self.addParameter(
            QgsProcessingParameterBoolean(WRITE_VECTORS, "Write polygons per class (classes.gpkg)", False)
        )
        min_area = QgsProcessingParameterNumber(
            MIN_AREA,
            "Minimum region area in m² (0: keep every region)",
            QgsProcessingParameterNumber.Double,
            0.0,
            optional=True,
            minValue=0.0,
        )
        self.addParameter(min_area)
        simplify = QgsProcessingParameterNumber(
            SIMPLIFY,
            "Simplify the polygons, tolerance in m (0: exact pixel outlines)",
            QgsProcessingParameterNumber.Double,
            0.0,
            optional=True,
            minValue=0.0,
        )
        self.addParameter(simplify)
        self.addParameter(QgsProcessingParameterFolderDestination(OUTPUT_FOLDER, "Output folder"))
        self.addOutput(QgsProcessingOutputRasterLayer(OUT_CLASSES, "Class raster"))
        self.addOutput(QgsProcessingOutputFolder(OUT_HEATMAPS, "Heatmaps folder"))
        self.addOutput(QgsProcessingOutputFile(OUT_COUNTS, "Pixel-count table (CSV)"))
        self.addOutput(QgsProcessingOutputVectorLayer(OUT_POLYGONS, "Polygons per class"))
        self.addOutput(QgsProcessingOutputNumber(OUT_TILES, "Tiles segmented"))
        self.addOutput(QgsProcessingOutputNumber(OUT_TILES_FAILED, "Tiles that could not be had"))

    def processAlgorithm(
        self, parameters: dict[str, Any], context: QgsProcessingContext, feedback: QgsProcessingFeedback
    ) -> dict[str, Any]:
        from .segment_flow import crs_for_gdal

        with processing_errors("cancelled; no file was written"):
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
            zoom_given = given(parameters, ZOOM)
            # run_segment makes and locks the folder and stages the outputs, as the dialog's task
            # does: they appear together, replacing an earlier run's, or not at all.
            out_dir = self.parameterAsString(parameters, OUTPUT_FOLDER, context)
            request = SegmentRequest(
                model=self.parameterAsFile(parameters, MODEL, context),
                bbox=(extent.xMinimum(), extent.yMinimum(), extent.xMaximum(), extent.yMaximum()),
                bbox_crs=crs_for_gdal(crs),
                tiles_url=source.tiles_url,
                raster_path=source.raster_path,
                zoom=self.parameterAsInt(parameters, ZOOM, context) if zoom_given else None,
                out_dir=out_dir,
                write_classes=self.parameterAsBool(parameters, WRITE_CLASSES, context),
                write_heatmaps=self.parameterAsBool(parameters, WRITE_HEATMAPS, context),
                write_counts=self.parameterAsBool(parameters, WRITE_COUNTS, context),
                write_vectors=self.parameterAsBool(parameters, WRITE_VECTORS, context),
                min_area_m2=self.parameterAsDouble(parameters, MIN_AREA, context) or None,
                simplify_m=self.parameterAsDouble(parameters, SIMPLIFY, context) or None,
                mask_path=mask_path,
                bands=list(parse_bands(self.parameterAsString(parameters, BANDS, context)) or []) or None,
            )
            feedback.pushInfo(f"imagery: {source.label}; extent {extent.toString()} in {crs.authid()}")

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
        return {
            OUT_CLASSES: result.classes_path,
            OUT_HEATMAPS: out_dir if result.heatmap_paths else None,
            OUT_COUNTS: result.counts_csv,
            OUT_POLYGONS: result.vectors_path,
            OUT_TILES: result.tiles_total,
            OUT_TILES_FAILED: len(result.tiles_failed),
        }
