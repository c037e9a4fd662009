"""Windows that reach past the imagery: the model sees the imagery mirrored, never black."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from inference_helpers import (
    expected_probabilities,
    heatmap_probabilities,
    make_rgb_model,
    mosaic,
    write_geotiff,
)

from satseg_plugin.inference.nodata_fill import fill_nodata
from satseg_plugin.inference.segment import SegmentRequest, run_segment


def _window(h: int = 8, w: int = 10) -> np.ndarray:
    rng = np.random.default_rng(3)
    return rng.integers(1, 255, (h, w, 3), dtype=np.uint8)


def test_a_full_window_is_returned_as_it_is() -> None:
    pixels = _window()
    assert fill_nodata(pixels, np.ones(pixels.shape[:2], bool)) is pixels


def test_a_window_without_imagery_is_returned_as_it_is() -> None:
    pixels = np.zeros((8, 10, 3), np.uint8)
    assert fill_nodata(pixels, np.zeros((8, 10), bool)) is pixels


def test_the_imagery_is_mirrored_past_its_edges() -> None:
    pixels = _window()
    valid = np.zeros(pixels.shape[:2], bool)
    valid[2:, :7] = True  # imagery below row 2 and left of column 7: a window at a top-right corner
    before = pixels.copy()
    pixels[~valid] = 0
    filled = fill_nodata(pixels, valid)
    assert filled.shape == pixels.shape and filled.dtype == np.uint8
    assert (filled[valid] == before[valid]).all()
    assert (filled[1, :7] == before[2, :7]).all() and (filled[0, :7] == before[3, :7]).all()  # rows mirrored
    assert (filled[2:, 7] == before[2:, 6]).all() and (
        filled[2:, 9] == before[2:, 4]
    ).all()  # columns mirrored
    assert (filled[0, 9] == before[3, 4]).all()  # and the corner both ways
    assert (pixels[~valid] == 0).all()  # the input is not written to


def test_a_strip_narrower_than_the_gap_is_mirrored_again() -> None:
    pixels = _window(4, 12)
    valid = np.zeros(pixels.shape[:2], bool)
    valid[:, :2] = True  # two columns of imagery, ten without
    filled = fill_nodata(pixels, valid)
    left, right = pixels[:, 0], pixels[:, 1]
    expected = [left, right, right, left, left, right, right, left, left, right, right, left]
    assert all((filled[:, c] == col).all() for c, col in enumerate(expected))


def test_a_missing_tile_among_present_ones_takes_the_mean_colour() -> None:
    pixels = np.full((6, 6, 3), 10, np.uint8)
    pixels[:, :, 1] = 200
    pixels[3:, 3:] = 0
    valid = np.ones((6, 6), bool)
    valid[3:, 3:] = False  # the bottom-right tile failed; its neighbours came
    filled = fill_nodata(pixels, valid)
    assert (filled[3:, 3:] == [10, 200, 10]).all()
    assert (filled[valid] == pixels[valid]).all()


def test_at_a_rasters_edge_the_model_sees_the_raster_mirrored(tmp_path: Path) -> None:
    # A 5x5 blur reads 2 pixels past each edge of the raster: mirrored imagery there, not black.
    h, w = 300, 420  # windows reach past all four edges
    image = np.ascontiguousarray(mosaic(100, 200, 101, 201, 10)[:h, :w])
    raster = write_geotiff(tmp_path / "image.tif", image, (1000.0, 1.0, 0.0, 5000.0, 0.0, -1.0))
    model = make_rgb_model(tmp_path / "blur.onnx", zoom=None, overlap=25, blur=True)
    result = run_segment(
        SegmentRequest(
            model=model, bbox=(1000, 5000 - h, 1000 + w, 5000), bbox_crs="EPSG:3857",
            raster_path=str(raster), out_dir=tmp_path / "run", write_classes=False, write_counts=False,
        )
    )  # fmt: skip
    heat = np.stack([heatmap_probabilities(result.heatmap_paths[n]) for n in result.class_names])
    mirrored = expected_probabilities(np.pad(image, ((2, 2), (2, 2), (0, 0)), mode="symmetric"), blur=True)
    # As test_overlap_blending_leaves_no_seams: the blend is within 0.01 of a whole-image run.
    assert np.abs(heat - mirrored[:, 2:-2, 2:-2]).max() < 0.01
    black = expected_probabilities(image, blur=True)  # zero padding: what black around the raster gives
    assert np.abs(heat - black).max() > 0.2
