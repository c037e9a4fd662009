"""Imagery of more than 8 bits, brought to the 0..255 the models take.

Satellite products often come as 16-bit integers (of which 11 or 12 bits are
used) or as floating-point reflectance, while the models learnt from 8-bit
imagery. Such a raster is stretched linearly to 0..255 between the 0.5 % and
99.5 % points of the values of all its image bands together: one stretch for
every band keeps the colours' balance, which the models read (bright sand is
land, blue-green is water), where a stretch per band, QGIS's default drawing,
shifts it. Measured on the held-out sets made 16-bit (benchmarks/README.md,
*Imagery of more than 8 bits*): per band from 2 % to 98 % cost 6 points of building IoU
and 1.8 of land-cover mIoU; this stretch stays within 0.4 of the 8-bit originals.
The points come from the whole raster (a reduced read), never from one
window: every window, and every block of a cluster run, is stretched alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from osgeo import gdal

gdal.UseExceptions()

#: The percentiles of the bands' values stretched to 0 and 255: clear of a few saturated or dead pixels.
CUT_PERCENT = (0.5, 99.5)
#: The longest side of the reduced read the percentiles come from (GDAL reads overviews where there are some).
SAMPLE_SIDE = 1024


@dataclass(frozen=True)
class Stretch:
    """A linear map of band values ``low .. high`` to 0 .. 255, clipped outside."""

    low: float
    high: float

    def apply(self, values: np.ndarray) -> np.ndarray:
        """``values`` as uint8: ``low`` and below 0, ``high`` and above 255, rounded between; NaN 0."""
        scale = np.float32(255.0 / (self.high - self.low))
        out = (np.asarray(values, np.float32) - np.float32(self.low)) * scale + np.float32(0.5)
        np.clip(out, 0, 255, out=out)
        return np.nan_to_num(out, nan=0.0).astype(np.uint8)


def stretch_of(values: np.ndarray, cut: tuple[float, float] = CUT_PERCENT) -> Stretch:
    """The stretch between the ``cut`` percentiles of ``values`` (NaN and infinities left out).

    ``ValueError`` when no value is finite. A band of one value maps it to 0
    (its stretch spans one unit above it), as a flat band has no picture.
    """
    v = np.asarray(values).ravel()
    if v.dtype.kind == "f":
        v = v[np.isfinite(v)]
    if v.size == 0:
        raise ValueError("no valid value to stretch between")
    low, high = (float(p) for p in np.percentile(v, cut))
    if high <= low:
        high = low + 1.0
    return Stretch(low, high)


def band_values(band: gdal.Band, sample_side: int = SAMPLE_SIDE) -> np.ndarray:
    """The valid values of a raster band, from a read reduced to at most ``sample_side`` pixels a side.

    Pixels its mask marks invalid (nodata, a transparent alpha) are left out.
    """
    factor = max(1.0, max(band.XSize, band.YSize) / sample_side)
    w, h = max(1, round(band.XSize / factor)), max(1, round(band.YSize / factor))
    values = band.ReadAsArray(buf_xsize=w, buf_ysize=h)
    return values[band.GetMaskBand().ReadAsArray(buf_xsize=w, buf_ysize=h) > 0]


def is_8bit(band: gdal.Band) -> bool:
    """Whether a band holds bytes, which the models take as they are."""
    return band.DataType == gdal.GDT_Byte


def raster_stretch(src: gdal.Dataset, bands: Sequence[int], sample_side: int = SAMPLE_SIDE) -> Stretch | None:
    """The one stretch of the chosen bands (1-based) of more than 8 bits, or None when none is wider.

    ``ValueError`` when they hold no valid value.
    """
    wide = [b for b in sorted(set(bands)) if not is_8bit(src.GetRasterBand(b))]
    if not wide:
        return None
    return stretch_of(np.concatenate([band_values(src.GetRasterBand(b), sample_side) for b in wide]))


def stretch_note(kind: str, stretch: Stretch | None) -> str | None:
    """What a run tells the user about the stretch of its bands, or None for 8-bit imagery."""
    if stretch is None:
        return None
    low, high = CUT_PERCENT
    return (
        f"the raster holds {kind} values, not 8-bit ones: they were stretched to 0-255 between the "
        f"{low:g} % and {high:g} % points of all its bands' values ({stretch.low:,.6g} to {stretch.high:,.6g}); "
        "for another stretch, convert it first (gdal_translate -ot Byte -scale MIN MAX 0 255)"
    )
