"""Is a model's int8 copy faster than the model itself, on this machine? Measured, then cached.

Why measure: int8 pays only where the CPU has fast integer dot products (VNNI, say). On the
2-core AVX2 development machine one build of the models ran int8 at 0.90 of fp32, a later
one at 1.17, and an execution provider other than the CPU's can turn it around again. So the
dialog offers the int8 copy (``<name>-int8.onnx`` beside ``<name>.onnx``, as
``training.export --int8`` writes it) only where a measurement on the machine it runs on
found it faster, and says by how much.

Why this way: fp32 and int8 run the same windows in interleaved rounds (fp32 first in even
rounds, int8 first in odd ones), and the ratio is the median of each round's ratio, so a
load change on a shared machine falls on both alike. A few windows are enough to tell 0.9 from
1.2; the result is cached per model files (path, size, mtime), CPU, core count, onnxruntime
version and execution providers, so the measurement runs once per machine and model.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .atomic import write_text_atomic
from .errors import ModelError
from .params import batch_for

#: The int8 copy is offered from this speed-up on: it gives up up to half a point of mIoU,
#: and a quick measurement on a loaded machine moves by a few percent, so "about as fast"
#: (0.95 to 1.05) does not count as faster.
MIN_SPEEDUP = 1.05
ROUNDS = 3  # interleaved fp32/int8 rounds
CACHE_ENTRIES = 64  # the cache file keeps the latest entries only


@dataclass(frozen=True)
class Int8Speed:
    """A measurement: int8 runs ``ratio`` times fp32's speed (above 1: faster).

    ``fp32_s`` and ``int8_s`` are the median seconds per window.
    """

    ratio: float
    fp32_s: float
    int8_s: float
    rounds: int
    windows: int

    @property
    def offered(self) -> bool:
        """Whether the int8 copy is clearly faster here (``MIN_SPEEDUP``)."""
        return self.ratio >= MIN_SPEEDUP

    def text(self) -> str:
        """What the dialog says: ``int8: 1.12x faster on this CPU`` or why it is not offered."""
        if self.offered:
            return f"int8: {self.ratio:.2f}x faster on this CPU"
        if self.ratio >= 1:
            return f"int8 not offered: {self.ratio:.2f}x on this CPU (below {MIN_SPEEDUP:.2f}x: within noise)"
        return f"int8 not offered: {self.ratio:.2f}x on this CPU"


def int8_twin(path: str | os.PathLike[str]) -> Path | None:
    """The int8 copy ``<stem>-int8.onnx`` beside the model at ``path``, if there is one."""
    p = Path(path)
    if p.stem.endswith("-int8"):
        return None
    twin = p.with_name(f"{p.stem}-int8{p.suffix}")
    return twin if twin.is_file() else None


def int8_original(path: str | os.PathLike[str]) -> Path | None:
    """The model ``<stem>.onnx`` that the int8 copy at ``path`` (``<stem>-int8.onnx``) belongs to; None
    for a file that is not named as an int8 copy. The model itself may be missing."""
    p = Path(path)
    return p.with_name(f"{p.stem[:-5]}{p.suffix}") if p.stem.endswith("-int8") else None


def decide(fp32_times: Sequence[float], int8_times: Sequence[float], windows: int) -> Int8Speed:
    """An ``Int8Speed`` from per-round seconds of the same batch (round ``i`` of each list together).

    The ratio is the median of the rounds' ratios ``fp32 / int8``, not the ratio of totals: a
    round slowed by another process then counts once, whichever model it fell on.
    """
    if not fp32_times or len(fp32_times) != len(int8_times):
        raise ValueError("fp32 and int8 need the same number of rounds, at least one")
    if min(*fp32_times, *int8_times) <= 0:
        raise ValueError("round times must be positive")
    ratio = statistics.median(f / i for f, i in zip(fp32_times, int8_times, strict=True))
    return Int8Speed(
        ratio=float(ratio),
        fp32_s=float(statistics.median(fp32_times)) / windows,
        int8_s=float(statistics.median(int8_times)) / windows,
        rounds=len(fp32_times),
        windows=windows,
    )


def measure_int8_speed(
    fp32_path: str | os.PathLike[str],
    int8_path: str | os.PathLike[str],
    rounds: int = ROUNDS,
    windows: int | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> Int8Speed:
    """Time fp32 and int8 on the same ``windows`` random windows in ``rounds`` interleaved rounds.

    ``windows`` defaults to a run's batch of the model's windows (``batch_for``), for the speed a run gets.

    Both models are loaded as a run loads them (``SegModel.load``: same threads and providers)
    and run once untimed first (a first batch allocates). ``ModelError`` when either does
    not load or the two take different windows.
    """
    from .model import SegModel

    fp32, int8 = SegModel.load(fp32_path), SegModel.load(int8_path)
    size = fp32.window_size
    if (int8.window_size, int8.channels) != (size, fp32.channels):
        raise ModelError(f"{Path(int8_path).name} does not take the windows {Path(fp32_path).name} takes")
    windows = batch_for(size, windows)
    pixels = np.random.default_rng(0).integers(0, 256, (windows, size, size, fp32.channels), np.uint8)
    models: dict[str, SegModel] = {"fp32": fp32, "int8": int8}
    batches = {name: model.normalize(pixels) for name, model in models.items()}
    for name, model in models.items():
        model.run(batches[name])
    times: dict[str, list[float]] = {"fp32": [], "int8": []}
    for r in range(rounds):
        for name in ("fp32", "int8") if r % 2 == 0 else ("int8", "fp32"):
            start = clock()
            models[name].run(batches[name])
            times[name].append(clock() - start)
    return decide(times["fp32"], times["int8"], windows)


@functools.lru_cache(maxsize=1)
def cpu_name() -> str:
    """The CPU's model name and core count (and its instruction-set flags' digest on Linux).

    Read once per process: the dialog asks at every change of model.
    """
    name = platform.processor() or platform.machine()
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        text = ""
    lines = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    model = {k.strip(): v.strip() for k, v in lines.items()}
    if model.get("model name"):
        name = model["model name"]
    flags = model.get("flags", "")
    digest = (
        f" flags {hashlib.sha1(' '.join(sorted(flags.split())).encode()).hexdigest()[:8]}" if flags else ""
    )
    return f"{name}, {os.cpu_count()} cores{digest}"


def cache_key(fp32_path: Path, int8_path: Path) -> str:
    """What a measurement depends on: both files as they are now, the CPU and onnxruntime."""
    import onnxruntime as ort

    files = []
    for p in (fp32_path, int8_path):
        st = p.stat()
        files.append(f"{p.resolve()} {st.st_size} {st.st_mtime_ns}")
    providers = ",".join(ort.get_available_providers())
    return " | ".join([*files, cpu_name(), f"onnxruntime {ort.__version__} {providers}"])


def _read_cache(cache_file: Path) -> dict[str, dict]:
    try:
        data = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        return {}  # none yet, or damaged: measure again
    return data if isinstance(data, dict) else {}


def lookup_int8_speed(
    fp32_path: str | os.PathLike[str], cache_file: str | os.PathLike[str]
) -> Int8Speed | None:
    """The cached measurement for ``fp32_path``'s int8 copy as the files are now; None if none.

    Cheap (two stats and a small JSON file): the dialog asks at every change of model and
    measures, in the background, only on a miss.
    """
    fp32 = Path(fp32_path)
    twin = int8_twin(fp32)
    if twin is None:
        return None
    hit = _read_cache(Path(cache_file)).get(cache_key(fp32, twin))
    if isinstance(hit, dict):
        with contextlib.suppress(TypeError):  # TypeError: written by another version, measure again
            return Int8Speed(**hit)
    return None


def measure_and_cache(
    fp32_path: str | os.PathLike[str],
    cache_file: str | os.PathLike[str],
    measure: Callable[[Path, Path], Int8Speed] = measure_int8_speed,
) -> Int8Speed:
    """Measure ``fp32_path`` against its int8 copy (``measure``) and keep the result in ``cache_file``.

    Raises what ``measure`` raises (``ModelError`` for a copy that does not load), and
    ``ModelError`` when there is no int8 copy: a failure is reported, not cached.
    """
    fp32 = Path(fp32_path)
    twin = int8_twin(fp32)
    if twin is None:
        raise ModelError(f"{fp32.name} has no int8 copy ({fp32.stem}-int8{fp32.suffix}) beside it")
    key = cache_key(fp32, twin)  # before measuring: a file replaced meanwhile is measured again next time
    speed = measure(fp32, twin)
    cache = Path(cache_file)
    entries = _read_cache(cache)
    entries.pop(key, None)
    entries[key] = asdict(speed)
    kept = dict(list(entries.items())[-CACHE_ENTRIES:])
    with contextlib.suppress(OSError):  # a read-only profile: the result still holds for this call
        write_text_atomic(cache, json.dumps(kept, indent=1))
    return speed


def cached_int8_speed(
    fp32_path: str | os.PathLike[str],
    cache_file: str | os.PathLike[str],
    measure: Callable[[Path, Path], Int8Speed] = measure_int8_speed,
) -> Int8Speed | None:
    """The int8 copy's speed against ``fp32_path``: cached, else measured now; None without a copy."""
    if int8_twin(fp32_path) is None:
        return None
    return lookup_int8_speed(fp32_path, cache_file) or measure_and_cache(fp32_path, cache_file, measure)


def int8_note(model_path: str | os.PathLike[str], cache_file: str | os.PathLike[str]) -> str | None:
    """What a run that names its model file (the Processing algorithm) should say about int8; None: nothing.

    The dialog swaps in the int8 copy only where it was measured faster; a run given a file runs
    that file, so it says what is known on this machine instead: the int8 copy it was given is
    slower or not measured, or the fp32 model it was given has a copy measured faster. Reads
    the cache only (no measurement: a batch of runs should not time models).
    """
    path = Path(model_path)
    fp32 = int8_original(path)
    if fp32 is not None:
        speed = lookup_int8_speed(fp32, cache_file) if fp32.is_file() else None
        if speed is None:
            return (
                f"int8: {path.name} is an int8 copy whose speed against {fp32.name} was not measured on this "
                "CPU (the Segment extent dialog measures it); on CPUs without fast integer instructions "
                "int8 runs slower than fp32"
            )
        if speed.offered:
            return f"int8: {path.name} runs {speed.ratio:.2f}x the speed of {fp32.name} on this CPU"
        return (
            f"int8: {path.name} is not faster on this CPU ({speed.ratio:.2f}x {fp32.name}): run {fp32.name}"
        )
    speed = lookup_int8_speed(path, cache_file)  # None without a copy beside the model
    if speed is not None and speed.offered:
        return f"int8: {path.stem}-int8{path.suffix} runs {speed.ratio:.2f}x faster on this CPU"
    return None
