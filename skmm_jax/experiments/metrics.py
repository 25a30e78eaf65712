"""Classification metrics of a trained head on held-out data."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["metrics"]


def metrics(pred: Any, labels: Any, num_classes: int) -> dict[str, float]:
    """Accuracy and macro-F1.

    F1_c = 2 TP_c / (2 TP_c + FP_c + FN_c); macro-F1 averages it over the classes
    present in ``labels`` (a prediction of an absent class still counts as a false
    negative of the true class). Equals ``sklearn.metrics.f1_score(labels, pred,
    labels=np.unique(labels), average="macro")``.

    Returns:
      ``{"accuracy", "macro_f1", "classes_evaluated"}``.
    """
    pred, labels = np.asarray(pred), np.asarray(labels)
    if pred.shape != labels.shape or pred.ndim != 1 or labels.size == 0:
        raise ValueError(f"pred and labels must be equal-length non-empty 1-D arrays, got {pred.shape} and {labels.shape}")
    for name, values in (("pred", pred), ("labels", labels)):
        if not np.issubdtype(values.dtype, np.integer):
            raise ValueError(f"{name} must hold integer class ids, got dtype {values.dtype}")
        if values.min() < 0 or values.max() >= num_classes:
            raise ValueError(f"{name} span [{values.min()}, {values.max()}], outside [0, num_classes={num_classes})")
    hit = pred == labels
    tp = np.bincount(labels[hit], minlength=num_classes)
    fn = np.bincount(labels, minlength=num_classes) - tp
    fp = np.bincount(pred, minlength=num_classes) - tp
    present = np.bincount(labels, minlength=num_classes) > 0
    f1 = 2 * tp[present] / (2 * tp[present] + fp[present] + fn[present])
    return {"accuracy": float(hit.mean()), "macro_f1": float(f1.mean()), "classes_evaluated": int(present.sum())}
