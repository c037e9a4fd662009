"""Read and write 8-bit images through GDAL (PNG, JPEG, WebP, GeoTIFF...).

GDAL is already a dependency of every part of satseg, so it decodes the tiles
too rather than adding Pillow. Arrays are ``(height, width, bands)`` uint8 in
the file's band order (RGB or RGBA).
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import numpy as np
from osgeo import gdal, gdal_array

from .atomic import atomic_path
from .errors import SatsegError
from .stretch import Stretch, raster_stretch

gdal.UseExceptions()


#: Decoded tiles larger than this (in pixels) are refused before their pixels are read:
#: a small PNG may declare 16000 x 16000 pixels and take gigabytes to decode.
MAX_DECODE_PIXELS = 4096 * 4096


class ImageError(SatsegError):
    """An image cannot be decoded or written.

    ``reason`` is the same without the image's name, as tile reports list it.
    """

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason or message


class ImageSizeError(ImageError):
    """An image whose size is not the one expected, or too large to decode (asking again will not help)."""


def _read_dataset(ds: gdal.Dataset, what: str, stretch: bool = False) -> np.ndarray:
    if ds.RasterCount == 0:
        raise ImageError(f"{what} has no image bands")
    wide = None  # the one stretch of bands of more than 8 bits
    bands = []
    for i in range(1, ds.RasterCount + 1):
        band = ds.GetRasterBand(i)
        if band.DataType != gdal.GDT_Byte:
            kind = gdal.GetDataTypeName(band.DataType)
            if not stretch or gdal.DataTypeIsComplex(band.DataType):
                raise ImageError(f"{what} is not an 8-bit image (band {i} is {kind})")
            values = band.ReadAsArray()
            if band.GetColorInterpretation() == gdal.GCI_AlphaBand:
                bands.append(np.where(values > 0, 255, 0).astype(np.uint8))
                continue
            if wide is None:
                wide = _image_stretch(ds, what)
            bands.append(wide.apply(values))
            continue
        if band.GetColorTable() is not None and ds.RasterCount == 1:
            # Palette PNG: expand to RGB(A) so callers see colours, not indices.
            table = band.GetColorTable()
            lut = np.zeros((256, 4), np.uint8)
            for k in range(table.GetCount()):
                lut[k] = table.GetColorEntry(k)
            return lut[band.ReadAsArray()][..., :3].copy()
        bands.append(band.ReadAsArray())
    return np.dstack(bands)


def _image_stretch(ds: gdal.Dataset, what: str) -> Stretch:
    """The one stretch of an image's bands (all but alpha) of more than 8 bits, from all their pixels."""
    data = [
        b
        for b in range(1, ds.RasterCount + 1)
        if ds.GetRasterBand(b).GetColorInterpretation() != gdal.GCI_AlphaBand
    ]
    try:
        found = raster_stretch(ds, data, sample_side=max(ds.RasterXSize, ds.RasterYSize))
    except ValueError:
        raise ImageError(f"{what} has no valid value") from None
    assert found is not None  # a band wider than 8 bits is among them
    return found


def read_image(path: str | os.PathLike[str], stretch: bool = False) -> np.ndarray:
    """Return the pixels of the image file at ``path`` as ``(H, W, bands)`` uint8.

    Palette images come back as RGB. Bands of more than 8 bits are refused,
    or with ``stretch`` brought to 0..255 (``stretch``: one linear stretch of all
    the image bands, from the image's own values).
    Raises ``ImageError`` naming the file when it is missing or cannot be decoded.
    """
    p = Path(path)
    if not p.is_file():
        raise ImageError(f"image not found: {p}")
    try:
        ds = gdal.Open(str(p))
    except RuntimeError as exc:
        raise ImageError(f"cannot read image {p}: {exc}") from None
    try:
        return _read_dataset(ds, str(p), stretch)
    except RuntimeError as exc:
        raise ImageError(f"cannot decode image {p}: {exc}") from None
    finally:
        ds = None


def _first_line(message: str) -> str:
    # libjpeg's warnings end with advice about a GDAL option that means nothing to a user.
    return (
        message.strip().splitlines()[0].split(" (this warning can be turned")[0] if message.strip() else "?"
    )


def decode_image(
    data: bytes,
    what: str = "image",
    size: int | None = None,
    max_pixels: int = MAX_DECODE_PIXELS,
) -> np.ndarray:
    """Decode encoded image bytes (PNG, JPEG, ...) to ``(H, W, bands)`` uint8, strictly.

    The image must decode without any GDAL warning or error: a JPEG or PNG that
    ends early decodes to a grey or black remainder with only a warning, and is
    refused here (``ImageError``). The size is checked from the header, before
    any pixel is read: not ``size`` x ``size`` (when given), or more than
    ``max_pixels`` pixels, raises ``ImageSizeError``.
    """
    name = f"/vsimem/satseg-{uuid.uuid4().hex}"
    problems: list[str] = []

    def collect(kind: int, _number: int, message: str) -> None:
        if kind >= gdal.CE_Warning:
            problems.append(message)

    gdal.FileFromMemBuffer(name, data)
    gdal.PushErrorHandler(collect)  # per thread: workers decode side by side
    try:
        try:
            ds = gdal.Open(name)
        except RuntimeError:
            reason = f"not a readable image ({len(data)} bytes)"
            raise ImageError(f"{what} is {reason}", reason) from None
        try:
            w, h = ds.RasterXSize, ds.RasterYSize
            if size is not None and (w, h) != (size, size):
                reason = f"image is {w}x{h}, not {size}x{size}"
                if w == h and w in (2 * size, 4 * size):  # a 512-px or @2x address
                    reason += f" (the service's {w}-px tiles: give its address of {size}-px tiles)"
                raise ImageSizeError(f"{what}: {reason}", reason)
            if w * h > max_pixels:
                reason = f"image declares {w}x{h} pixels, more than {max_pixels:,}"
                raise ImageSizeError(f"{what}: {reason}", reason)
            pixels = _read_dataset(ds, what)
        except RuntimeError as exc:
            problems.append(str(exc))
            pixels = None
        finally:
            ds = None
        if problems:
            reason = f"damaged image ({len(data)} bytes: {_first_line(problems[0])})"
            raise ImageError(f"{what} is a {reason}", reason)
        assert pixels is not None
        return pixels
    finally:
        gdal.PopErrorHandler()
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


def resize_bands(bands: np.ndarray, width: int, height: int, alg: str) -> np.ndarray:
    """``[B, H, W]`` (uint8 or float32) resampled to ``[B, height, width]`` by GDAL's ``alg``
    ("bilinear", "average", "nearest", "mode"...); the dtype is kept. GDAL's bilinear
    kernel widens to the scale when it shrinks, so it does not alias."""
    src = gdal_array.OpenArray(np.ascontiguousarray(bands))
    dst = gdal.Translate("", src, format="MEM", width=width, height=height, resampleAlg=alg)
    out = dst.ReadAsArray().reshape(bands.shape[0], height, width)
    src = dst = None  # release the MEM datasets now
    return out


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
