"""SegNet speed on 256x256 tiles: training (CPU) and inference in torch, onnxruntime fp32 and int8.

    .venv/bin/python -m benchmarks.bench_training [--widths 1.0,0.5] [--batch 4] [--repeats 2]

Tiles are cut from a real Dubai image (../shared/data/dubai-aerial). The
weights are freshly initialised (speed does not depend on them); int8 is
onnxruntime static quantisation calibrated on those tiles, as
``training.export --int8`` does. Prints tiles/s per width and the ratios.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from satseg_plugin.inference.imageio import read_image, to_rgb
from satseg_plugin.inference.metadata import ModelMetadata, build_metadata
from training.data import normalize
from training.export import export_onnx, quantize_int8
from training.model import SegNet, SoftmaxSegNet

ROOT = Path(__file__).resolve().parents[1]
IMAGE = ROOT.parent / "shared" / "data" / "dubai-aerial" / "tile7" / "images" / "image_part_001.jpg"
TILE = 256
CLASSES = 6


def real_tiles(n: int) -> np.ndarray:
    """``n`` uint8 256x256 RGB tiles from a real aerial image."""
    image, _ = to_rgb(read_image(IMAGE))
    tiles = [
        image[y : y + TILE, x : x + TILE]
        for y in range(0, image.shape[0] - TILE + 1, TILE)
        for x in range(0, image.shape[1] - TILE + 1, TILE)
    ]
    return np.stack(tiles[:n])


def rate(fn, tiles_per_call: int, repeats: int) -> float:
    fn()  # warm-up: first calls allocate and pick kernels
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    return tiles_per_call * repeats / (time.perf_counter() - t0)


def bench_width(
    width: float, x: np.ndarray, labels: torch.Tensor, repeats: int, work: Path
) -> dict[str, float]:
    torch.manual_seed(0)
    net = SegNet(CLASSES, width)
    opt = torch.optim.SGD(net.parameters(), lr=0.001, momentum=0.9, weight_decay=5e-4)
    crit = torch.nn.CrossEntropyLoss(ignore_index=255)
    xt = torch.from_numpy(x)

    def train_step() -> None:
        net.train()
        loss = crit(net(xt), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()

    out = {"train": rate(train_step, len(x), repeats)}
    net.eval()
    model = SoftmaxSegNet(net).eval()

    def torch_infer() -> None:
        with torch.inference_mode():
            model(xt)

    out["torch"] = rate(torch_infer, len(x), repeats)
    props = build_metadata(
        ModelMetadata(class_names=[f"c{i}" for i in range(CLASSES)], class_colors=["#000000"] * 6)
    )
    fp32 = work / f"w{width}.onnx"
    int8 = work / f"w{width}.int8.onnx"
    export_onnx(net, TILE, fp32, props)
    quantize_int8(fp32, int8, [x[i : i + 2] for i in range(0, len(x), 2)], props)
    for name, path in (("ort_fp32", fp32), ("ort_int8", int8)):
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        out[name] = rate(lambda s=session: s.run(None, {"image": x}), len(x), repeats)
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--widths", default="1.0,0.5", help="width multipliers, comma-separated (default: 1.0,0.5)"
    )
    p.add_argument("--batch", type=int, default=4, help="tiles per call (default: 4)")
    p.add_argument("--repeats", type=int, default=2, help="timed calls after a warm-up (default: 2)")
    args = p.parse_args(argv)
    widths = [float(w) for w in args.widths.split(",")]
    tiles = real_tiles(args.batch)
    x = normalize(tiles)
    labels = torch.randint(0, CLASSES, (len(x), TILE, TILE))
    print(f"torch {torch.__version__}, onnxruntime {ort.__version__}, {torch.get_num_threads()} threads; "
          f"{len(x)} real {TILE}x{TILE} tiles per call, {args.repeats} timed calls")  # fmt: skip
    results = {}
    with tempfile.TemporaryDirectory() as work:
        for w in widths:
            t0 = time.perf_counter()
            results[w] = bench_width(w, x, labels, args.repeats, Path(work))
            print(f"width {w}: done in {time.perf_counter() - t0:.0f}s", flush=True)
    print()
    print(f"{'width':>6} {'train':>9} {'torch':>9} {'ort fp32':>9} {'ort int8':>9}   tiles/s   "
          f"{'ort/torch':>9} {'int8/fp32':>9}")  # fmt: skip
    for w, r in results.items():
        print(f"{w:>6} {r['train']:>9.2f} {r['torch']:>9.2f} {r['ort_fp32']:>9.2f} {r['ort_int8']:>9.2f}             "
              f"{r['ort_fp32'] / r['torch']:>9.2f} {r['ort_int8'] / r['ort_fp32']:>9.2f}")  # fmt: skip
    if len(results) > 1:
        a, b = widths[0], widths[1]
        print(f"\nwidth {b} vs {a}: " + ", ".join(
            f"{k} x{results[b][k] / results[a][k]:.2f}" for k in ("train", "torch", "ort_fp32", "ort_int8")
        ))  # fmt: skip


if __name__ == "__main__":
    main()
