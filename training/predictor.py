"""Run a trained model, torch checkpoint or ONNX file alike, on uint8 RGB tiles.

Shared by validate, feed_forward and export's int8 check: ``load_predictor``
reads ``.pt`` (``training.checkpoint``) or ``.onnx`` (metadata through
``satseg_plugin.inference.metadata``) and ``Predictor.predict`` turns uint8
``[N, S, S, 3]`` RGB tiles into float32 ``[N, C, S, S]`` probabilities.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from satseg_plugin.inference.errors import ModelError
from satseg_plugin.inference.metadata import DEFAULT_OVERLAP_PERCENT, MEAN, STD, parse_metadata

from .checkpoint import checkpoint_flips, load_checkpoint, model_from_checkpoint
from .data import normalize
from .model import probability_model


def pick_device(name: str = "auto") -> torch.device:
    """``auto`` -> CUDA when present, else CPU; otherwise the named torch device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ModelError(f"unknown device {name!r} (use auto, cpu, cuda or cuda:N)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelError("--device cuda was asked for but torch sees no CUDA GPU")
    return dev


@dataclass
class Predictor:
    """A loaded model: its classes, tile size and a ``predict`` for uint8 tiles."""

    path: Path
    kind: str  # "torch" or "onnx"
    class_names: list[str]
    class_colors: list[str]
    tile_size: int
    tiles_overlap: int
    checkpoint: dict[str, Any] | None
    _run: Any
    #: The standardisation the model was trained with (its metadata, or the checkpoint's).
    mean: tuple[float, ...] = MEAN
    std: tuple[float, ...] = STD
    #: Ground size of the pixels the model was trained on, when it names one.
    resolution_cm: float | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def predict(self, tiles: np.ndarray) -> np.ndarray:
        """uint8 ``[N, H, W, 3]`` RGB -> float32 ``[N, C, H, W]`` softmax probabilities."""
        return self._run(normalize(tiles, self.mean, self.std))


def _torch_runner(net: torch.nn.Module, device: torch.device):
    net = net.to(device).eval()

    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return net(torch.from_numpy(x).to(device)).float().cpu().numpy()

    return run


def load_predictor(path: str | os.PathLike[str], device: str = "auto") -> Predictor:
    """Load ``path`` (a ``.pt`` checkpoint or an ``.onnx`` model) for prediction.

    Raises ``ModelError`` for a missing, corrupt or mismatched file.
    """
    p = Path(path)
    if not p.is_file():
        raise ModelError(f"weights file not found: {p}")
    if p.suffix.lower() == ".onnx":
        import onnx
        import onnxruntime as ort

        try:
            proto = onnx.load(str(p), load_external_data=False)
            session = ort.InferenceSession(str(p), providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnx/onnxruntime raise many types for a bad file
            raise ModelError(f"cannot read ONNX model {p}: {str(exc).splitlines()[0][:200]}") from None
        out_shape = session.get_outputs()[0].shape
        channels = out_shape[1] if len(out_shape) == 4 and isinstance(out_shape[1], int) else None
        meta = parse_metadata({e.key: e.value for e in proto.metadata_props}, num_outputs=channels)
        name = session.get_inputs()[0].name

        def run(x: np.ndarray) -> np.ndarray:
            return session.run(None, {name: x})[0]

        return Predictor(
            p, "onnx", meta.class_names, meta.class_colors, meta.tile_size, meta.tiles_overlap, None, run,
            tuple(meta.mean), tuple(meta.std), meta.resolution_cm,
        )  # fmt: skip
    ckpt = load_checkpoint(p)
    net = model_from_checkpoint(ckpt, str(p))
    return Predictor(
        p,
        "torch",
        list(ckpt["class_names"]),
        list(ckpt["class_colors"]),
        int(ckpt.get("tile_size") or 256),
        int(ckpt["tiles_overlap"]) if ckpt.get("tiles_overlap") is not None else DEFAULT_OVERLAP_PERCENT,
        ckpt,
        _torch_runner(probability_model(net, checkpoint_flips(ckpt, str(p))), pick_device(device)),
        tuple(ckpt.get("mean") or MEAN),
        tuple(ckpt.get("std") or STD),
        float(ckpt["resolution_cm"]) if ckpt.get("resolution_cm") else None,
    )
