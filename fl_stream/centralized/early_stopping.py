"""Early stopping: watch one metric per epoch and stop once it has stopped improving.

The monitored metric is named by phase and metric, e.g. ``val_recall`` or ``train_loss``.
It also picks the best epoch, whose weights the centralized trainer keeps.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from fl_stream.monitor.protocol import METRIC_NAMES, lower_is_better

__all__ = ["MODES", "EarlyStopping", "default_mode", "monitorable_metrics"]

MODES = ("min", "max")

PHASES = ("train", "val")  # the phases each epoch reports


def monitorable_metrics() -> tuple[str, ...]:
    """Return every metric name early stopping can watch, e.g. ``val_recall``."""
    return tuple(f"{phase}_{name}" for phase in PHASES for name in METRIC_NAMES)


def default_mode(metric: str) -> str:
    """Return the sensible mode for ``metric``: ``min`` for a loss, ``max`` for the rest."""
    return "min" if lower_is_better(metric) else "max"


class EarlyStopping:
    """Stop training after ``patience`` epochs in which ``metric`` did not improve.

    An epoch improves on the best value when it is better by more than ``min_delta``
    (lower in mode ``min``, higher in mode ``max``); the first finite value is always the
    best so far. A NaN value (e.g. AUROC on a single-class split) never improves.

    Args:
        metric: the monitored metric, one of :func:`monitorable_metrics`.
        patience: epochs without improvement before stopping; 0 never stops (the metric
            still picks the best epoch).
        min_delta: the smallest change that counts as an improvement (>= 0).
        mode: ``"min"`` or ``"max"``; ``None`` picks :func:`default_mode` for ``metric``.

    Raises:
        ValueError: an argument is out of range; the message names it and what is allowed.
    """

    def __init__(
        self,
        metric: str = "val_loss",
        *,
        patience: int = 3,
        min_delta: float = 0.0,
        mode: str | None = None,
    ) -> None:
        if metric not in monitorable_metrics():
            raise ValueError(
                f"unknown metric {metric!r}; choose one of {', '.join(monitorable_metrics())}"
            )
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 0:
            raise ValueError(f"patience must be an integer >= 0 (0 never stops), got {patience!r}")
        if (
            isinstance(min_delta, bool)
            or not isinstance(min_delta, (int, float))
            or not (math.isfinite(min_delta) and min_delta >= 0)
        ):
            raise ValueError(f"min_delta must be a finite number >= 0, got {min_delta!r}")
        if mode is not None and mode not in MODES:
            raise ValueError(
                f"mode must be 'min' or 'max' (or None to pick by metric), got {mode!r}"
            )
        self.metric = metric
        self.patience = patience
        self.min_delta = float(min_delta)
        self.mode = mode or default_mode(metric)
        self.best_value: float = math.nan
        self.best_epoch: int | None = None
        self.epochs_without_improvement = 0
        self.stopped_epoch: int | None = None

    def update(self, epoch: int, metrics: Mapping[str, float]) -> bool:
        """Record one epoch's metrics; return ``True`` when training should stop now.

        Args:
            epoch: the epoch just finished.
            metrics: that epoch's metrics by monitored name, e.g. ``{"val_recall": 0.91, ...}``.

        Raises:
            KeyError: ``metrics`` lacks the monitored metric.
        """
        if self.metric not in metrics:
            raise KeyError(f"metrics of epoch {epoch} lack the monitored metric {self.metric!r}")
        value = float(metrics[self.metric])
        if self.improved(value):
            self.best_value, self.best_epoch = value, epoch
            self.epochs_without_improvement = 0
            return False
        self.epochs_without_improvement += 1
        if self.patience and self.epochs_without_improvement >= self.patience:
            self.stopped_epoch = epoch
            return True
        return False

    def improved(self, value: float) -> bool:
        """Return whether ``value`` beats the best value so far by more than ``min_delta``."""
        if math.isnan(value):
            return False
        if self.best_epoch is None:
            return True
        if self.mode == "min":
            return value < self.best_value - self.min_delta
        return value > self.best_value + self.min_delta

    @property
    def reason(self) -> str:
        """Say, in words, why training stopped (empty while it has not)."""
        if self.stopped_epoch is None:
            return ""
        direction = "decrease" if self.mode == "min" else "increase"
        epochs = "epoch" if self.patience == 1 else "epochs"
        best = (
            f"best {self.best_value:.4g} at epoch {self.best_epoch}"
            if self.best_epoch is not None
            else "no finite value yet"
        )
        return (
            f"{self.metric} did not {direction} by more than {self.min_delta:g} "
            f"for {self.patience} {epochs} ({best})"
        )
