"""The shipping rule of scripts/model_release.py, by its values."""

from __future__ import annotations

from pathlib import Path

from scripts.model_release import pick
from training.checkpoint import save_checkpoint
from training.train import LOG_HEADER


def _run(folder: Path, val_mious: list[float], best_epoch: int) -> Path:
    folder.mkdir()
    rows = [f"{k},1,1,0.5,0.5,{m},0.001,1" for k, m in enumerate(val_mious, 1)]
    (folder / "training_log.csv").write_text("\n".join([LOG_HEADER, *rows]) + "\n")
    ckpt = {"state_dict": {}, "class_names": ["background"], "class_colors": ["#000000"], "width": 0.25}
    save_checkpoint(folder / "best.pt", {**ckpt, "epoch": best_epoch})
    return folder


def test_last_epoch_ships_unless_more_than_two_points_below_the_best(tmp_path: Path) -> None:
    assert pick(_run(tmp_path / "a", [0.80, 0.85, 0.84], 2)).name == "last.pt"
    assert pick(_run(tmp_path / "b", [0.80, 0.85, 0.82], 2)).name == "best.pt"


def test_a_run_without_validation_ships_its_last_epoch(tmp_path: Path) -> None:
    # --validation 0 logs nan and saves every epoch as best.pt: the last epoch is best.pt.
    assert pick(_run(tmp_path / "n", [float("nan")] * 3, 3)).name == "best.pt"


def test_a_fine_tune_that_never_beat_its_starting_weights_ships_them(tmp_path: Path) -> None:
    # --init weights scored before epoch 1 (not a log row) stayed best.pt (epoch 0): whatever
    # the last epoch's distance to the best logged epoch, the starting weights ship.
    assert pick(_run(tmp_path / "c", [0.86, 0.87, 0.875], 0)).name == "best.pt"
    assert pick(_run(tmp_path / "d", [0.88, 0.87, 0.875], 1)).name == "last.pt"


def test_shipped_weights_leave_the_training_state_out(tmp_path: Path) -> None:
    from scripts.model_release import ship_weights
    from training.checkpoint import load_checkpoint

    run = _run(tmp_path / "e", [0.5], 1)
    ckpt = load_checkpoint(run / "best.pt")
    save_checkpoint(run / "last.pt", {**ckpt, "train_state_dict": {}, "optimizer": {}, "log": "x"})
    ship_weights(run / "last.pt", tmp_path / "shipped.pt")
    assert set(load_checkpoint(tmp_path / "shipped.pt")) == set(ckpt)
