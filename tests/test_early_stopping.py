"""Unit tests of the early-stopping callback."""

from __future__ import annotations

import math

import pytest

from fl_stream.centralized.early_stopping import EarlyStopping, default_mode, monitorable_metrics


def feed(stopper: EarlyStopping, values: list[float]) -> list[bool]:
    """Feed one value of the monitored metric per epoch (1, 2, ...); return each decision."""
    return [stopper.update(epoch, {stopper.metric: v}) for epoch, v in enumerate(values, 1)]


def test_monitorable_metrics_cover_both_phases_and_all_six_metrics() -> None:
    names = monitorable_metrics()
    assert len(names) == 12
    assert {"val_recall", "val_loss", "train_loss", "train_auroc"} <= set(names)


@pytest.mark.parametrize(
    ("metric", "mode"),
    [("val_loss", "min"), ("train_loss", "min"), ("val_recall", "max"), ("val_auroc", "max")],
)
def test_mode_defaults_by_metric_name(metric: str, mode: str) -> None:
    assert default_mode(metric) == mode
    assert EarlyStopping(metric).mode == mode


def test_stops_after_patience_epochs_without_improvement_in_max_mode() -> None:
    stopper = EarlyStopping("val_recall", patience=2)
    assert feed(stopper, [0.5, 0.7, 0.6, 0.7]) == [False, False, False, True]
    assert (stopper.best_epoch, stopper.best_value, stopper.stopped_epoch) == (2, 0.7, 4)
    assert stopper.reason == (
        "val_recall did not increase by more than 0 for 2 epochs (best 0.7 at epoch 2)"
    )


def test_an_improvement_resets_the_count_in_min_mode() -> None:
    stopper = EarlyStopping("val_loss", patience=2)
    assert feed(stopper, [1.0, 1.1, 0.9, 0.95, 0.8, 0.85, 0.85]) == [
        False,
        False,
        False,
        False,
        False,
        False,
        True,
    ]
    assert (stopper.best_epoch, stopper.best_value) == (5, 0.8)


def test_min_delta_ignores_small_improvements() -> None:
    stopper = EarlyStopping("val_accuracy", patience=1, min_delta=0.05)
    assert feed(stopper, [0.80, 0.84]) == [False, True]
    assert stopper.best_epoch == 1
    assert "by more than 0.05 for 1 epoch " in stopper.reason


def test_explicit_mode_overrides_the_default() -> None:
    stopper = EarlyStopping("val_loss", patience=1, mode="max")
    assert feed(stopper, [1.0, 2.0, 1.5]) == [False, False, True]
    assert stopper.best_value == 2.0


def test_patience_zero_never_stops_but_still_tracks_the_best_epoch() -> None:
    stopper = EarlyStopping("val_f1", patience=0)
    assert not any(feed(stopper, [0.9, 0.1, 0.1, 0.1, 0.1]))
    assert stopper.best_epoch == 1
    assert stopper.reason == ""


def test_nan_never_counts_as_an_improvement() -> None:
    stopper = EarlyStopping("val_auroc", patience=2)
    assert feed(stopper, [math.nan, 0.6, math.nan, math.nan]) == [False, False, False, True]
    assert (stopper.best_epoch, stopper.best_value) == (2, 0.6)


def test_missing_monitored_metric_is_a_clear_error() -> None:
    with pytest.raises(KeyError, match="lack the monitored metric 'val_recall'"):
        EarlyStopping("val_recall").update(1, {"val_loss": 0.3})


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"metric": "val_speed"}, "unknown metric 'val_speed'; choose one of train_loss"),
        ({"metric": "recall"}, "unknown metric 'recall'"),
        ({"patience": -1}, "patience must be an integer >= 0"),
        ({"patience": 1.5}, "patience must be an integer >= 0"),
        ({"min_delta": -0.1}, "min_delta must be a finite number >= 0"),
        ({"min_delta": math.inf}, "min_delta must be a finite number >= 0"),
        ({"mode": "up"}, "mode must be 'min' or 'max'"),
    ],
)
def test_bad_arguments_are_refused_with_a_clear_error(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        EarlyStopping(**kwargs)
