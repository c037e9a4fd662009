"""From the "Segment extent" click to a running task: dialog, request, tile count, confirmation."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from qgis.core import QgsCoordinateReferenceSystem, QgsProject, QgsRectangle
from qgis.PyQt.QtWidgets import QMessageBox, QWidget

from ..inference.errors import SatsegError
from ..inference.params import check_values
from .area import ProcessingArea, area_of_layer
from .controller import TaskController
from .dependencies import check_requirements, offer_install
from .segment_dialog import SegmentChoices, SegmentDialog
from .segment_task import SegmentTask, run_name

#: Above this many tiles, the user is told the count and asked to confirm.
LARGE_RUN_TILES = 200


def crs_for_gdal(crs: QgsCoordinateReferenceSystem) -> str:
    """Return ``crs`` as GDAL/OSR understands it: ``EPSG:n`` when it has one, else WKT."""
    authid = crs.authid()
    if authid.upper().startswith("EPSG:"):
        return authid
    return crs.toWkt(QgsCoordinateReferenceSystem.WKT_PREFERRED_GDAL)


def make_request(
    choices: SegmentChoices,
    extent: QgsRectangle,
    crs: QgsCoordinateReferenceSystem,
    mask_path: str | None = None,
) -> Any:
    """Return the ``SegmentRequest`` for ``choices`` over ``extent`` (in ``crs``), within ``mask_path``'s polygons.

    ``ParameterError`` for a run parameter out of range (``inference.params``: the CLI's and
    Processing's message).
    """
    from ..inference.segment import SegmentRequest

    values = check_values(choices.run_values(), raster=bool(choices.source.raster_path))
    return SegmentRequest(
        model=choices.model_path,
        bbox=(extent.xMinimum(), extent.yMinimum(), extent.xMaximum(), extent.yMaximum()),
        bbox_crs=crs_for_gdal(crs),
        tiles_url=choices.source.tiles_url,
        raster_path=choices.source.raster_path,
        out_dir=choices.out_parent,
        mask_path=mask_path,
        bands=list(choices.bands) if choices.bands else None,
        **values,
    )


def confirm_large_run(parent: QWidget | None, tiles: int) -> bool:
    """Ask whether to go on with a run of ``tiles`` tiles (a modal question)."""
    answer = QMessageBox.question(
        parent,
        "Segment extent",
        f"The visible extent needs {tiles:,} tiles at this zoom; segmenting them may take a while.\n\n"
        "Run anyway? (Zoom in, or choose a lower zoom, for a quicker run.)",
        QMessageBox.Yes | QMessageBox.No,
        QMessageBox.No,
    )
    return answer == QMessageBox.Yes


def canvas_extent_text(canvas: Any) -> str:
    """``"W x H in EPSG:n"``: the size of the canvas's visible extent, for a dialog to show."""
    crs = canvas.mapSettings().destinationCrs()
    ext = canvas.extent()
    return (
        f"{ext.width():.6g} x {ext.height():.6g} in {crs.authid() or crs.description() or 'the project CRS'}"
    )


class SegmentController(TaskController):
    """Opens the dialog and starts ``SegmentTask``s; keeps the running tasks alive.

    ``confirm(parent, tiles) -> bool`` is asked before runs above
    ``LARGE_RUN_TILES`` tiles (tests replace it). User errors go to the message bar.
    """

    tasks: list[SegmentTask]
    dialog: SegmentDialog | None

    def __init__(self, iface: Any) -> None:
        super().__init__(iface)
        self.confirm: Callable[[QWidget | None, int], bool] = confirm_large_run

    def open_dialog(self, model_path: str | None = None) -> SegmentDialog | None:
        """Show the dialog (after checking that the Python packages satseg needs are there).

        ``model_path`` preselects a model (the one "Train on this area" just made).
        """
        problems = check_requirements()
        if problems:
            offer_install(self.iface, problems)
            return None
        text = f"the map's visible extent, {canvas_extent_text(self.iface.mapCanvas())}"
        self.dialog = SegmentDialog(QgsProject.instance(), text, self.iface.mainWindow(), model_path)
        self.dialog.run_requested.connect(self._dialog_run)
        self.dialog.show()
        return self.dialog

    def start(self, choices: SegmentChoices, when: datetime | None = None) -> SegmentTask | None:
        """Start segmenting the canvas's visible extent; return the task, or None if not started."""
        area: ProcessingArea | None = None
        try:
            if not choices.model_path:
                raise SatsegError("choose a model file (.onnx) first")
            if not Path(choices.model_path).is_file():
                raise SatsegError(f"the model file {choices.model_path} does not exist")
            wanted = (
                choices.write_classes,
                choices.write_heatmaps,
                choices.write_counts,
                choices.write_vectors,
            )
            if not any(wanted):
                raise SatsegError("choose at least one output (class raster, polygons, heatmaps or table)")
            area = self._area(choices)
            request = make_request(choices, area.extent, area.crs, area.mask_path)
            from ..inference.segment import plan_run

            # The task runs this plan's model and tile template: one model load, one TileJSON fetch.
            plan = plan_run(request, open_source=False)
            tiles = plan.tiles
        except SatsegError as exc:
            if area is not None and area.folder:
                shutil.rmtree(area.folder, ignore_errors=True)
            self._warn(str(exc))
            return None
        if tiles > LARGE_RUN_TILES and not self.confirm(self.iface.mainWindow(), tiles):
            if area.folder:
                shutil.rmtree(area.folder, ignore_errors=True)
            return None
        group_name, folder = run_name(choices.model_path, when or datetime.now())
        out_dir = Path(choices.out_parent) / folder
        n = 1
        while out_dir.exists() or out_dir.with_name(f".{out_dir.name}.part").exists():  # two runs in a second
            n += 1
            out_dir = Path(choices.out_parent) / f"{folder}-{n}"
        task = SegmentTask(
            request,
            out_dir,
            group_name,
            QgsProject.instance(),
            self.iface.messageBar(),
            prepared=plan,
        )
        task.area_folder = area.folder  # type: ignore[attr-defined]
        self._keep(task)
        return task

    def _area(self, choices: SegmentChoices) -> ProcessingArea:
        """The visible extent, or the chosen layer's extent or polygons."""
        if choices.area_layer_id:
            layer = QgsProject.instance().mapLayer(choices.area_layer_id)
            if layer is None:
                raise SatsegError("the processing-area layer is no longer in the project")
            return area_of_layer(layer, choices.selected_only)
        canvas = self.iface.mapCanvas()
        return ProcessingArea(canvas.extent(), canvas.mapSettings().destinationCrs())

    def _release(self, task: SegmentTask) -> None:
        folder = getattr(task, "area_folder", None)
        if folder:  # the polygons written for the run
            shutil.rmtree(folder, ignore_errors=True)
