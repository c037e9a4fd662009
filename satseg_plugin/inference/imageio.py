"""Read and write 8-bit images through GDAL (PNG, JPEG, WebP, ...).

GDAL is already a dependency of every part of satseg, so it decodes the tiles
too rather than adding Pillow. Arrays are ``(height, width, bands)`` uint8 in
the file's band order (RGB or RGBA).
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import numpy as np
from osgeo import gdal

from .atomic import atomic_path
from .errors import SatsegError

gdal.UseExceptions()


class ImageError(SatsegError):
    """An image cannot be decoded or written."""


def _read_dataset(ds: gdal.Dataset, what: str) -> np.ndarray:
    if ds.RasterCount == 0:
        raise ImageError(f"{what} has no image bands")
    bands = []
    for i in range(1, ds.RasterCount + 1):
        band = ds.GetRasterBand(i)
        if band.DataType != gdal.GDT_Byte:
            kind = gdal.GetDataTypeName(band.DataType)
            raise ImageError(f"{what} is not an 8-bit image (band {i} is {kind})")
        if band.GetColorTable() is not None and ds.RasterCount == 1:
            # Palette PNG: expand to RGB(A) so callers see colours, not indices.
            table = band.GetColorTable()
            lut = np.zeros((256, 4), np.uint8)
            for k in range(table.GetCount()):
                lut[k] = table.GetColorEntry(k)
            return lut[band.ReadAsArray()][..., :3].copy()
        bands.append(band.ReadAsArray())
    return np.dstack(bands)


def read_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Return the pixels of the image file at ``path`` as ``(H, W, bands)`` uint8.

    Palette images come back as RGB. Raises ``ImageError`` naming the file
    when it is missing or cannot be decoded.
    """
    p = Path(path)
    if not p.is_file():
        raise ImageError(f"image not found: {p}")
    try:
        ds = gdal.Open(str(p))
    except RuntimeError as exc:
        raise ImageError(f"cannot read image {p}: {exc}") from None
    try:
        return _read_dataset(ds, str(p))
    except RuntimeError as exc:
        raise ImageError(f"cannot decode image {p}: {exc}") from None
    finally:
        ds = None


def decode_image(data: bytes, what: str = "image") -> np.ndarray:
    """Decode encoded image bytes (PNG, JPEG, ...) to ``(H, W, bands)`` uint8."""
    name = f"/vsimem/satseg-{uuid.uuid4().hex}"
    gdal.FileFromMemBuffer(name, data)
    try:
        try:
            ds = gdal.Open(name)
        except RuntimeError:
            raise ImageError(f"{what} is not a readable image ({len(data)} bytes)") from None
        try:
            return _read_dataset(ds, what)
        except RuntimeError as exc:
            raise ImageError(f"{what} is a corrupt image: {exc}") from None
        finally:
            ds = None
    finally:
        gdal.Unlink(name)


def to_rgb(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Split ``(H, W, bands)`` pixels into RGB and a validity mask.

    Grey becomes RGB; alpha 0 marks nodata (the mask is False there).
    """
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    bands = pixels.shape[2]
    if bands in (1, 2):
        rgb = np.repeat(pixels[..., :1], 3, axis=2)
    else:
        rgb = pixels[..., :3]
    if bands in (2, 4):
        valid = pixels[..., -1] > 0
    else:
        valid = np.ones(pixels.shape[:2], bool)
    return np.ascontiguousarray(rgb), valid


def write_png(path: str | os.PathLike[str], pixels: np.ndarray) -> None:
    """Write ``(H, W)`` or ``(H, W, bands)`` uint8 pixels to a PNG, atomically."""
    if pixels.dtype != np.uint8:
        raise ImageError(f"PNG pixels must be uint8, not {pixels.dtype}")
    arr = pixels if pixels.ndim == 3 else pixels[..., None]
    h, w, bands = arr.shape
    mem = gdal.GetDriverByName("MEM").Create("", w, h, bands, gdal.GDT_Byte)
    for i in range(bands):
        mem.GetRasterBand(i + 1).WriteArray(arr[..., i])
    with atomic_path(path, suffix=".png") as tmp:
        out = gdal.GetDriverByName("PNG").CreateCopy(str(tmp), mem, options=["ZLEVEL=6"])
        del out  # closing the dataset flushes the file before the rename
    del mem


def encode_png(pixels: np.ndarray) -> bytes:
    """Return PNG bytes of uint8 pixels (for tile servers and tests)."""
    name = f"/vsimem/satseg-{uuid.uuid4().hex}.png"
    arr = pixels if pixels.ndim == 3 else pixels[..., None]
    h, w, bands = arr.shape
    mem = gdal.GetDriverByName("MEM").Create("", w, h, bands, gdal.GDT_Byte)
    for i in range(bands):
        mem.GetRasterBand(i + 1).WriteArray(arr[..., i])
    out = gdal.GetDriverByName("PNG").CreateCopy(name, mem)
    del out, mem
    try:
        f = gdal.VSIFOpenL(name, "rb")
        gdal.VSIFSeekL(f, 0, 2)
        size = gdal.VSIFTellL(f)
        gdal.VSIFSeekL(f, 0, 0)
        data = gdal.VSIFReadL(1, size, f)
        gdal.VSIFCloseL(f)
        return bytes(data)
    finally:
        gdal.Unlink(name)
