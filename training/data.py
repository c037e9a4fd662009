"""The training side of the dataset folder: HDF5 cache, scene-aware split, torch Dataset.

``load_dataset(data_dir)`` reads ``manifest.json`` and the sample list
(``sample-filtered.txt``, else ``sample.txt``; ids whose image and label both
exist) and caches the tiles in ``data/training.hdf5``:

* ``images`` uint8 ``[N, S, S, B]`` (B = 3: RGB; an N-band dataset's ``bands``
  of the manifest, from ``images/<id>.tif``), ``labels`` uint8 ``[N, S, S]``
  (class index, 255 = ignore), one chunk per tile, gzip-compressed;
* ``ids`` (the tile ids) and the attribute ``sample_hash``: a SHA-256 of the id
  list, the tile size and each image's and label's size and modification time.
  A changed sample list, or an image or label replaced under the same id (a
  re-import, a resumed build that fetched a damaged tile again), rebuilds the cache.

An RGB dataset is standardised with ImageNet's statistics (``MEAN``/``STD``), as
the pretrained-style recipe always was; an N-band dataset with the per-band mean
and std its import measured (``band_mean``/``band_std`` of the manifest): a
near-infrared band has no ImageNet statistics, and a model must be fed at
inference what it was trained on, so the checkpoint and the ONNX metadata carry them.

``split_indices`` makes the seeded validation split, keeping the scenes of
``scenes.csv`` apart (XYZ ids without scenes are grouped by spatial block,
``training.dataset.tiles.xyz_blocks``, so neighbouring tiles stay on one side);
``split_named`` validates on named scenes instead, and ``checkpoint_split``
gives back whichever split a checkpoint was trained with.
"""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch
from torch.utils.data import Dataset

from satseg_plugin.inference.atomic import atomic_path
from satseg_plugin.inference.errors import SatsegError
from satseg_plugin.inference.imageio import read_image, to_rgb
from satseg_plugin.inference.metadata import MEAN, STD
from satseg_plugin.inference.progress import ProgressBar
from satseg_plugin.inference.runfolder import remove_stale_parts

# IGNORE_INDEX and DatasetError are the dataset folder's (train.py and the tests import them from here).
from .dataset.manifest import IGNORE_INDEX as IGNORE_INDEX
from .dataset.manifest import DatasetError, image_bands, image_file, read_manifest, sample_ids
from .dataset.tiles import xyz_blocks

CACHE_NAME = "training.hdf5"


@dataclass
class TileDataset:
    """The tiles of a dataset folder, cached in HDF5, with their classes and scenes."""

    root: Path
    cache: Path
    ids: list[str]
    groups: list[str]  # scene (or block) of each id, for the split
    class_names: list[str]
    class_colors: list[str]
    tile_size: int
    zoom: int | None
    resolution_cm: float | None
    input_bands: tuple[int, ...] | None = None  # an N-band dataset's source bands, in channel order
    mean: tuple[float, ...] = MEAN  # per channel, of uint8 / 255
    std: tuple[float, ...] = STD

    @property
    def channels(self) -> int:
        """Input bands of a model trained on these tiles."""
        return len(self.input_bands) if self.input_bands else 3


def _sample_ids(data_dir: Path, multiband: bool = False) -> list[str]:
    """The sample list's ids whose image and label both exist."""
    return [
        i
        for i in sample_ids(data_dir)
        if image_file(data_dir, i, multiband).is_file()
        and (data_dir / "labels" / "color" / f"{i}.png").is_file()
    ]


def _groups(data_dir: Path, ids: list[str]) -> list[str]:
    scenes: dict[str, str] = {}
    path = data_dir / "scenes.csv"
    if path.is_file():
        with path.open(newline="", encoding="utf-8") as f:
            scenes = {row["id"]: row["scene"] for row in csv.DictReader(f) if row.get("id")}
    blocks = xyz_blocks([i for i in ids if i not in scenes])
    return [scenes.get(i) or blocks.get(i) or i for i in ids]


def sample_hash(ids: list[str], tile_size: int, data_dir: Path | None = None, multiband: bool = False) -> str:
    """The cache key: SHA-256 of the tile size, the id list and (with ``data_dir``) the size
    and modification time (ns) of every tile's image and label: two ``stat`` calls a tile, so
    that a file replaced under the same id is noticed without reading the pixels."""
    h = hashlib.sha256(f"{tile_size}\n".encode())
    for i in ids:
        h.update(i.encode() + b"\n")
        if data_dir is not None:
            for path in (image_file(data_dir, i, multiband), data_dir / "labels" / "color" / f"{i}.png"):
                st = path.stat()
                h.update(f"{st.st_size} {st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _read_tile_image(data_dir: Path, tile_id: str, channels: int | None) -> np.ndarray:
    """``(S, S, B)`` uint8 pixels of a tile: RGB (``channels`` None), else all ``channels`` bands of
    its ``.tif``; ``DatasetError`` when the file holds another number of bands."""
    if channels is None:
        return to_rgb(read_image(image_file(data_dir, tile_id)))[0]
    img = read_image(image_file(data_dir, tile_id, multiband=True))
    if img.shape[2] != channels:
        raise DatasetError(f"tile {tile_id} has {img.shape[2]} bands, not the manifest's {channels}")
    return img


def _build_cache(
    data_dir: Path, cache: Path, ids: list[str], size: int, key: str, channels: int | None = None
) -> None:
    depth = channels or 3
    with atomic_path(cache) as tmp, h5py.File(tmp, "w") as f:
        images = f.create_dataset(
            "images", (len(ids), size, size, depth), np.uint8, chunks=(1, size, size, depth),
            compression="gzip", compression_opts=1, shuffle=True,
        )  # fmt: skip
        labels = f.create_dataset(
            "labels", (len(ids), size, size), np.uint8, chunks=(1, size, size), compression="gzip",
            compression_opts=1,
        )  # fmt: skip
        f.create_dataset("ids", data=np.array(ids, dtype=h5py.string_dtype()))
        f.attrs["sample_hash"] = key
        with ProgressBar(len(ids), "caching tiles") as bar:
            for n, i in enumerate(ids):
                img = _read_tile_image(data_dir, i, channels)
                lab = read_image(data_dir / "labels" / "color" / f"{i}.png")[..., 0]
                if img.shape[:2] != (size, size) or lab.shape != (size, size):
                    raise DatasetError(
                        f"tile {i} is {img.shape[1]}x{img.shape[0]} (label {lab.shape[1]}x{lab.shape[0]}), "
                        f"not the manifest's {size}x{size}"
                    )
                images[n] = img
                labels[n] = lab
                bar.update()


def load_dataset(data_dir: str | Path, rebuild: bool = False) -> TileDataset:
    """Open the dataset at ``data_dir``, building or refreshing its HDF5 cache.

    Raises ``DatasetError`` when the folder, manifest or sample list is missing
    or empty, or a tile has the wrong size.
    """
    root = Path(data_dir)
    manifest = read_manifest(root)
    bands = image_bands(manifest)
    ids = _sample_ids(root, bands is not None)
    if not ids:
        raise DatasetError(f"{root} lists no tile whose image and label both exist")
    size = int(manifest.get("tile_size") or 256)
    names = [str(c["name"]) for c in manifest["classes"]]
    colors = [str(c.get("color", "#000000")) for c in manifest["classes"]]
    cache = root / CACHE_NAME
    remove_stale_parts(root, locked=False)  # a cache build that was killed (its pid is gone)
    key = sample_hash(ids, size, root, bands is not None)
    fresh = False
    if cache.is_file() and not rebuild:
        try:
            with h5py.File(cache, "r") as f:
                fresh = f.attrs.get("sample_hash") == key
        except OSError:
            fresh = False  # a damaged cache is rebuilt
    if not fresh:
        _build_cache(root, cache, ids, size, key, len(bands) if bands else None)
    res = manifest.get("resolution_cm")
    mean, std = _standardization(manifest, bands)
    return TileDataset(
        root=root,
        cache=cache,
        ids=ids,
        groups=_groups(root, ids),
        class_names=names,
        class_colors=colors,
        tile_size=size,
        zoom=manifest.get("zoom"),
        resolution_cm=float(res) if res is not None else None,
        input_bands=bands,
        mean=mean,
        std=std,
    )


def _standardization(
    manifest: dict, bands: tuple[int, ...] | None
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """ImageNet's ``MEAN``/``STD`` for RGB; an N-band dataset's measured ``band_mean``/``band_std``."""
    if bands is None:
        return MEAN, STD
    mean, std = manifest.get("band_mean"), manifest.get("band_std")
    if not (isinstance(mean, list) and isinstance(std, list) and len(mean) == len(std) == len(bands)):
        raise DatasetError(
            f"the manifest lists {len(bands)} bands but no band_mean and band_std for each; import it again"
        )
    if min(float(v) for v in std) <= 0:
        raise DatasetError("the manifest's band_std has a band without variation (std 0)")
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def split_indices(groups: list[str], val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Seeded train/validation split of tile indices that never splits a group.

    Groups (scenes or spatial blocks) are taken in a seeded random order, each
    given to validation when that brings the validation share closer to
    ``val_fraction``; of 32 such orders drawn from ``seed`` the one whose share
    lands closest wins, so the share is as close as whole groups allow without
    always picking the same groups. At least one group stays on each side when
    there are two or more, and ``val_fraction`` 0 gives no validation.
    """
    if not 0 <= val_fraction < 1:
        raise SatsegError(f"the validation fraction must be in [0, 1), not {val_fraction}")
    names = sorted(set(groups))
    sizes = {g: 0 for g in names}
    for g in groups:
        sizes[g] += 1
    target = val_fraction * len(groups)
    val_groups: set[str] = set()
    if val_fraction > 0 and len(names) > 1:
        rng = np.random.default_rng(seed)
        best: tuple[float, set[str]] | None = None
        for _ in range(32):
            order = list(names)
            rng.shuffle(order)
            chosen: set[str] = set()
            taken = 0
            for g in order:
                if len(chosen) == len(names) - 1:
                    break  # one group always trains
                if abs(taken + sizes[g] - target) < abs(taken - target):
                    chosen.add(g)
                    taken += sizes[g]
            if not chosen:  # every group is larger than the target: the smallest one validates
                chosen = {min(order, key=lambda g: sizes[g])}
                taken = sizes[next(iter(chosen))]
            if best is None or abs(taken - target) < best[0]:
                best = (abs(taken - target), chosen)
        val_groups = best[1] if best else set()
    train = [i for i, g in enumerate(groups) if g not in val_groups]
    val = [i for i, g in enumerate(groups) if g in val_groups]
    return train, val


def scene_names(text: str | None) -> list[str]:
    """The scene names of a comma-separated option such as ``--validation-scenes tile1,tile3``."""
    return [n.strip() for n in (text or "").split(",") if n.strip()]


def split_named(groups: list[str], names: Sequence[str]) -> tuple[list[int], list[int]]:
    """Train/validation split with exactly the groups ``names`` (scenes or blocks) validating.

    Raises ``SatsegError`` naming the groups that the dataset lacks, and when the
    names would leave nothing to train on.
    """
    wanted = list(names)
    known = set(groups)
    missing = [n for n in wanted if n not in known]
    if missing:
        some = ", ".join(sorted(known)[:8]) + (", ..." if len(known) > 8 else "")
        raise SatsegError(f"no scene named {', '.join(missing)} in the dataset (its scenes: {some})")
    chosen = set(wanted)
    train = [i for i, g in enumerate(groups) if g not in chosen]
    val = [i for i, g in enumerate(groups) if g in chosen]
    if not train:
        raise SatsegError("the validation scenes are every scene of the dataset: nothing would train")
    return train, val


def checkpoint_split(groups: list[str], ckpt: dict) -> tuple[list[int], list[int]]:
    """The split a checkpoint was trained with: its named ``val_scenes``, else its share and seed."""
    if ckpt.get("val_scenes"):
        return split_named(groups, list(ckpt["val_scenes"]))
    return split_indices(groups, float(ckpt.get("val_fraction", 0.2)), int(ckpt.get("seed", 0)))


def normalize(images: np.ndarray, mean: Sequence[float] = MEAN, std: Sequence[float] = STD) -> np.ndarray:
    """uint8 ``[N, H, W, B]`` -> float32 ``[N, B, H, W]``, ``(x / 255 - mean) / std`` per band."""
    x = images.astype(np.float32) / 255.0
    x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def normalize_tensor(
    x: torch.Tensor, mean: Sequence[float] = MEAN, std: Sequence[float] = STD
) -> torch.Tensor:
    """Float ``[N, B, H, W]`` in 0..1 -> ``(x - mean) / std``, as ``normalize`` does for uint8."""
    m = torch.tensor(tuple(mean), dtype=x.dtype).view(1, -1, 1, 1)
    s = torch.tensor(tuple(std), dtype=x.dtype).view(1, -1, 1, 1)
    return (x - m) / s


def read_tiles(cache: Path, indices: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Read the uint8 images ``[n, S, S, B]`` and labels ``[n, S, S]`` at ``indices``."""
    with h5py.File(cache, "r") as f:
        order = np.argsort(indices)
        sorted_idx = np.asarray(indices)[order]
        images = f["images"][sorted_idx]
        labels = f["labels"][sorted_idx]
    inverse = np.argsort(order)
    return images[inverse], labels[inverse]


class SegmentationTiles(Dataset):
    """Normalised image tensors and int64 label tensors from the HDF5 cache.

    With ``augment`` each sample gets a random flip and a random 90-degree
    rotation (the eight symmetries of the square), the same for image and label.
    With ``normalized=False`` images come as float 0..1, for batch augmentation
    (``training.augment``) before ``normalize_tensor``. ``mean``/``std``: the
    dataset's (``TileDataset.mean``/``std``; ImageNet's for RGB).
    """

    def __init__(
        self,
        cache: Path,
        indices: list[int],
        augment: bool = False,
        seed: int = 0,
        normalized: bool = True,
        mean: Sequence[float] = MEAN,
        std: Sequence[float] = STD,
    ) -> None:
        self.cache = cache
        self.normalized = normalized
        self.mean, self.std = tuple(mean), tuple(std)
        self.indices = list(indices)
        self.augment = augment
        self.rng = np.random.default_rng(seed)
        self._file: h5py.File | None = None

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self._file is None:  # opened lazily: one handle per worker process
            self._file = h5py.File(self.cache, "r")
            worker = torch.utils.data.get_worker_info()
            if worker is not None:  # each worker its own augmentations, not copies of one stream
                self.rng = np.random.default_rng([int(self.rng.integers(2**31)), worker.id])
        n = self.indices[k]
        image = self._file["images"][n]
        label = self._file["labels"][n]
        if self.augment:
            rot = int(self.rng.integers(4))
            image, label = np.rot90(image, rot), np.rot90(label, rot)
            if self.rng.integers(2):
                image, label = image[:, ::-1], label[:, ::-1]
        if self.normalized:
            x = torch.from_numpy(normalize(image[None], self.mean, self.std)[0])
        else:
            x = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32) / 255.0)
        y = torch.from_numpy(np.ascontiguousarray(label).astype(np.int64))
        return x, y
