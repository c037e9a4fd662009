"""The model card's held-out tables: constant predictors scored by hand, classes absent from a set left out."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from scripts.heldout_table import constant_metrics, present_miou, table
from training.metrics import scores_json

NAMES = ["background", "building", "water"]


def metrics(confusion: list[list[int]]) -> dict:
    """What training.validate writes for a confusion matrix (rows: truth, columns: prediction)."""
    return scores_json(np.array(confusion), NAMES)


def test_constant_predictor_and_present_classes(tmp_path: Path) -> None:
    # 80 background and 20 building pixels; no water in the set.
    model = metrics([[70, 10, 0], [5, 15, 0], [0, 0, 0]])
    assert present_miou(model) == pytest.approx((70 / 85 + 15 / 30) / 2)  # water left out
    land = constant_metrics(model, "background")
    assert land["accuracy"] == 0.8 and land["classes"]["background"]["iou"] == 0.8
    assert land["classes"]["building"]["iou"] == 0.0 and present_miou(land) == pytest.approx(0.4)
    for name, m in {"m.onnx": model, "baseline": metrics([[0, 80, 0], [0, 20, 0], [0, 0, 0]])}.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.json").write_text(json.dumps(m))
    text = table(tmp_path)
    assert "| `m.onnx` | 85.0 | 66.2 | 82.4 (93.3 / 87.5) | 50.0 (60.0 / 75.0) |" in text
    assert "| every pixel building (the training tiles' majority class) | 20.0 | 10.0 |" in text
    assert (
        "| every pixel background (this set's majority class, known only afterwards) | 80.0 | 40.0 |" in text
    )
    assert "water" not in text.split("\n\n")[0]  # absent from the set: no column
