"""Export a SegNet checkpoint to ONNX, with metadata, checked against torch.

    python -m training.export runs/NAME/best.pt --out model.onnx [--int8]

The graph (``torch.onnx.export(..., dynamo=True)``, opset 18) takes ``image``
float32 ``[N, 3, H, W]`` (N dynamic, H and W any multiple of 32: SegNet is fully
convolutional; RGB normalised with MEAN/STD; a model trained on an N-band dataset
``[N, B, H, W]`` standardised with the dataset's band statistics, which the
metadata carries with ``input_bands``) and returns ``probabilities`` float32
``[N, C, H, W]`` (softmax). Its ``tile_size`` metadata is the window the plugin
runs (``--window``, 512 px by default, whatever the training tiles were), with
an overlap that keeps the checkpoint's margin in pixels: the 32 px that are 13 %
of a 256-px training tile become 7 % (36 px, the least whole percent with at
least 32) of a 512-px window, for the same classes (``benchmarks/README.md``).
The file carries the
metadata of ``satseg_plugin.inference.metadata`` (Deepness keys and ours). The
export succeeds only when onnxruntime's output on real dataset tiles agrees with
torch's: mean |difference| at most ``--tolerance`` (1e-4) and the same class on
at least ``--min-agreement`` (99.9 %) of the pixels; otherwise no file is left.
The largest single difference is printed but not judged: in a trained network,
two nearly equal values in a max-pooling window can swap places between the two
runtimes, and the unpooling then moves a value a pixel over, which can move the
probabilities of a patch of pixels by 1e-2 while the others agree to 1e-7. One
such patch in a 512-px window of a shipped-recipe model gave a mean of 1.6e-5
with 99.998 % of the pixels of the same class, so the mean may reach 1e-4; a
wrong graph (normalisation, padding, unpooling) is off by far more.

``--flips 2`` (or 4) puts test-time flips into the graph: each window's
probabilities are the mean over it and its mirror images (``FlipAveraged``),
for that many times the model's time; the default is the checkpoint's
``test_time_flips`` (a shipped ``.pt`` carries its ONNX file's), else none.

``--int8`` also writes ``<out>.int8.onnx``: onnxruntime static quantisation
(QDQ, per-channel int8 weights) calibrated on training tiles, and prints its
speed and validation mIoU against the float model.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from satseg_plugin.inference.atomic import atomic_path
from satseg_plugin.inference.cli import DefaultsHelpFormatter, run_cli
from satseg_plugin.inference.errors import ModelError, SatsegError
from satseg_plugin.inference.metadata import DEFAULT_OVERLAP_PERCENT, MEAN, STD, ModelMetadata, build_metadata
from satseg_plugin.inference.params import PARAMETERS
from satseg_plugin.inference.tileplan import WINDOW_STEP, overlap_pixels

from .checkpoint import FLIPS_KEY, checkpoint_flips, load_checkpoint, model_from_checkpoint
from .data import checkpoint_split, load_dataset, normalize, read_tiles
from .metrics import confusion_matrix, scores
from .model import FLIPS, probability_model
from .predictor import load_predictor

OPSET = 18
TOLERANCE = 1e-4
MIN_AGREEMENT = 0.999
#: The window the exported model runs in the plugin by default (``tile_size`` metadata).
DEFAULT_WINDOW = 512


def export_overlap(ckpt: dict, given: float | None, window: int | None = None) -> int:
    """The ``tiles_overlap`` to export, a percent of ``window`` (default: the checkpoint's tile size).

    ``given`` (``--overlap``) as it is; else the least percent whose overlap on
    ``window`` keeps the pixels that the checkpoint's ``tiles_overlap`` (or the
    default) gives its training tiles: the margin a window's edge needs is a
    number of pixels, not a share. ``ParameterError`` (the segment run's
    message, ``inference.params``) outside [0, 100).
    """
    if given is not None:
        return int(PARAMETERS["overlap_percent"].check(given))
    stored = ckpt.get("tiles_overlap")
    percent = int(
        PARAMETERS["overlap_percent"].check(stored if stored is not None else DEFAULT_OVERLAP_PERCENT)
    )
    tile = int(ckpt.get("tile_size") or 256)
    if window is None or window == tile:
        return percent
    margin = overlap_pixels(tile, percent)
    return next(p for p in range(100) if overlap_pixels(window, p) >= margin)


def check_window(window: int) -> int:
    """``window`` when it is a positive multiple of ``WINDOW_STEP``; else ``SatsegError``."""
    if window < WINDOW_STEP or window % WINDOW_STEP:
        raise SatsegError(f"--window must be a multiple of {WINDOW_STEP} px (e.g. 256 or 512), not {window}")
    return window


def metadata_for(
    ckpt: dict,
    overlap: int,
    description: str | None = None,
    extra: dict[str, str] | None = None,
    window: int | None = None,
) -> dict[str, str]:
    """The ONNX ``metadata_props`` of a checkpoint (all values JSON strings), with an optional
    ``description``, ``extra`` keys (JSON strings too) and the ``window`` it runs (default: its tile size)."""
    return build_metadata(
        ModelMetadata(
            class_names=list(ckpt["class_names"]),
            class_colors=list(ckpt["class_colors"]),
            tile_size=window or int(ckpt.get("tile_size") or 256),
            tiles_overlap=overlap,
            resolution_cm=ckpt.get("resolution_cm"),
            mean=tuple(ckpt.get("mean") or (0.485, 0.456, 0.406)),
            std=tuple(ckpt.get("std") or (0.229, 0.224, 0.225)),
            zoom=ckpt.get("zoom"),
            description=description,
            extra=dict(extra or {}),
            input_bands=tuple(ckpt["input_bands"]) if ckpt.get("input_bands") else None,
        )
    )


def parse_meta_option(text: str) -> tuple[str, str]:
    """``KEY=JSON`` -> ``(KEY, JSON)``; ``SatsegError`` when it is not that or KEY is a standard key."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise SatsegError(f"--meta needs KEY=JSON, not {text!r}")
    try:
        json.loads(value)
    except json.JSONDecodeError:
        raise SatsegError(
            f"--meta {key}: the value is not JSON ({value!r}; quote strings: '\"text\"')"
        ) from None
    if key in build_metadata(ModelMetadata(class_names=["x"], class_colors=["#000000"], description="x")):
        raise SatsegError(f"--meta {key}: a standard key, set from the checkpoint (or --description)")
    return key, value


def _set_metadata(proto, props: dict[str, str]) -> None:
    del proto.metadata_props[:]
    for k, v in props.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v


def _check_onnxscript() -> None:
    """Fail clearly when onnxscript is too old for this torch (torch 2.13 needs 0.7 or newer)."""
    import importlib

    try:
        importlib.import_module("torch.onnx._internal._lazy_import").onnxscript_apis.get_torchlib_ops  # noqa: B018
    except (ModuleNotFoundError, AttributeError) as exc:
        import onnxscript

        raise SatsegError(
            f"onnxscript {onnxscript.__version__} is too old for torch {torch.__version__}'s ONNX exporter "
            f"({exc}); install the version in requirements.txt (pip install -r requirements.txt)"
        ) from None


def export_onnx(
    net: torch.nn.Module, tile_size: int, out: Path, props: dict[str, str], flips: int = 1
) -> None:
    """Write ``probability_model(net, flips)`` as a self-contained ONNX file with ``props`` as metadata.

    With ``flips`` > 1 the mean over the mirror images is inside the graph, so
    every program that runs the file (the plugin, Deepness, onnxruntime alone)
    gets it.

    The input's band count is the network's (``SegNet.in_channels``): the plugin reads it from the graph.
    Height and width are dynamic (multiples of ``WINDOW_STEP``); ``tile_size`` only shapes the example.
    """
    import onnx

    model = probability_model(net, flips).eval()
    # torch.export specialises a dimension of size 1: a 32-px example would fix rows at 1.
    side = max(tile_size, 2 * WINDOW_STEP)
    example = (torch.zeros(2, int(getattr(net, "in_channels", 3)), side, side),)
    # The exporter logs every step and onnx_ir warns about empty attributes: noise for a user.
    logging.getLogger("onnx_ir").setLevel(logging.ERROR)
    logging.getLogger("onnxscript").setLevel(logging.ERROR)
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _check_onnxscript()
        program = torch.onnx.export(
            model,
            example,
            dynamo=True,
            opset_version=OPSET,
            input_names=["image"],
            output_names=["probabilities"],
            dynamic_shapes={
                "image": {
                    0: torch.export.Dim("batch", min=1),
                    2: WINDOW_STEP * torch.export.Dim("rows", min=1, max=512),
                    3: WINDOW_STEP * torch.export.Dim("columns", min=1, max=512),
                }
            },
            verbose=False,
        )
    if program is None:
        raise ModelError("torch.onnx.export returned no program")
    proto = program.model_proto
    _set_metadata(proto, props)
    with atomic_path(out) as tmp:
        onnx.save_model(proto, str(tmp))  # one file: the weights stay inside (< 2 GB)


@dataclass(frozen=True)
class Parity:
    """How closely onnxruntime's probabilities follow torch's on the same tiles."""

    max_abs: float
    mean_abs: float
    agreement: float  # share of pixels whose most probable class is the same

    def passes(self, tolerance: float, min_agreement: float) -> bool:
        """Whether the mean difference is within ``tolerance`` and the classes agree enough."""
        return self.mean_abs <= tolerance and self.agreement >= min_agreement

    def describe(self) -> str:
        return (
            f"|onnxruntime - torch| mean {self.mean_abs:.2e}, max {self.max_abs:.2e}; "
            f"same class on {100 * self.agreement:.4f} % of the pixels"
        )


def parity(
    net: torch.nn.Module,
    onnx_path: Path,
    tiles: np.ndarray,
    mean: Sequence[float] = MEAN,
    std: Sequence[float] = STD,
    flips: int = 1,
) -> Parity:
    """Compare torch (``probability_model(net, flips)``) and onnxruntime probabilities on uint8
    ``tiles`` standardised with ``mean``/``std``."""
    import onnxruntime as ort

    x = normalize(tiles, mean, std)
    with torch.inference_mode():
        ref = probability_model(net, flips).eval()(torch.from_numpy(x)).numpy()
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = session.run(["probabilities"], {"image": x})[0]
    if got.shape != ref.shape:
        raise ModelError(f"the ONNX model outputs {got.shape}, torch {ref.shape}")
    return compare(ref, got)


def compare(ref: np.ndarray, got: np.ndarray) -> Parity:
    """``Parity`` of probabilities ``got`` against ``ref`` (both ``[N, C, H, W]``)."""
    diff = np.abs(got - ref)
    agreement = float((got.argmax(axis=1) == ref.argmax(axis=1)).mean())
    return Parity(float(diff.max()), float(diff.mean()), agreement)


def mosaic(tiles: np.ndarray, size: int) -> np.ndarray:
    """One ``[1, size, size, B]`` image of real pixels: ``tiles`` (``[n, S, S, B]``) side by side, repeated."""
    n, tile = len(tiles), tiles.shape[1]
    k = -(-size // tile)
    rows = [np.concatenate([tiles[(r * k + c) % n] for c in range(k)], axis=1) for r in range(k)]
    return np.concatenate(rows, axis=0)[None, :size, :size]


class _Calibration:
    """onnxruntime ``CalibrationDataReader`` over batches of normalised tiles."""

    def __init__(self, batches: Iterable[np.ndarray]) -> None:
        self._batches: Iterator[np.ndarray] = iter(batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {"image": batch}


def cached_batches(
    cache: Path, indices: list[int], batch: int = 4, mean: Sequence[float] = MEAN, std: Sequence[float] = STD
) -> Iterator[np.ndarray]:
    """Normalised ``[n, B, S, S]`` batches of the cached tiles at ``indices``."""
    for i in range(0, len(indices), batch):
        yield normalize(read_tiles(cache, indices[i : i + batch])[0], mean, std)


def quantize_int8(onnx_path: Path, out: Path, batches: Iterable[np.ndarray], props: dict[str, str]) -> None:
    """Static int8 quantisation (QDQ, per-channel weights) calibrated on ``batches`` of real tiles."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    CalibrationDataReader.register(_Calibration)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".quantize-") as work, atomic_path(out) as tmp:
        pre = Path(work) / "pre.onnx"  # shape-inferred copy: an intermediate, never an output
        quant_pre_process(str(onnx_path), str(pre), skip_symbolic_shape=True)
        quantize_static(
            str(pre),
            str(tmp),
            _Calibration(batches),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
        )
        proto = onnx.load(str(tmp))
        _set_metadata(proto, props)
        onnx.save_model(proto, str(tmp))


def _rate_and_miou(path: Path, images: np.ndarray, labels: np.ndarray, batch: int) -> tuple[float, float]:
    pred = load_predictor(path)
    pred.predict(images[:1])  # warm-up: the first run allocates
    cm = np.zeros((pred.num_classes,) * 2, np.int64)
    t0 = time.perf_counter()
    for i in range(0, len(images), batch):
        probs = pred.predict(images[i : i + batch])
        cm += confusion_matrix(labels[i : i + batch], probs.argmax(1), pred.num_classes)
    rate = len(images) / (time.perf_counter() - t0)
    return rate, float(scores(cm)["miou"])  # type: ignore[arg-type]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m training.export",
        description="Export a SegNet checkpoint to ONNX with satseg/Deepness metadata, checked with onnxruntime.",
        formatter_class=DefaultsHelpFormatter,
    )
    p.add_argument("weights", type=Path, help="checkpoint to export (runs/NAME/best.pt)")
    p.add_argument("--out", type=Path, required=True, help="ONNX file to write")
    p.add_argument(
        "--data", type=Path, default=None,
        help="dataset folder whose tiles check the export (default: the one the checkpoint was trained on)",
    )  # fmt: skip
    p.add_argument(
        "--window", type=int, default=DEFAULT_WINDOW, metavar="PX",
        help="the window the plugin runs the model on (tile_size metadata), a multiple of 32; the graph "
        "takes any multiple of 32, so this only sets the default",
    )  # fmt: skip
    p.add_argument(
        "--overlap",
        type=int,
        default=None,
        help="tiles_overlap metadata, percent of --window (default: the percent that keeps the pixels "
        f"of the checkpoint's tiles_overlap, which train stores; {DEFAULT_OVERLAP_PERCENT} %% of a "
        "training tile for a checkpoint without one)",
    )
    p.add_argument("--check-tiles", type=int, default=4, help="validation tiles for the parity check")
    p.add_argument(
        "--tolerance", type=float, default=TOLERANCE, help="largest allowed mean |onnxruntime - torch|"
    )
    p.add_argument(
        "--min-agreement", type=float, default=MIN_AGREEMENT,
        help="smallest allowed share of pixels given the same class by onnxruntime and torch",
    )  # fmt: skip
    p.add_argument(
        "--description", default=None,
        help="a line of text stored as the model's 'description' metadata (what it is, where and when trained)",
    )  # fmt: skip
    p.add_argument(
        "--meta", action="append", default=[], metavar="KEY=JSON",
        help="an extra metadata key with a JSON value, e.g. 'training_area={\"bbox\": [1, 2, 3, 4]}' (repeatable)",
    )  # fmt: skip
    p.add_argument(
        "--flips", type=int, choices=FLIPS, default=None,
        help="average each window's probabilities over this many mirror images of it, inside the graph: "
        "2 = as it is and mirrored left-right, 4 = also up-down and both; costs as many times the model's "
        "time; worth it only where measured (models/satseg-landcover.md). Default: the checkpoint's "
        f"{FLIPS_KEY}, else 1",
    )  # fmt: skip
    p.add_argument("--int8", action="store_true", help="also write OUT.int8.onnx (static int8 quantisation)")
    p.add_argument("--calibration-tiles", type=int, default=32, help="training tiles that calibrate --int8")
    p.add_argument("--eval-tiles", type=int, default=64, help="validation tiles for --int8's speed and mIoU")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    ckpt = load_checkpoint(args.weights)
    window = check_window(args.window)
    overlap = export_overlap(ckpt, args.overlap, window)
    net = model_from_checkpoint(ckpt, str(args.weights))
    flips = args.flips or checkpoint_flips(ckpt, str(args.weights))
    data = args.data or (Path(ckpt["data"]) if ckpt.get("data") else None)
    if data is None or not data.is_dir():
        raise SatsegError(
            f"the parity check needs real tiles: give --data (the dataset folder; {data} not found)"
        )
    ds = load_dataset(data)
    if ds.class_names != list(ckpt["class_names"]):
        raise ModelError(
            f"{args.weights} has classes {ckpt['class_names']}, the dataset {data} has {ds.class_names}"
        )
    if ds.channels != int(ckpt.get("channels") or 3):
        raise ModelError(
            f"{args.weights} takes {ckpt.get('channels') or 3} bands, the dataset {data} has {ds.channels}"
        )
    # The check tiles are standardised as the model was trained, as its metadata says.
    mean, std = tuple(ckpt.get("mean") or MEAN), tuple(ckpt.get("std") or STD)
    train_idx, val_idx = checkpoint_split(ds.groups, ckpt)
    check_idx = (val_idx or train_idx)[: max(1, args.check_tiles)]
    extra = dict(parse_meta_option(m) for m in args.meta)
    if FLIPS_KEY in extra:  # the key must say what the graph does
        raise SatsegError(f"--meta {FLIPS_KEY}: set by --flips, which also builds the graph for it")
    if flips > 1:  # the graph does it; the key tells a reader (diagnostics, a card) why it costs more
        extra[FLIPS_KEY] = json.dumps(flips)
    props = metadata_for(ckpt, overlap, args.description, extra, window)
    out: Path = args.out
    if out.suffix.lower() != ".onnx":
        raise SatsegError(f"--out should end in .onnx: {out}")

    mirrored = f", probabilities averaged over {flips} mirror images" if flips > 1 else ""
    print(
        f"exporting {args.weights} (width {ckpt['width']}, {len(ckpt['class_names'])} classes{mirrored}) to {out}"
    )
    export_onnx(net, ds.tile_size, out, props, flips)
    tiles = read_tiles(ds.cache, check_idx)[0]
    checks = [(f"{len(check_idx)} real tiles", tiles)]
    if window != ds.tile_size:  # and the window the plugin will run, made of the same pixels
        checks.append((f"a {window}-px window of them", mosaic(tiles, window)))
    for what, images in checks:
        check = parity(net, out, images, mean, std, flips)
        if not check.passes(args.tolerance, args.min_agreement):
            out.unlink()
            raise ModelError(
                f"the ONNX export disagrees with torch on {what} ({check.describe()}; allowed: mean "
                f"<= {args.tolerance:g}, same class >= {100 * args.min_agreement:g} %); no file written"
            )
        print(f"parity on {what}: {check.describe()}")
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB)")

    if args.int8:
        int8 = out.with_name(out.stem + ".int8.onnx")
        rng = np.random.default_rng(0)
        calib = sorted(rng.permutation(train_idx)[: args.calibration_tiles].tolist())
        print(f"quantising to int8, calibrated on {len(calib)} training tiles ...")
        quantize_int8(out, int8, cached_batches(ds.cache, calib, mean=mean, std=std), props)
        images, labels = read_tiles(ds.cache, (val_idx or train_idx)[: args.eval_tiles])
        fp_rate, fp_miou = _rate_and_miou(out, images, labels, 8)
        q_rate, q_miou = _rate_and_miou(int8, images, labels, 8)
        print(f"wrote {int8} ({int8.stat().st_size / 1e6:.1f} MB)")
        print(f"on {len(images)} validation tiles:  float32 {fp_rate:.1f} tiles/s, mIoU {fp_miou:.4f}")
        print(
            f"{'':>{len(str(len(images))) + 23}}int8    {q_rate:.1f} tiles/s, mIoU {q_miou:.4f}  "
            f"(x{q_rate / fp_rate:.2f} speed, {q_miou - fp_miou:+.4f} mIoU)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
