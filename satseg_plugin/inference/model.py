"""Load an ONNX segmentation model, check it is one, and run it on image batches."""

from __future__ import annotations

import mmap
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ModelError
from .metadata import ModelMetadata, parse_metadata

#: Where the shipped default model lives: inside the plugin, then the repository's models/.
_PACKAGE = Path(__file__).resolve().parent.parent
DEFAULT_MODEL_DIRS = (_PACKAGE / "models", _PACKAGE.parent / "models")
DEFAULT_MODEL_NAME = "satseg-buildings.onnx"


def default_model_path() -> Path | None:
    """Return the shipped default model (``satseg-buildings.onnx``), or None if not installed."""
    for folder in DEFAULT_MODEL_DIRS:
        candidate = folder / DEFAULT_MODEL_NAME
        if candidate.is_file():
            return candidate
    return None


def _dim(value: object) -> int | None:
    """An ONNX shape entry as an int, or None when it is symbolic ("N", "height")."""
    return value if isinstance(value, int) and value > 0 else None


@dataclass(frozen=True)
class TensorInfo:
    """A model input or output as onnxruntime describes it: name, shape (ints, names or None), type."""

    name: str
    shape: list[int | str | None]
    type: str  # "tensor(float)", as onnxruntime spells it


@dataclass(frozen=True)
class ModelInfo:
    """What a model file says about itself, checked as ``SegModel.load`` checks a session.

    ``props`` is the ModelProto's ``metadata_props`` (onnxruntime's ``custom_metadata_map``).
    """

    path: Path
    input: TensorInfo
    output: TensorInfo
    props: dict[str, str]
    metadata: ModelMetadata
    channels: int


def check_model(
    path: Path,
    inputs: list[TensorInfo],
    outputs: list[TensorInfo],
    props: dict[str, str],
    allow_generic_names: bool = False,
) -> ModelInfo:
    """Check that inputs, outputs and metadata make a segmentation model; ``ModelError`` in words if not.

    One set of checks for both ways a model is read: from an onnxruntime session
    (``SegModel.load``) and from the file alone (``read_model_info``).
    """
    name = path.name
    if len(inputs) != 1:
        raise ModelError(f"{name} takes {len(inputs)} inputs; a segmentation model takes one image batch")
    shape = inputs[0].shape
    if len(shape) != 4:
        raise ModelError(
            f"{name} takes input of shape {shape}; a segmentation model takes [N, bands, H, W] images"
        )
    if "float" not in inputs[0].type:
        raise ModelError(f"{name} takes {inputs[0].type}, not float images")
    if not outputs:
        raise ModelError(f"{name} has no output; a segmentation model outputs [N, classes, H, W]")
    out_shape = outputs[0].shape
    if len(out_shape) != 4:
        raise ModelError(f"{name} outputs shape {out_shape}; a segmentation model outputs [N, classes, H, W]")
    meta = parse_metadata(props, _dim(out_shape[1]), allow_generic_names)
    if meta.model_type.lower() not in ("segmentor", "segmentation"):
        raise ModelError(f"{name} is a '{meta.model_type}' model, not a segmentation model (Segmentor)")
    channels = _dim(shape[1]) or meta.band_count or 3
    for key, vec in (("standardization_mean", meta.mean), ("standardization_std", meta.std)):
        if len(vec) not in (1, channels):
            raise ModelError(f"{name} takes {channels} input bands but its '{key}' has {len(vec)} values")
    if meta.input_bands and len(meta.input_bands) != channels:
        raise ModelError(
            f"{name} takes {channels} input bands but its 'input_bands' names {len(meta.input_bands)}"
        )
    return ModelInfo(path, inputs[0], outputs[0], dict(props), meta, channels)


def read_model_info(path: str | os.PathLike[str], allow_generic_names: bool = False) -> ModelInfo:
    """Read a model's metadata, input and output from the ``.onnx`` file, without onnxruntime.

    Why not a session: onnxruntime has no metadata-only API, and a session builds and
    optimises the whole graph (and takes its memory) just to answer "which classes?". The
    dialog describes the chosen model and labels every model it lists; with sessions, opening
    it and clicking Run cost 1 + (models listed) + 1 sessions, now the run's one. Why not the
    ``onnx`` package: the plugin does not depend on it (nor on protobuf). Handing the dialog's
    session to the run was the other way: it keeps a session in memory while the dialog is open
    and still needs a file read for the listed models.

    The reader walks the ModelProto's protobuf fields over a memory map: ``metadata_props``
    (field 14: key 1, value 2) and the graph's (field 7) ``input`` (11) less its ``initializer``
    names (5), as onnxruntime lists inputs, and ``output`` (12); nodes and weights are skipped by
    their length, so only a few pages of the file are read. The checks are ``check_model``'s,
    those ``SegModel.load`` makes; a graph onnxruntime cannot run shows only at the run.
    """
    p = Path(path)
    if not p.is_file():
        raise ModelError(f"the model file {p} does not exist")
    try:
        with open(p, "rb") as f:
            if os.fstat(f.fileno()).st_size == 0:
                raise _MalformedError("empty file")
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                props, inputs, outputs = _read_model_proto(buf)
    except (_MalformedError, UnicodeDecodeError) as exc:
        raise ModelError(f"{p.name} is not a usable ONNX model ({exc})") from None
    except OSError as exc:
        raise ModelError(f"{p.name} cannot be read: {exc.strerror or exc}") from None
    return check_model(p, inputs, outputs, props, allow_generic_names)


class _MalformedError(Exception):
    """The bytes are not a protobuf ModelProto (or are cut short)."""


#: TensorProto.DataType numbers to onnxruntime's type names.
_ELEM_TYPES = {
    1: "float", 2: "uint8", 3: "int8", 4: "uint16", 5: "int16", 6: "int32", 7: "int64", 8: "string",
    9: "bool", 10: "float16", 11: "double", 12: "uint32", 13: "uint64", 14: "complex64",
    15: "complex128", 16: "bfloat16",
}  # fmt: skip


def _varint(buf: Any, pos: int, end: int) -> tuple[int, int]:
    """The varint at ``pos`` and the position after it."""
    result = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise _MalformedError("cut short or not protobuf")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7


def _fields(buf: Any, start: int, end: int) -> Any:
    """Yield ``(field, wire, value, stop)`` for the message in ``buf[start:end]``.

    ``value`` is a varint's value, or where a length-delimited field's bytes start (``stop``:
    where they end); fixed-size fields are skipped. Anything else is ``_MalformedError``.
    """
    pos = start
    while pos < end:
        key, pos = _varint(buf, pos, end)
        field, wire = key >> 3, key & 7
        if field == 0:
            raise _MalformedError("not protobuf")
        if wire == 0:
            value, pos = _varint(buf, pos, end)
            yield field, wire, value, pos
            continue
        if wire == 2:
            size, pos = _varint(buf, pos, end)
            if pos + size > end:
                raise _MalformedError("cut short")
            yield field, wire, pos, pos + size
            pos += size
        elif wire in (1, 5):
            pos += 8 if wire == 1 else 4
        else:
            raise _MalformedError("not protobuf")
    if pos != end:
        raise _MalformedError("cut short")


def _text(buf: Any, start: int, stop: int) -> str:
    return bytes(buf[start:stop]).decode("utf-8")


def _value_info(buf: Any, start: int, end: int) -> TensorInfo:
    """A ValueInfoProto (name 1, type 2: TypeProto.tensor_type 1: elem_type 1, shape 2: dim 1)."""
    name, elem, shape = "", 0, []
    for field, wire, value, stop in _fields(buf, start, end):
        if field == 1 and wire == 2:
            name = _text(buf, value, stop)
        elif field == 2 and wire == 2:
            for f2, w2, v2, s2 in _fields(buf, value, stop):
                if f2 == 1 and w2 == 2:  # a tensor type; sequences and maps are not images
                    for f3, w3, v3, s3 in _fields(buf, v2, s2):
                        if f3 == 1 and w3 == 0:
                            elem = v3
                        elif f3 == 2 and w3 == 2:
                            for f4, w4, v4, s4 in _fields(buf, v3, s3):
                                if f4 == 1 and w4 == 2:
                                    shape.append(_dimension(buf, v4, s4))
    kind = _ELEM_TYPES.get(elem, "undefined")
    return TensorInfo(name, shape, f"tensor({kind})")


def _dimension(buf: Any, start: int, end: int) -> int | str | None:
    """A TensorShapeProto.Dimension: ``dim_value`` (1), ``dim_param`` (2) or neither (None)."""
    dim: int | str | None = None
    for field, wire, value, stop in _fields(buf, start, end):
        if field == 1 and wire == 0:
            dim = value - (1 << 64) if value >= 1 << 63 else value
        elif field == 2 and wire == 2:
            dim = _text(buf, value, stop)
    return dim


def _read_model_proto(buf: Any) -> tuple[dict[str, str], list[TensorInfo], list[TensorInfo]]:
    """``metadata_props``, the graph's inputs that are not initializers, and its outputs."""
    props: dict[str, str] = {}
    graph: tuple[int, int] | None = None
    for field, wire, value, stop in _fields(buf, 0, len(buf)):
        if field == 7 and wire == 2:
            graph = (value, stop)
        elif field == 14 and wire == 2:
            key = text = ""
            for f2, w2, v2, s2 in _fields(buf, value, stop):
                if f2 == 1 and w2 == 2:
                    key = _text(buf, v2, s2)
                elif f2 == 2 and w2 == 2:
                    text = _text(buf, v2, s2)
            props[key] = text  # a key given twice: the last one, as onnxruntime keeps it
    if graph is None:
        raise _MalformedError("it has no graph")
    inputs: list[TensorInfo] = []
    outputs: list[TensorInfo] = []
    weights: set[str] = set()
    for field, wire, value, stop in _fields(buf, *graph):
        if wire != 2:
            continue
        if field == 11:
            inputs.append(_value_info(buf, value, stop))
        elif field == 12:
            outputs.append(_value_info(buf, value, stop))
        elif field == 5:  # an initializer (TensorProto): only its name (field 8)
            for f2, w2, v2, s2 in _fields(buf, value, stop):
                if f2 == 8 and w2 == 2:
                    weights.add(_text(buf, v2, s2))
    return props, [i for i in inputs if i.name not in weights], outputs


@dataclass
class SegModel:
    """An onnxruntime session of a segmentation model plus its metadata.

    ``run`` takes normalised float32 ``[N, 3, H, W]`` batches and returns
    ``[N, C, H, W]`` class probabilities. A model whose first batch is not
    probabilities (values outside 0..1, or not summing to 1) outputs logits and
    gets a softmax; NaN or infinite values, or values outside 0..1 from a model
    whose first batch was probabilities, are a ``ModelError``: never heatmaps
    or classes made of them.
    """

    path: Path
    session: Any
    metadata: ModelMetadata
    input_name: str
    output_name: str
    fixed_batch: int | None
    fixed_size: tuple[int, int] | None
    _softmax: bool | None = None  # decided on the first batch: does the model output logits?
    channels: int = 3  # input channels: 3 for RGB, 4 for RGB + near-infrared, ...
    windows_run: int = 0  # windows passed through the model so far

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        allow_generic_names: bool = False,
        providers: list[str] | None = None,
        threads: int | None = None,
    ) -> SegModel:
        """Open ``path`` with onnxruntime and read its metadata.

        Raises ``ModelError`` (in words for a GIS user) when the file is missing,
        is not an ONNX model, takes anything but ``[N, 3, H, W]``, outputs a
        channel count different from its class names, or has no class names
        (unless ``allow_generic_names``). ``threads`` caps onnxruntime's threads
        (default: one per core), for several worker processes on one machine.
        """
        import onnxruntime as ort

        p = Path(path)
        if not p.is_file():
            raise ModelError(f"the model file {p} does not exist")
        options = ort.SessionOptions()
        options.log_severity_level = 3  # onnxruntime's warnings are not the user's business
        if threads:
            options.intra_op_num_threads = int(threads)
        # Idle worker threads sleep instead of spinning: the fetch and writer threads (and QGIS)
        # need those cores between batches. Bare session.run on 2 cores: the same speed on an idle
        # machine, 1.19x with other processes busy (median of 9 interleaved rounds).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        # The memory pattern plans one buffer for every intermediate of a window at once; without
        # it the arena reuses freed blocks. Shipped model, one 512-px window: peak 287 -> 190 MB,
        # speed within 2 % either way (benchmarks/README.md, issue 11).
        options.enable_mem_pattern = False
        chosen = providers or [
            name
            for name in ("CUDAExecutionProvider", "CPUExecutionProvider")
            if name in ort.get_available_providers()
        ]
        try:
            session = ort.InferenceSession(str(p), sess_options=options, providers=chosen)
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/... types
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelError(f"{p.name} is not a usable ONNX model ({first[:200]})") from None
        info = check_model(
            p,
            [TensorInfo(i.name, list(i.shape), i.type) for i in session.get_inputs()],
            [TensorInfo(o.name, list(o.shape), o.type) for o in session.get_outputs()],
            session.get_modelmeta().custom_metadata_map,
            allow_generic_names,
        )
        shape = info.input.shape
        h, w = _dim(shape[2]), _dim(shape[3])
        return cls(
            path=p,
            session=session,
            metadata=info.metadata,
            input_name=info.input.name,
            output_name=info.output.name,
            fixed_batch=_dim(shape[0]),
            fixed_size=(h, w) if h and w else None,
            channels=info.channels,
        )

    @property
    def window_size(self) -> int:
        """The side of the square windows the model runs on (its fixed input size, else its tile size)."""
        if self.fixed_size is not None:
            if self.fixed_size[0] != self.fixed_size[1]:
                raise ModelError(
                    f"{self.path.name} takes {self.fixed_size} windows; only square ones are supported"
                )
            return self.fixed_size[0]
        return self.metadata.tile_size

    def normalize(self, rgb: np.ndarray) -> np.ndarray:
        """Turn ``[N, H, W, bands]`` uint8 pixels into the model's ``[N, bands, H, W]`` float32 input.

        ``normalize_arithmetic``'s very operations (so the floats are the same, bit for bit),
        one band at a time into the output: no float copy of the whole batch in between.
        A 512-px window: 0.7 ms, where a table lookup per byte took 4.4 ms and the whole-batch
        arithmetic 2.9 ms (about 3 % of the model's time on 2 cores).
        """
        n, h, w, bands = rgb.shape
        mean = np.broadcast_to(np.asarray(self.metadata.mean, np.float32), (bands,))  # one value: every band
        std = np.broadcast_to(np.asarray(self.metadata.std, np.float32), (bands,))
        out = np.empty((n, bands, h, w), np.float32)
        for band in range(bands):
            o = out[:, band]
            np.multiply(rgb[..., band], np.float32(1 / 255), out=o, dtype=np.float32)
            o -= mean[band]
            o /= std[band]
        return out

    def normalize_arithmetic(self, rgb: np.ndarray) -> np.ndarray:
        """``normalize`` as arithmetic on every pixel: ``(value / 255 - mean) / std`` in float32."""
        mean = np.asarray(self.metadata.mean, np.float32).reshape(1, -1, 1, 1)
        std = np.asarray(self.metadata.std, np.float32).reshape(1, -1, 1, 1)
        x = rgb.transpose(0, 3, 1, 2).astype(np.float32) * np.float32(1 / 255)
        x -= mean
        x /= std
        return x

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Return ``[N, C, H, W]`` probabilities for a normalised ``[N, 3, H, W]`` batch."""
        if self.fixed_batch is not None and batch.shape[0] != self.fixed_batch:
            parts = [
                self.run(batch[i : i + self.fixed_batch]) for i in range(0, batch.shape[0], self.fixed_batch)
            ]
            return np.concatenate(parts)
        try:
            (out,) = self.session.run([self.output_name], {self.input_name: batch})
            self.windows_run += batch.shape[0]
        except Exception as exc:
            raise ModelError(
                f"{self.path.name} failed on a batch of shape {list(batch.shape)}: {exc}"
            ) from None
        if out.shape[1] != self.metadata.num_classes:
            raise ModelError(
                f"{self.path.name} outputs {out.shape[1]} classes but its metadata names "
                f"{self.metadata.num_classes}; the file does not belong to these class names"
            )
        if out.shape[2:] != batch.shape[2:]:
            raise ModelError(
                f"{self.path.name} outputs {out.shape[2]}x{out.shape[3]} pixels for {batch.shape[2]}x"
                f"{batch.shape[3]} input; satseg needs one class per input pixel"
            )
        lo, hi = float(out.min()), float(out.max())
        if not (np.isfinite(lo) and np.isfinite(hi)):  # NaN wins min and max: one pass each finds it
            bad = int((~np.isfinite(out)).sum())
            raise ModelError(
                f"{self.path.name} output {bad:,} NaN or infinite values on a batch of {batch.shape[0]} "
                "windows: the model is broken (or its weights are), its output cannot be used"
            )
        if self._softmax is None:  # Deepness-style models may output logits rather than probabilities
            sums = out.sum(axis=1)
            self._softmax = bool(lo < -1e-4 or hi > 1 + 1e-4 or np.abs(sums - 1).max() > 1e-3)
        elif not self._softmax and (lo < -1e-3 or hi > 1 + 1e-3):
            raise ModelError(
                f"{self.path.name} output values from {lo:.4g} to {hi:.4g}, outside 0..1, after its first "
                "windows gave probabilities: it is neither a probability nor a logit model"
            )
        if self._softmax:
            out = out - out.max(axis=1, keepdims=True)
            np.exp(out, out=out)
            out /= out.sum(axis=1, keepdims=True)
        return out.astype(np.float32, copy=False)
