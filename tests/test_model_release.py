"""The shipping rule of scripts/model_release.py, by its values."""

from __future__ import annotations

from pathlib import Path

from scripts.model_release import pick
from training.checkpoint import save_checkpoint
from training.train import LOG_HEADER


def _run(folder: Path, val_mious: list[float], best_pt_miou: float) -> Path:
    folder.mkdir()
    rows = [f"{k},1,1,0.5,0.5,{m},0.001,1" for k, m in enumerate(val_mious, 1)]
    (folder / "training_log.csv").write_text("\n".join([LOG_HEADER, *rows]) + "\n")
    ckpt = {"state_dict": {}, "class_names": ["background"], "class_colors": ["#000000"], "width": 0.25}
    save_checkpoint(folder / "best.pt", {**ckpt, "best_miou": best_pt_miou})
    return folder


def test_last_epoch_ships_unless_more_than_two_points_below_the_best(tmp_path: Path) -> None:
    assert pick(_run(tmp_path / "a", [0.80, 0.85, 0.84], 0.85)).name == "last.pt"
    assert pick(_run(tmp_path / "b", [0.80, 0.85, 0.82], 0.85)).name == "best.pt"


def test_starting_weights_of_a_fine_tune_count_as_the_best(tmp_path: Path) -> None:
    # --init weights scored 0.46 before epoch 1 (not a log row) and no epoch beat them.
    assert pick(_run(tmp_path / "c", [0.45, 0.44, 0.439], 0.46)).name == "best.pt"
    assert pick(_run(tmp_path / "d", [0.45, 0.44, 0.445], 0.46)).name == "last.pt"
