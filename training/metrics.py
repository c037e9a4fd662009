"""Segmentation metrics from a confusion matrix; the ignore label counts nowhere.

``confusion[t, p]`` is the number of pixels of true class ``t`` predicted as
``p``. Per class: precision = tp / predicted, recall = tp / true,
F1 = 2PR / (P + R), IoU = tp / (true + predicted - tp). A class that is neither
in the truth nor in the predictions has no IoU (None in JSON). The mIoU is the
mean IoU of the classes present in the truth: a class only predicted has IoU 0
but enters no mean (its false positives already lower the present classes').
"""

from __future__ import annotations

import numpy as np

from .dataset.manifest import IGNORE_INDEX


def confusion_matrix(
    truth: np.ndarray, predicted: np.ndarray, num_classes: int, ignore_index: int = IGNORE_INDEX
) -> np.ndarray:
    """Return the ``[C, C]`` int64 confusion matrix of label arrays of any equal shape.

    Pixels whose truth is ``ignore_index`` (or outside ``0..C-1``) are left out.
    """
    t = np.asarray(truth).ravel().astype(np.int64)
    p = np.asarray(predicted).ravel().astype(np.int64)
    if t.shape != p.shape:
        raise ValueError(f"truth and prediction differ in size: {t.size} vs {p.size}")
    keep = (t != ignore_index) & (t >= 0) & (t < num_classes)
    return np.bincount(t[keep] * num_classes + p[keep], minlength=num_classes * num_classes).reshape(
        num_classes, num_classes
    )


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    out = np.full(num.shape, np.nan)
    np.divide(num, den, out=out, where=den > 0)
    return out


def scores(confusion: np.ndarray) -> dict[str, object]:
    """Accuracy, per-class precision/recall/F1/IoU and mIoU of a confusion matrix.

    Values that are undefined (no pixel to divide by) are NaN.
    """
    cm = np.asarray(confusion, np.float64)
    tp = np.diag(cm)
    true = cm.sum(axis=1)
    pred = cm.sum(axis=0)
    total = cm.sum()
    precision = _ratio(tp, pred)
    recall = _ratio(tp, true)
    f1 = _ratio(2 * tp, true + pred)  # = 2PR / (P + R), defined whenever the class appears
    iou = _ratio(tp, true + pred - tp)
    # mIoU over the classes the labels hold: a class the set lacks has no IoU to earn, and
    # predicting it there already costs the present classes theirs. One definition for
    # training's validation, validate and the model cards.
    valid = true > 0
    return {
        "accuracy": float(tp.sum() / total) if total > 0 else float("nan"),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "iou": iou,
        "miou": float(iou[valid].mean()) if valid.any() else float("nan"),
        "pixels": int(total),
    }


def _json_number(v: float) -> float | None:
    return None if np.isnan(v) else round(float(v), 6)


def scores_json(confusion: np.ndarray, class_names: list[str]) -> dict[str, object]:
    """``scores`` as plain JSON types, per class by name, with the confusion matrix."""
    s = scores(confusion)
    per_class = {
        name: {
            "precision": _json_number(s["precision"][i]),  # type: ignore[index]
            "recall": _json_number(s["recall"][i]),  # type: ignore[index]
            "f1": _json_number(s["f1"][i]),  # type: ignore[index]
            "iou": _json_number(s["iou"][i]),  # type: ignore[index]
            "pixels": int(np.asarray(confusion)[i].sum()),
        }
        for i, name in enumerate(class_names)
    }
    return {
        "accuracy": _json_number(s["accuracy"]),  # type: ignore[arg-type]
        "miou": _json_number(s["miou"]),  # type: ignore[arg-type]
        "pixels": s["pixels"],
        "classes": per_class,
        "confusion": np.asarray(confusion).astype(int).tolist(),
        "class_names": list(class_names),
    }


def format_report(confusion: np.ndarray, class_names: list[str]) -> str:
    """A text table of the metrics and the confusion matrix, for the terminal."""
    s = scores(confusion)

    def pct(v: float) -> str:
        return "   -  " if np.isnan(v) else f"{100 * v:6.2f}"

    width = max(12, *(len(n) for n in class_names))
    lines = [f"pixel accuracy {pct(s['accuracy'])} %   mIoU {pct(s['miou'])} %   ({s['pixels']} pixels)", ""]  # type: ignore[arg-type]
    lines.append(f"{'class':<{width}}  precision  recall     F1    IoU   pixels")
    for i, name in enumerate(class_names):
        lines.append(
            f"{name:<{width}}  {pct(s['precision'][i])}    {pct(s['recall'][i])} {pct(s['f1'][i])} "  # type: ignore[index]
            f"{pct(s['iou'][i])} {int(np.asarray(confusion)[i].sum()):>8}"  # type: ignore[index]
        )
    lines += ["", "confusion matrix (rows: true class, columns: predicted)"]
    short = [n[:8] for n in class_names]
    lines.append(" " * width + "".join(f"{n:>10}" for n in short))
    for i, name in enumerate(class_names):
        lines.append(f"{name:<{width}}" + "".join(f"{int(v):>10}" for v in np.asarray(confusion)[i]))
    return "\n".join(lines)
