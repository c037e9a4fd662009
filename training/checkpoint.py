"""Save and load SegNet checkpoints (``runs/NAME/best.pt``, ``last.pt``).

A checkpoint is a dict of plain types (docs/design.md), so
``torch.load(path, weights_only=True)`` reads it without unpickling code:
``state_dict``, ``class_names``, ``class_colors``, ``width``, ``tile_size``,
``zoom``, ``resolution_cm``, ``mean``, ``std``, ``epoch``, ``best_miou``, ``head``
(what the classifier reads, ``training.model.HEADS``; "relu" when absent),
``test_time_flips`` (a shipped model's mirror images, ``checkpoint_flips``), and for a
model of other than 3 input bands ``channels`` and ``input_bands``; training
adds ``optimizer``, ``scheduler`` (in ``last.pt``) and ``seed``,
``val_fraction``, ``data`` (the dataset folder) so validate and export find the
same split.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, BinaryIO

import torch

from satseg_plugin.inference.atomic import atomic_path
from satseg_plugin.inference.errors import ModelError

from .model import FLIPS, HEADS, SegNet

REQUIRED_KEYS = ("state_dict", "class_names", "class_colors", "width")


class _Recording:
    """A file's ``write`` that keeps the ``OSError`` it raised: torch turns it into a
    ``RuntimeError`` ("unexpected pos ...") that no longer says the disk is full."""

    def __init__(self, file: BinaryIO) -> None:
        self.file = file
        self.error: OSError | None = None

    def write(self, data: bytes) -> int:
        try:
            return self.file.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def flush(self) -> None:
        self.file.flush()


def save_checkpoint(path: str | os.PathLike[str], checkpoint: dict[str, Any]) -> None:
    """Write ``checkpoint`` to ``path`` atomically (a temporary file, then a rename).

    A full or read-only disk raises the ``OSError`` that says so (``ENOSPC``...).
    """
    with atomic_path(path) as tmp, open(tmp, "wb") as file:
        sink = _Recording(file)
        try:
            torch.save(checkpoint, sink)
        except RuntimeError:
            if sink.error is not None:
                raise sink.error from None
            raise


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True`` and check its keys.

    Raises ``ModelError`` when the file is missing, corrupt or truncated, not a
    torch file, or lacks the keys of a satseg checkpoint.
    """
    p = Path(path)
    if not p.is_file():
        raise ModelError(f"weights file not found: {p}")
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # a damaged file fails in many ways (zip, pickle, IndexError, ...)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(
            f"cannot read weights {p}: the file is corrupt or not a torch checkpoint ({first})"
        ) from None
    if not isinstance(ckpt, dict):
        raise ModelError(f"{p} is not a satseg checkpoint (it holds a {type(ckpt).__name__}, not a dict)")
    missing = [k for k in REQUIRED_KEYS if k not in ckpt]
    if missing:
        raise ModelError(f"{p} is not a satseg checkpoint: it lacks {', '.join(missing)}")
    if len(ckpt["class_names"]) != len(ckpt["class_colors"]):
        raise ModelError(f"{p}: class_names and class_colors differ in length")
    return ckpt


def checkpoint_head(ckpt: dict[str, Any]) -> str:
    """What the checkpoint's classifier reads (``training.model.HEADS``); checkpoints from
    before the option name none, and theirs is "relu"."""
    return str(ckpt.get("head") or "relu")


#: The checkpoint key of the mirror images its predictions average over (``FlipAveraged``).
FLIPS_KEY = "test_time_flips"


def checkpoint_flips(ckpt: dict[str, Any], where: str = "checkpoint") -> int:
    """How many mirror images predictions from ``ckpt`` average over: its ``test_time_flips``
    (a shipped model's card chose it by measurement), 1 for every checkpoint that names none."""
    flips = ckpt.get(FLIPS_KEY) or 1
    if flips not in FLIPS:
        raise ModelError(
            f"{where} names {FLIPS_KEY} {flips!r}; this version knows {', '.join(map(str, FLIPS))}"
        )
    return int(flips)


def model_from_checkpoint(ckpt: dict[str, Any], where: str = "checkpoint") -> SegNet:
    """Build the SegNet of ``ckpt`` and load its weights (eval mode, CPU).

    Raises ``ModelError`` when the weights do not fit the network the
    checkpoint describes, e.g. a classifier for another number of classes.
    """
    names = list(ckpt["class_names"])
    state = ckpt["state_dict"]
    classifier = state.get("classifier.weight") if isinstance(state, dict) else None
    if classifier is None:
        raise ModelError(f"{where} has no SegNet weights (no 'classifier.weight' in its state_dict)")
    if classifier.shape[0] != len(names):
        raise ModelError(
            f"{where} has weights for {classifier.shape[0]} classes but names {len(names)} "
            f"({', '.join(names)}); the weights do not belong to these classes"
        )
    channels = int(ckpt.get("channels") or 3)  # checkpoints of RGB models name none
    head = checkpoint_head(ckpt)
    if head not in HEADS:
        raise ModelError(f"{where} names head {head!r}; this version knows {', '.join(HEADS)}")
    net = SegNet(len(names), float(ckpt["width"]), channels, head)
    try:
        net.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        detail = first[1].strip() if len(first) > 1 else first[0]
        raise ModelError(
            f"{where} does not fit a SegNet of width {ckpt['width']} with {len(names)} classes and "
            f"{channels} input bands: {detail}"
        ) from None
    return net.eval()
