"""The background QgsTask that runs ``run_segment`` and adds its results to the project."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import os
import re
import shutil
import traceback
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qgis.core import Qgis, QgsLayerTreeGroup, QgsProject, QgsTask

from ..inference.errors import Cancelled, SatsegError
from ..inference.tileurl import redact
from .layers import add_result_layers
from .messages import MESSAGE_SECONDS, push_unfinished

if TYPE_CHECKING:
    from ..inference.segment import RunPlan, SegmentRequest, SegmentResult


def run_name(model_path: str | os.PathLike[str], when: datetime) -> tuple[str, str]:
    """Return ``(group name, folder name)`` for a run of ``model_path`` started at ``when``.

    >>> run_name("models/buildings.onnx", datetime(2026, 1, 2, 3, 4, 5))
    ('buildings 2026-01-02 03:04:05', 'buildings_20260102-030405')
    """
    stem = Path(model_path).stem
    folder_stem = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("_") or "model"
    return f"{stem} {when:%Y-%m-%d %H:%M:%S}", f"{folder_stem}_{when:%Y%m%d-%H%M%S}"


def _moved(path: str | os.PathLike[str] | None, final: Path) -> str | None:
    """Return where an output of the staging folder is once the folder is renamed to ``final``."""
    return None if path is None else str(final / Path(path).name)


def _replace(obj: Any, **changes: Any) -> Any:
    """``dataclasses.replace`` that also works for plain objects (a copy with new attributes)."""
    if dataclasses.is_dataclass(obj):
        return dataclasses.replace(obj, **changes)
    new = copy.copy(obj)
    for key, value in changes.items():
        setattr(new, key, value)
    return new


class SegmentTask(QgsTask):
    """Segment one extent in the background, then add the layer group on the main thread.

    The outputs are written to a hidden staging folder beside ``out_dir`` that is
    renamed to ``out_dir`` only when the whole run succeeded: a cancelled or failed
    run leaves no file at all, and adds no layer.

    ``prepared`` (``plan_run`` of ``request``) lends its model and tile template to
    the run, so that they are not loaded and fetched a second time.

    Attributes set when the task ends (plain Python, readable after QGIS deleted
    the C++ task): ``outcome`` ("done", "cancelled", "error" or "bug"), ``result``
    (the ``SegmentResult``), ``group`` (the layer tree group added), ``error`` (a
    user-facing message) and ``bug`` (a traceback, for anything that is not a
    ``SatsegError``).
    """

    def __init__(
        self,
        request: SegmentRequest,
        out_dir: str | os.PathLike[str],
        group_name: str,
        project: QgsProject,
        message_bar: Any,
        prepared: RunPlan | None = None,
    ) -> None:
        super().__init__(f"satseg: {group_name}", QgsTask.CanCancel)
        self.request = request
        self.prepared = prepared  # the controller's plan_run of request: its model and tile template
        self.out_dir = Path(out_dir)
        self.staging = self.out_dir.parent / f".{self.out_dir.name}.part"
        self.group_name = group_name
        self.project: QgsProject | None = project  # None once the task has ended
        self.message_bar = message_bar
        self.result: SegmentResult | None = None
        self.group: QgsLayerTreeGroup | None = None
        self.error: str | None = None
        self.bug: str | None = None
        self.outcome: str | None = None
        self.ended = False  # finished() has run: the layers are in (or the message is out)

    # --- worker thread -------------------------------------------------------------------
    def run(self) -> bool:
        """Run the segmentation; never touches widgets or the project (worker thread)."""
        try:
            from ..inference.segment import run_segment

            if self.out_dir.exists():
                raise SatsegError(f"the output folder {self.out_dir} exists already")
            shutil.rmtree(self.staging, ignore_errors=True)
            self.staging.mkdir(parents=True)
            request = _replace(self.request, out_dir=str(self.staging))
            result = run_segment(
                request,
                progress=lambda fraction, _message: self.setProgress(100.0 * float(fraction)),
                is_cancelled=self.isCanceled,
                prepared=self.prepared,
            )
            if self.isCanceled():
                raise Cancelled("cancelled")
            os.replace(self.staging, self.out_dir)  # the whole set appears at once
            self.result = _replace(
                result,
                classes_path=_moved(result.classes_path, self.out_dir),
                heatmap_paths={k: _moved(v, self.out_dir) for k, v in (result.heatmap_paths or {}).items()},
                counts_csv=_moved(result.counts_csv, self.out_dir),
                vectors_path=_moved(getattr(result, "vectors_path", None), self.out_dir),
            )
            self.outcome = "done"
            return True
        except Cancelled:
            self.outcome = "cancelled"
        except SatsegError as exc:
            self.error, self.outcome = str(exc), "error"
        except Exception:
            # A traceback may quote a tile URL: the log gets it redacted like every message.
            self.bug = redact(traceback.format_exc(), os.environ.get(self.request.token_env))
            self.outcome = "bug"
        with contextlib.suppress(OSError):
            shutil.rmtree(self.staging)
        return False

    # --- main thread ---------------------------------------------------------------------
    def finished(self, ok: bool) -> None:
        """Add the layers (success) or say what went wrong in the message bar."""
        try:
            self._report(ok)
        finally:
            self.ended = True
            # An ended task is often left in a reference cycle (a traceback's frames, a slot). If
            # it held the project, the cyclic GC would clear the project's Python wrapper, and
            # PyQt then drops every Python callable connected to that project's signals, other
            # plugins' (and pytest-qgis's legendLayersAdded -> processEvents) included.
            self.project = None

    def _report(self, ok: bool) -> None:
        bar = self.message_bar
        if ok and self.result is not None and self.project is not None:
            res = self.result
            try:
                self.group = add_result_layers(
                    self.project,
                    self.group_name,
                    res.class_names,
                    res.class_colors,
                    classes_path=res.classes_path,
                    heatmap_paths=res.heatmap_paths,
                    counts_csv=res.counts_csv,
                    vectors_path=getattr(res, "vectors_path", None),
                )
            except SatsegError as exc:
                bar.pushMessage("satseg", str(exc), Qgis.Warning, MESSAGE_SECONDS)
                return
            text = f"segmented {res.tiles_total} tiles into {self.out_dir}"
            notes = res.notes
            if res.tiles_failed:
                text += f"; {len(res.tiles_failed)} tiles could not be had and are left empty (nodata)"
            if res.tiles_failed or notes:
                bar.pushMessage("satseg", "; ".join([text, *notes]), Qgis.Warning, MESSAGE_SECONDS)
            else:
                bar.pushMessage("satseg", text, Qgis.Success, MESSAGE_SECONDS)
        else:
            push_unfinished(
                bar,
                "Segment extent",
                cancelled=self.outcome == "cancelled" or self.isCanceled(),
                error=self.error,
                bug=self.bug,
            )
