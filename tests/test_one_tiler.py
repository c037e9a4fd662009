"""feed_forward and the plugin's inference core give the same probabilities for one model and image.

Both go through ``tileplan.plan_windows`` and ``blend.BandBlender``; the test
model blurs 5x5 with zero padding, so a window border changes the pixels near
it and any difference in where windows start or how edges are weighted shows.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from inference_helpers import (
    COLORS,
    HEATMAP_ROUNDING,
    NAMES,
    heatmap_probabilities,
    make_rgb_model,
    mosaic,
    write_geotiff,
)
from osgeo import gdal

from satseg_plugin.inference.cli import run_cli
from satseg_plugin.inference.imageio import read_image, write_png
from satseg_plugin.inference.metadata import ModelMetadata, build_metadata
from satseg_plugin.inference.segment import SegmentRequest, run_segment
from training import feed_forward
from training.predictor import load_predictor
from training.tiled import predict_image

H, W = 300, 420  # not a multiple of the 256-pixel window: windows reach past both edges


def test_feed_forward_and_the_inference_core_agree(tmp_path: Path) -> None:
    model = make_rgb_model(tmp_path / "blur.onnx", zoom=None, overlap=25, blur=True)
    image = np.ascontiguousarray(mosaic(100, 200, 101, 201, 10)[:H, :W])
    raster = write_geotiff(tmp_path / "image.tif", image, (1000.0, 1.0, 0.0, 5000.0, 0.0, -1.0))
    # The plugin's path: a raster source, the model's overlap, its own batches.
    result = run_segment(
        SegmentRequest(
            model=model, bbox=(1000, 5000 - H, 1000 + W, 5000), bbox_crs="EPSG:3857",
            raster_path=str(raster), out_dir=tmp_path / "core", batch_size=2,
        )
    )  # fmt: skip
    assert (result.grid.width, result.grid.height) == (W, H)
    core = np.stack([heatmap_probabilities(result.heatmap_paths[n]) for n in result.class_names])

    # feed_forward's path: the predictor it loads and the blend it calls, with other batches.
    pred = load_predictor(model)
    ours = predict_image(image, pred.predict, pred.num_classes, pred.tile_size, pred.tiles_overlap, 3)
    assert ours.shape == core.shape
    np.testing.assert_allclose(ours, core, atol=HEATMAP_ROUNDING)  # the heatmaps are 8-bit

    # And the command itself: the same class of every pixel as classes.tif.
    write_png(tmp_path / "image.png", image)
    assert run_cli(feed_forward.main, [str(model), str(tmp_path / "image.png"), str(tmp_path / "ff")]) == 0
    classes = read_image(tmp_path / "ff" / "classes.png")[..., 0]
    np.testing.assert_array_equal(classes, gdal.Open(str(result.classes_path)).ReadAsArray())


def test_feed_forward_standardises_as_the_model_says(tmp_path: Path) -> None:
    """A model trained with other mean and std (a Deepness model, say) is fed as its metadata says."""
    meta = ModelMetadata(NAMES, COLORS, 256, 25, None, zoom=None, mean=(0.3, 0.5, 0.7), std=(0.2, 0.3, 0.4))
    model = make_rgb_model(tmp_path / "std.onnx", props=build_metadata(meta))
    image = np.ascontiguousarray(mosaic(100, 200, 100, 200, 10)[:200, :230])
    raster = write_geotiff(tmp_path / "image.tif", image, (0.0, 1.0, 0.0, 200.0, 0.0, -1.0))
    result = run_segment(
        SegmentRequest(
            model=model, bbox=(0, 0, 230, 200), bbox_crs="EPSG:3857", raster_path=str(raster),
            out_dir=tmp_path / "core",
        )
    )  # fmt: skip
    core = np.stack([heatmap_probabilities(result.heatmap_paths[n]) for n in result.class_names])
    pred = load_predictor(model)
    ours = predict_image(image, pred.predict, pred.num_classes, pred.tile_size, pred.tiles_overlap)
    np.testing.assert_allclose(ours, core, atol=HEATMAP_ROUNDING)
