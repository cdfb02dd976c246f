"""NaN-robust metric aggregation for any Flower strategy's ``*_metrics_aggr_fn``."""

from __future__ import annotations

import math
from typing import cast

from flwr.app import MetricRecord, RecordDict

__all__ = ["aggregate_metrics"]


def aggregate_metrics(records: list[RecordDict], weighting_key: str) -> MetricRecord:
    """Average each scalar metric over the replies, weighted by ``weighting_key``.

    Unlike Flower's default, a client whose value is NaN (e.g. auroc on a one-class
    partition) is left out of that metric's average instead of turning it into NaN. Pass it
    to a strategy as ``train_metrics_aggr_fn`` and ``evaluate_metrics_aggr_fn``.
    """
    sums: dict[str, float] = {}
    weights: dict[str, float] = {}
    for record in records:
        metrics = next(iter(record.metric_records.values()))
        weight = cast(float, metrics[weighting_key])  # Flower checked it is a number
        for key, value in metrics.items():
            if key == weighting_key or not isinstance(value, (int, float)):
                continue
            if math.isfinite(value):
                sums[key] = sums.get(key, 0.0) + weight * value
                weights[key] = weights.get(key, 0.0) + weight
            else:
                sums.setdefault(key, 0.0)
                weights.setdefault(key, 0.0)
    return MetricRecord(
        {key: sums[key] / weights[key] if weights[key] > 0 else math.nan for key in sums}
    )
