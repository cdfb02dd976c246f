"""StreamingStrategy: wrap any Flower strategy so that it streams every round to the relay.

Like Flower's differential-privacy wrappers, :class:`StreamingStrategy` holds another
:class:`~flwr.serverapp.strategy.Strategy` (FedAvg, FedProx, FedAdam, Krum, a DP wrapper, a
user's own subclass...) and hands every hook to it; it adds streaming around
``aggregate_train``, ``aggregate_evaluate`` and ``start``. Its ``start`` is Flower's own
:meth:`Strategy.start`, which calls the hooks on the wrapper, so the wrapped strategy's
``start`` is not used.

Message sequence of a run (all through one
:class:`~fl_stream.monitor.sender.MetricsWebSocketSender`):

1. ``training_mode`` once the strategy's minimum number of nodes is connected, with the
   run's settings (``run_config``) when given;
2. each round: ``round_metrics`` + ``client_metrics`` for phase ``train`` (from
   ``aggregate_train``), the same for phase ``evaluate`` (from ``aggregate_evaluate``), then
   ``round_end`` after the round's last step (centralized evaluation when it is on), its
   ``eval_source`` saying whose evaluation its ``eval_metrics`` are (``server`` or ``clients``);
3. ``training_end`` with the run id, status, best round and final metrics; if the run fails,
   ``error`` and a ``failed`` ``training_end``, then the exception propagates.

Client entries name the client by the ``partition-id`` and ``device`` that
:func:`~fl_stream.flower.mods.sys_metrics_mod` puts in the reply (else by its node id).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from logging import INFO, WARNING
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, UserConfigValue
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result, Strategy
from flwr.serverapp.strategy.strategy_utils import sample_nodes

from fl_stream.flower.mods import SYS_RECORD
from fl_stream.monitor.protocol import (
    COMPLETED,
    EVAL_BY_CLIENTS,
    EVAL_BY_SERVER,
    FAILED,
    lower_is_better,
)
from fl_stream.monitor.sender import MetricsWebSocketSender

__all__ = ["EvaluateFn", "StreamingStrategy"]

EvaluateFn = Callable[[int, ArrayRecord], MetricRecord | None]


class StreamingStrategy(Strategy):
    """Run ``strategy`` unchanged and stream its progress through ``sender``.

    Args:
        strategy: the Flower strategy that configures and aggregates the rounds.
        sender: where the messages go (the sender never blocks or raises).
        run_id: the run id reported in ``training_end``; default: the sender's.
        best_metric: the evaluation metric that picks the best round (lowest for a loss or
            a duration, :func:`~fl_stream.monitor.protocol.lower_is_better`; else highest).
        run_config: the run's settings, sent with ``training_mode`` so runs can be told
            apart (leave secrets such as tokens out).

    Raises:
        ValueError: neither ``run_id`` nor the sender names the run.
    """

    def __init__(
        self,
        strategy: Strategy,
        sender: MetricsWebSocketSender,
        *,
        run_id: str | None = None,
        best_metric: str = "loss",
        run_config: Mapping[str, UserConfigValue | None] | None = None,
    ) -> None:
        run_id = run_id or sender.run_id
        if not run_id:
            raise ValueError("StreamingStrategy needs a run_id (or a sender with one)")
        self.strategy = strategy
        self.sender = sender
        self.run_id = run_id
        self.best_metric = best_metric
        self.run_config = _without_secrets(run_config) if run_config is not None else None
        self._num_rounds = 0
        self._centralized = False
        self._fit_metrics: dict[int, dict[str, float]] = {}
        self._eval_metrics: dict[int, dict[str, float]] = {}  # rounds that ended only

    def __repr__(self) -> str:
        return f"StreamingStrategy({self.strategy!r})"

    # ------------------------------------------------------------------ delegated hooks

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """The wrapped strategy's training round."""
        return self.strategy.configure_train(server_round, arrays, config, grid)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """The wrapped strategy's evaluation round."""
        return self.strategy.configure_evaluate(server_round, arrays, config, grid)

    def summary(self) -> None:
        """Log where the run streams to, then the wrapped strategy's summary."""
        where = self.sender.websocket_uri or "its log only"
        log(INFO, "\t├──> Streaming run %s to %s", self.run_id, where)
        self.strategy.summary()

    # ------------------------------------------------------------------ streamed hooks

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
        """Run the rounds, streaming ``training_mode`` first and ``training_end`` last."""
        self._num_rounds = num_rounds
        self._centralized = evaluate_fn is not None
        self._fit_metrics.clear()
        self._eval_metrics.clear()
        try:
            # Wait (as the strategy will) for its nodes, so num_clients counts them all.
            _, nodes = sample_nodes(grid, _wrapped_attr(self, "min_available_nodes", 0), 0)
            self.sender.send_training_mode(True, num_rounds, len(nodes), config=self.run_config)
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

    def __getattr__(self, name: str) -> Any:
        """What the wrapper does not define is the wrapped strategy's (``fraction_train``...)."""
        wrapped = self.__dict__.get("strategy")
        if wrapped is None:  # still in __init__
            raise AttributeError(name)
        return getattr(wrapped, name)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Aggregate with the wrapped strategy, then stream the round's train metrics."""
        replies = list(replies)
        arrays, metrics = self.strategy.aggregate_train(server_round, replies)
        self._fit_metrics[server_round] = _scalars(metrics)
        fit_metrics = self._fit_metrics[server_round]
        _never_fails(self._stream_phase, server_round, "train", replies, fit_metrics)
        return arrays, metrics

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """Aggregate with the wrapped strategy, then stream the round's evaluation metrics."""
        replies = list(replies)
        metrics = self.strategy.aggregate_evaluate(server_round, replies)
        if replies:
            _never_fails(self._stream_phase, server_round, "evaluate", replies, _scalars(metrics))
        if not self._centralized:
            _never_fails(self._end_round, server_round, _scalars(metrics))
        return metrics

    # ------------------------------------------------------------------ helpers

    def _streaming_evaluate_fn(self, evaluate_fn: EvaluateFn) -> EvaluateFn:
        """Wrap ``evaluate_fn`` so its result becomes the round's eval metrics."""

        def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
            metrics = evaluate_fn(server_round, arrays)
            if server_round > 0:  # round 0 evaluates the initial model, before any round
                _never_fails(self._end_round, server_round, _scalars(metrics))
            return metrics

        return evaluate

    def _stream_phase(
        self, server_round: int, phase: str, replies: list[Message], metrics: dict[str, float]
    ) -> None:
        weighting_key = _wrapped_attr(self, "weighted_by_key", "num-examples")
        clients = [_client_entry(reply, weighting_key) for reply in replies]
        answered = sum(1 for reply in replies if not reply.has_error())
        self.sender.send_round_metrics(
            server_round, self._num_rounds, metrics, phase=phase, num_clients=answered
        )
        self.sender.send_client_metrics(server_round, self._num_rounds, phase, clients)

    def _end_round(self, server_round: int, eval_metrics: dict[str, float]) -> None:
        self._eval_metrics[server_round] = eval_metrics
        self.sender.send_round_end(
            server_round,
            self._num_rounds,
            self._fit_metrics.get(server_round, {}),
            eval_metrics,
            eval_source=EVAL_BY_SERVER if self._centralized else EVAL_BY_CLIENTS,
        )
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
        last = max(self._eval_metrics, default=0)  # 0: no round ended
        final = self._eval_metrics.get(last) or self._fit_metrics.get(last) or {}
        return {
            "status": status,
            "best_round": best_round,
            "final_metrics": final,
            "best_metric": self.best_metric,
        }


def _wrapped_attr(strategy: Strategy, name: str, default: Any) -> Any:
    """``name`` of the first strategy down the wrapping chain (``.strategy``) that has it."""
    current: Any = strategy
    while current is not None:
        if hasattr(current, name):
            return getattr(current, name)
        current = getattr(current, "strategy", None)
    return default


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
    sys_record = reply.content.config_records.get(SYS_RECORD, ConfigRecord())
    metrics = _scalars(next(iter(reply.content.metric_records.values()), None))
    entry: dict[str, Any] = {
        "client_id": str(sys_record.get("partition-id", node_id)),
        "node_id": str(node_id),  # a string: 64-bit ids lose precision in JavaScript
        "num_examples": _count(metrics.pop(weighting_key, 0)),
        "metrics": metrics,
    }
    if isinstance(device := sys_record.get("device"), str):
        entry["device"] = device
    return entry


# Run-config keys that hold credentials: never sent with training_mode (dashboards show it).
_SECRET_WORDS = ("token", "secret", "password", "credential")


def _without_secrets(run_config: Mapping[str, Any]) -> dict[str, Any]:
    """``run_config`` without the keys that name a credential (e.g. ``relay-token``)."""
    return {
        key: value
        for key, value in run_config.items()
        if not any(word in key.lower() for word in _SECRET_WORDS)
    }


def _never_fails(step: Callable[..., None], *args: Any) -> None:
    """Run one streaming step; a failure is logged, never raised: training goes on."""
    try:
        step(*args)
    except Exception as exc:
        log(
            WARNING, "fl-stream: streaming step %s failed, training goes on: %r", step.__name__, exc
        )


def _count(value: Any) -> int:
    """A client's example count as a non-negative int (0 when it is not a finite number)."""
    try:
        return max(0, int(value))
    except (TypeError, ValueError, OverflowError):
        return 0
