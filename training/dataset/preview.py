"""A contact sheet: sampled tiles with their labels overlaid in the class colours."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from satseg_plugin.inference.imageio import ImageError, read_image, to_rgb, write_png
from satseg_plugin.inference.metadata import parse_hex_color


def contact_sheet(
    out_path: str | os.PathLike[str],
    ids: list[str],
    images_dir: Path,
    labels_dir: Path,
    display_colors: list[str],
    columns: int = 4,
    cell: int = 256,
    alpha: float = 0.45,
    gap: int = 4,
) -> Path | None:
    """Write a grid of ``ids`` (imagery, or grey where there is none) with labels blended in.

    Label pixels take their class's display colour at ``alpha``, with the
    class edges drawn fully; the ignore label (255) is drawn white. Returns the path, or ``None`` when no id has
    a label.
    """
    palette = np.zeros((256, 3), np.float32)
    for i, c in enumerate(display_colors[:255]):
        palette[i] = parse_hex_color(c)
    palette[255] = (255, 255, 255)
    cells: list[np.ndarray] = []
    for tid in ids:
        label_path = labels_dir / f"{tid}.png"
        if not label_path.is_file():
            continue
        try:
            labels = read_image(label_path)[..., 0]
        except ImageError:
            continue
        img_path = images_dir / f"{tid}.png"
        base = np.full((*labels.shape, 3), 96, np.float32)
        if img_path.is_file():
            try:
                rgb, _ = to_rgb(read_image(img_path))
                if rgb.shape[:2] == labels.shape:
                    base = rgb.astype(np.float32)
            except ImageError:
                pass
        mask = (labels > 0)[..., None]
        blended = np.where(mask, (1 - alpha) * base + alpha * palette[labels], base)
        # Outlines at full strength: a class edge against the imagery shows misalignment at a glance.
        edge = np.zeros(labels.shape, bool)
        edge[1:] |= labels[1:] != labels[:-1]
        edge[:, 1:] |= labels[:, 1:] != labels[:, :-1]
        edge &= labels > 0
        blended[edge] = palette[labels[edge]]
        step = max(1, labels.shape[0] // cell)
        cells.append(blended[::step, ::step].astype(np.uint8))
    if not cells:
        return None
    size = cells[0].shape[0]
    cols = min(columns, len(cells))
    rows = (len(cells) + cols - 1) // cols
    sheet = np.full((rows * size + (rows + 1) * gap, cols * size + (cols + 1) * gap, 3), 255, np.uint8)
    for k, c in enumerate(cells):
        r, q = divmod(k, cols)
        y0, x0 = gap + r * (size + gap), gap + q * (size + gap)
        sheet[y0 : y0 + c.shape[0], x0 : x0 + c.shape[1]] = c
    write_png(out_path, sheet)
    return Path(out_path)
