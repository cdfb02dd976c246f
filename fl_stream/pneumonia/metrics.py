"""Binary classification metrics (pneumonia = positive class), computed by scikit-learn."""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike
from sklearn.metrics import accuracy_score, precision_recall_fscore_support, roc_auc_score

from fl_stream.monitor.protocol import METRIC_NAMES

__all__ = ["METRIC_NAMES", "classification_metrics"]

THRESHOLD = 0.5


def classification_metrics(
    labels: ArrayLike, probabilities: ArrayLike, loss: float
) -> dict[str, float]:
    """Return loss, accuracy, precision, recall, f1 and auroc for one pass over a data set.

    ``labels`` are 0/1, ``probabilities`` the predicted probability of class 1, ``loss`` the
    mean loss the caller measured. Precision and recall are 0 when undefined (no positive
    predictions or labels); auroc is NaN when only one class is present in ``labels``.
    """
    labels = np.asarray(labels).reshape(-1)
    probabilities = np.asarray(probabilities, dtype=np.float64).reshape(-1)
    predictions = (probabilities >= THRESHOLD).astype(labels.dtype)
    precision, recall, f1, _ = precision_recall_fscore_support(
        labels, predictions, average="binary", pos_label=1, zero_division=0
    )
    auroc = roc_auc_score(labels, probabilities) if len(np.unique(labels)) == 2 else math.nan
    return {
        "loss": float(loss),
        "accuracy": float(accuracy_score(labels, predictions)),
        "precision": float(precision),
        "recall": float(recall),
        "f1": float(f1),
        "auroc": float(auroc),
    }
