"""StreamingFedAvg: Flower's FedAvg that streams every round to the fl-stream relay.

Message sequence of a run (all through one
:class:`~fl_stream.monitor.sender.MetricsWebSocketSender`):

1. ``training_mode`` once the minimum number of nodes is connected;
2. each round: ``round_metrics`` + ``client_metrics`` for phase ``train`` (from
   ``aggregate_train``), the same for phase ``evaluate`` (from ``aggregate_evaluate``), then
   ``round_end`` after the round's last step (centralized evaluation when it is on), its
   ``eval_source`` saying whose evaluation its ``eval_metrics`` are (``server`` or ``clients``);
3. ``training_end`` with the run id, status, best round and final metrics; if the run fails,
   ``error`` and a ``failed`` ``training_end``, then the exception propagates.

The strategy knows nothing about data or models: centralized evaluation is the
``evaluate_fn`` the ServerApp passes to :meth:`StreamingFedAvg.start`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from logging import INFO
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, Result
from flwr.serverapp.strategy.strategy_utils import sample_nodes

from fl_stream.monitor.protocol import (
    COMPLETED,
    EVAL_BY_CLIENTS,
    EVAL_BY_SERVER,
    FAILED,
    lower_is_better,
)
from fl_stream.monitor.sender import MetricsWebSocketSender

__all__ = ["EvaluateFn", "StreamingFedAvg", "aggregate_metrics"]

EvaluateFn = Callable[[int, ArrayRecord], MetricRecord | None]


def aggregate_metrics(records: list[RecordDict], weighting_key: str) -> MetricRecord:
    """Average each scalar metric over the replies, weighted by ``weighting_key``.

    Unlike Flower's default, a client whose value is NaN (e.g. auroc on a one-class
    partition) is left out of that metric's average instead of turning it into NaN.
    """
    sums: dict[str, float] = {}
    weights: dict[str, float] = {}
    for record in records:
        metrics = next(iter(record.metric_records.values()))
        weight = float(metrics[weighting_key])
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


class StreamingFedAvg(FedAvg):
    """FedAvg that streams its progress through ``sender``.

    Args:
        sender: where the messages go (the sender never blocks or raises).
        run_id: the Flower run id, reported in ``training_end``.
        best_metric: the evaluation metric that picks the best round (lowest for a loss or
            a duration, :func:`~fl_stream.monitor.protocol.lower_is_better`; else highest).
        **fedavg_args: passed to :class:`flwr.serverapp.strategy.FedAvg`.
    """

    def __init__(
        self,
        sender: MetricsWebSocketSender,
        *,
        run_id: str,
        best_metric: str = "loss",
        **fedavg_args: Any,
    ) -> None:
        fedavg_args.setdefault("train_metrics_aggr_fn", aggregate_metrics)
        fedavg_args.setdefault("evaluate_metrics_aggr_fn", aggregate_metrics)
        super().__init__(**fedavg_args)
        self.sender = sender
        self.run_id = run_id
        self.best_metric = best_metric
        self._num_rounds = 0
        self._centralized = False
        self._fit_metrics: dict[int, dict[str, float]] = {}
        self._eval_metrics: dict[int, dict[str, float]] = {}  # rounds that ended only

    def start(
        self,
        grid: Grid,
        initial_arrays: ArrayRecord,
        num_rounds: int = 3,
        timeout: float = 3600,
        train_config: ConfigRecord | None = None,
        evaluate_config: ConfigRecord | None = None,
        evaluate_fn: EvaluateFn | None = None,
    ) -> Result:
        """Run FedAvg, streaming ``training_mode`` first and ``training_end`` last."""
        self._num_rounds = num_rounds
        self._centralized = evaluate_fn is not None
        self._fit_metrics.clear()
        self._eval_metrics.clear()
        try:
            # Wait (as FedAvg would) for the nodes, so num_clients counts them all.
            _, nodes = sample_nodes(grid, self.min_available_nodes, 0)
            self.sender.send_training_mode(True, num_rounds, len(nodes))
            result = super().start(
                grid,
                initial_arrays,
                num_rounds,
                timeout,
                train_config,
                evaluate_config,
                self._streaming_evaluate_fn(evaluate_fn) if evaluate_fn else None,
            )
        except BaseException as exc:  # KeyboardInterrupt too: the dashboard should know
            self.sender.send_failure(self.run_id, exc, self._summary(FAILED))
            raise
        self.sender.send_training_end(self.run_id, self._summary(COMPLETED))
        return result

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Aggregate as FedAvg does, then stream the round's train metrics."""
        replies = list(replies)
        arrays, metrics = super().aggregate_train(server_round, replies)
        self._fit_metrics[server_round] = _scalars(metrics)
        self._stream_phase(server_round, "train", replies, self._fit_metrics[server_round])
        return arrays, metrics

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """Aggregate as FedAvg does, then stream the round's evaluation metrics."""
        replies = list(replies)
        metrics = super().aggregate_evaluate(server_round, replies)
        if replies:
            self._stream_phase(server_round, "evaluate", replies, _scalars(metrics))
        if not self._centralized:
            self._end_round(server_round, _scalars(metrics))
        return metrics

    # ------------------------------------------------------------------ helpers

    def _streaming_evaluate_fn(self, evaluate_fn: EvaluateFn) -> EvaluateFn:
        """Wrap ``evaluate_fn`` so its result becomes the round's eval metrics."""

        def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
            metrics = evaluate_fn(server_round, arrays)
            if server_round > 0:  # round 0 evaluates the initial model, before any round
                self._end_round(server_round, _scalars(metrics))
            return metrics

        return evaluate

    def _stream_phase(
        self, server_round: int, phase: str, replies: list[Message], metrics: dict[str, float]
    ) -> None:
        clients = [_client_entry(reply, self.weighted_by_key) for reply in replies]
        answered = sum(1 for reply in replies if not reply.has_error())
        self.sender.send_round_metrics(
            server_round, self._num_rounds, metrics, phase=phase, num_clients=answered
        )
        self.sender.send_client_metrics(server_round, self._num_rounds, phase, clients)

    def _end_round(self, server_round: int, eval_metrics: dict[str, float]) -> None:
        self._eval_metrics[server_round] = eval_metrics
        # send_round_end() takes no eval_source: the generic send builds the same message
        # with it (validated against the protocol all the same).
        data = {
            "round": server_round,
            "total_rounds": self._num_rounds,
            "fit_metrics": self._fit_metrics.get(server_round, {}),
            "eval_metrics": eval_metrics,
            "eval_source": EVAL_BY_SERVER if self._centralized else EVAL_BY_CLIENTS,
        }
        self.sender.send_metrics(data, "round_end")
        log(INFO, "Streamed round %s/%s", server_round, self._num_rounds)

    def _summary(self, status: str) -> dict[str, Any]:
        """Status, best round by ``best_metric`` and the metrics of the last round that ended."""
        scored = {
            rnd: metrics[self.best_metric]
            for rnd, metrics in self._eval_metrics.items()
            if math.isfinite(metrics.get(self.best_metric, math.nan))
        }
        pick = min if lower_is_better(self.best_metric) else max
        best_round = pick(scored, key=scored.__getitem__) if scored else None
        last = max(self._eval_metrics, default=None)
        final = self._eval_metrics.get(last) or self._fit_metrics.get(last) or {}
        return {
            "status": status,
            "best_round": best_round,
            "final_metrics": final,
            "best_metric": self.best_metric,
        }


def _scalars(metrics: MetricRecord | None) -> dict[str, float]:
    """The scalar entries of a MetricRecord (list-valued metrics are not streamed)."""
    if metrics is None:
        return {}
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}


def _client_entry(reply: Message, weighting_key: str) -> dict[str, Any]:
    """One client's row in ``client_metrics``: who it is, its data size and its metrics."""
    node_id = reply.metadata.src_node_id
    if reply.has_error():
        return {
            "client_id": str(node_id),
            "node_id": str(node_id),
            "num_examples": 0,
            "metrics": {},
            "error": reply.error.reason,
        }
    client = reply.content.config_records.get("client", ConfigRecord())
    metrics = _scalars(next(iter(reply.content.metric_records.values()), None))
    num_examples = int(metrics.pop(weighting_key, 0))
    return {
        "client_id": str(client.get("partition-id", node_id)),
        "node_id": str(node_id),  # a string: 64-bit ids lose precision in JavaScript
        "num_examples": num_examples,
        "metrics": metrics,
    }
