"""From the "Train on this area" click to a running LearnTask: dialog, runtime check, request."""

from __future__ import annotations

import shutil
from datetime import datetime
from pathlib import Path
from typing import Any

from qgis.core import QgsCoordinateReferenceSystem, QgsProject, QgsRectangle

from ..inference.errors import SatsegError
from .controller import TaskController
from .learn_dialog import LearnChoices, LearnDialog
from .learn_inputs import crs_text, layer_to_geojson, polygons_extent
from .learn_process import LearnRequest
from .learn_runtime import check_runtime, offer_training_python
from .learn_task import LearnTask
from .segment_flow import canvas_extent_text


def run_folder(out_parent: str | Path, when: datetime) -> Path:
    """Return a new folder name under ``out_parent`` for a run started at ``when``.

    >>> run_folder("/tmp/none-such", datetime(2026, 1, 2, 3, 4, 5)).name
    'area_20260102-030405'
    """
    base = Path(out_parent) / f"area_{when:%Y%m%d-%H%M%S}"
    out, n = base, 1
    while out.exists():
        n += 1
        out = base.with_name(f"{base.name}-{n}")
    return out


def extent_of(choices: LearnChoices, canvas: Any) -> tuple[QgsRectangle, QgsCoordinateReferenceSystem]:
    """Return the area to train on and its CRS: the polygons' bounding box, else the visible extent."""
    if choices.polygons is not None:
        return polygons_extent(choices.polygons, choices.selected_only), choices.polygons.crs()
    return canvas.extent(), canvas.mapSettings().destinationCrs()


def make_request(
    choices: LearnChoices,
    extent: QgsRectangle,
    crs: QgsCoordinateReferenceSystem,
    osm_path: str,
    out_dir: Path,
) -> LearnRequest:
    """Return the CLI request of ``choices`` over ``extent`` (in ``crs``); ``SatsegError`` if incomplete."""
    if not choices.classes_path or not Path(choices.classes_path).is_file():
        raise SatsegError(f"the class config {choices.classes_path or '(none)'} does not exist")
    if choices.base and not Path(choices.base).is_file():
        raise SatsegError(
            f"the base model {choices.base} does not exist (leave it empty to train from scratch)"
        )
    request = LearnRequest(
        bbox=(extent.xMinimum(), extent.yMinimum(), extent.xMaximum(), extent.yMaximum()),
        bbox_crs=crs_text(crs),
        osm_path=osm_path,
        out_dir=str(out_dir),
        tiles_url=choices.source.tiles_url,
        raster_path=choices.source.raster_path,
        classes_path=choices.classes_path,
        base=choices.base,
        minutes=choices.minutes,
    )
    request.args()  # the checks of the command line, before anything is written
    return request


class LearnController(TaskController):
    """Opens the dialog and starts ``LearnTask``s (kept alive until they end).

    ``segment_controller`` (the plugin's ``SegmentController``) opens Segment
    extent with the new model when the user clicks "Segment with it".
    """

    tasks: list[LearnTask]
    dialog: LearnDialog | None

    def __init__(self, iface: Any, segment_controller: Any = None) -> None:
        super().__init__(iface)
        self.segment_controller = segment_controller

    def open_dialog(self) -> LearnDialog:
        text = canvas_extent_text(self.iface.mapCanvas())
        self.dialog = LearnDialog(QgsProject.instance(), text, self.iface.mainWindow())
        self.dialog.run_requested.connect(self._dialog_run)
        self.dialog.show()
        return self.dialog

    def start(self, choices: LearnChoices, when: datetime | None = None) -> LearnTask | None:
        """Check the training Python, write the OSM layer if one was chosen, start the task."""
        check = check_runtime(choices.runtime)
        if not check.ok:
            offer_training_python(self.iface, check)
            return None
        temp: list[str] = []
        try:
            extent, crs = extent_of(choices, self.iface.mapCanvas())
            out_dir = run_folder(choices.out_parent, when or datetime.now())
            if choices.osm_layer is not None:
                osm = layer_to_geojson(choices.osm_layer)
                temp.append(str(osm.parent))
            else:
                osm = Path(choices.osm_file or "")
                if not osm.is_file():
                    raise SatsegError(f"the OpenStreetMap file {osm} does not exist")
            request = make_request(choices, extent, crs, str(osm), out_dir)
            out_dir.parent.mkdir(parents=True, exist_ok=True)
        except SatsegError as exc:
            for folder in temp:
                shutil.rmtree(folder, ignore_errors=True)
            self._warn(str(exc))
            return None
        layer = choices.source_layer
        task = LearnTask(
            choices.runtime,
            request,
            self.iface.messageBar(),
            segment_with=lambda model: self.segment_with(model, layer),
            parent_widget=self.iface.mainWindow(),
            cleanup=temp,
        )
        self._keep(task)
        return task

    def segment_with(self, model: str, layer: Any = None) -> Any:
        """Open Segment extent with ``model`` preselected (and the imagery trained on)."""
        if self.segment_controller is None:
            return None
        dialog = self.segment_controller.open_dialog(model_path=model)
        if dialog is not None and layer is not None:
            try:
                if QgsProject.instance().mapLayer(layer.id()) is not None:
                    dialog.layer_combo.setLayer(layer)
            except RuntimeError:  # the layer was removed and deleted meanwhile
                pass
        return dialog
