"""A segment run's files appear together and alone: written into a staging folder inside the
output folder, then moved into place, and the files an earlier run left there are removed.

So an output folder holds one run's files only: the heatmaps of classes the new model does not
have, or the ``pixel_counts.csv`` of a run before a ``--no-counts`` one, do not stay beside
the new results as if they belonged to them. A run that fails or is cancelled leaves the earlier
results as they were; one that is killed leaves its staging folder, which the next run in the
folder removes (``runfolder.remove_stale_parts``). Files that are not a segment run's own
(the cluster's ``blocks/`` and VRTs, the user's files) are never touched.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

from .counts import COUNTS_NAME
from .outputs import CLASSES_NAME
from .vectors import VECTORS_NAME

#: The files a single-process segment run writes (with GDAL's side files): what "an earlier run's" means.
RUN_FILES = (
    CLASSES_NAME,
    f"{CLASSES_NAME}.aux.xml",
    f"{CLASSES_NAME}.ovr",
    "heatmap_*.tif",
    "heatmap_*.tif.aux.xml",
    "heatmap_*.tif.ovr",
    COUNTS_NAME,
    VECTORS_NAME,
)


@contextlib.contextmanager
def staging_folder(folder: str | os.PathLike[str]) -> Iterator[Path]:
    """A new hidden ``.segment.<pid>.<random>.part`` folder in ``folder``, removed on the way out."""
    staging = Path(folder) / f".segment.{os.getpid()}.{uuid.uuid4().hex[:8]}.part"
    staging.mkdir()
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def publish(staging: Path, folder: Path) -> dict[str, str]:
    """Move every file of ``staging`` into ``folder``, then remove the earlier run's other files.

    Returns ``{staged path: final path}``.
    """
    moved: dict[str, str] = {}
    for path in sorted(staging.iterdir()):
        final = folder / path.name
        os.replace(path, final)
        moved[str(path)] = str(final)
    names = {Path(p).name for p in moved.values()}
    for pattern in RUN_FILES:
        for old in folder.glob(pattern):
            if old.name not in names and old.is_file():
                with contextlib.suppress(FileNotFoundError):
                    old.unlink()
    return moved
