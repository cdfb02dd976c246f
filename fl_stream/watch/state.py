"""What a followed run looks like, from its messages alone: no terminal, no socket.

:class:`RunState` applies one run's messages in seq order and keeps what the watcher shows:
the mode and status, the rounds or epochs done and the time left, the latest aggregated
metrics of each phase, each client's progress during a round, early stopping, errors and the
end. A message whose seq it has applied already is skipped, so a replay that overlaps what it
holds (after a reconnect) shows nothing twice. Times are POSIX seconds taken from the
messages' ``timestamp``, so a run replayed long after it ran reads as it ran.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from fl_stream.monitor.protocol import (
    CENTRALIZED,
    COMPLETED,
    DEFAULT_EVAL_SOURCE,
    DEFAULT_ROUND_PHASE,
    EARLY_STOPPED,
    EPOCH_PHASES,
    EVAL_SOURCES,
    FAILED,
    FEDERATED,
    METRIC_NAMES,
    ROUND_PHASES,
    RUN_STATUSES,
    RUNNING,
    Message,
)

__all__ = [
    "CLIENT_PROGRESS",
    "WAITING",
    "ClientRow",
    "MetricColumn",
    "RunState",
    "Value",
    "eval_label",
    "exit_status",
    "label_of",
]

# A client's progress within a round. The protocol declares it, but a relay older than that
# declaration passes it on unchecked, as a custom message: every field is checked here too.
CLIENT_PROGRESS = "client_progress"
# The watcher's own status before the run's first message.
WAITING = "waiting"

# A metric's value on the wire: a number, a non-finite string ("NaN", ...) or null.
Value = float | int | str | None

# Column order: training before evaluation, federated and centralized alike.
_COLUMN_ORDER = tuple(
    dict.fromkeys(
        (ROUND_PHASES["train"], EPOCH_PHASES["train"], *ROUND_PHASES.values())
        + (*EPOCH_PHASES.values(), *EVAL_SOURCES.values())
    )
)


@dataclass
class MetricColumn:
    """The latest aggregated metrics of one phase (``fit``, ``eval``, ``train``, ``val``, ...)."""

    label: str
    step: int  # the round or epoch they are from
    values: dict[str, Value]


@dataclass
class ClientRow:
    """One client's latest ``client_progress`` report in the current round."""

    client_id: str
    round: int
    phase: str  # its display name: fit or eval
    reported_at: float | None
    epoch: int | None = None
    num_epochs: int | None = None
    batch: int | None = None
    num_batches: int | None = None
    node_id: str | None = None
    examples_per_second: float | None = None
    metrics: dict[str, Value] = field(default_factory=dict)


class RunState:
    """One run as its messages describe it.

    Args:
        run_id: the run followed (shown; messages are not filtered by it).
    """

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self.mode: str | None = None  # FEDERATED or CENTRALIZED, declared or inferred
        self.num_clients: int | None = None
        self.total: int | None = None  # rounds or epochs planned, when the run said so
        self.current: int | None = None  # the latest round or epoch any message names
        self.done = 0  # rounds ended (round_end) or epochs reported (epoch_end)
        self.started_at: float | None = None  # the earliest message
        self.done_at: float | None = None  # when the latest round or epoch ended
        self.last_at: float | None = None  # the latest message
        self.last_seq = 0
        self.applied = 0  # messages applied (skipped repeats not counted)
        self.columns: dict[str, MetricColumn] = {}
        self.clients: dict[str, ClientRow] = {}
        self.early_stopping: dict[str, Any] | None = None
        self.errors: list[dict[str, Any]] = []
        self.end: dict[str, Any] | None = None  # training_end's data

    # ----------------------------------------------------------------------- reading

    @property
    def unit(self) -> str:
        """What the run counts: ``epoch`` for a centralized run, else ``round``."""
        return "epoch" if self.mode == CENTRALIZED else "round"

    @property
    def status(self) -> str:
        """:data:`WAITING` before any message, then the protocol's run statuses.

        ``training_end`` decides; before it, an error means ``failed`` (as the relay says)
        and early stopping ``early_stopped``.
        """
        if self.end is not None:
            status = self.end.get("status")
            return status if status in RUN_STATUSES else COMPLETED
        if self.errors:
            return FAILED
        if self.early_stopping is not None:
            return EARLY_STOPPED
        return RUNNING if self.applied else WAITING

    def metric_names(self) -> list[str]:
        """Every metric of every column: the protocol's six in their order, then by name."""
        names = {name for column in self.columns.values() for name in column.values}
        known = [name for name in METRIC_NAMES if name in names]
        return known + sorted(names.difference(METRIC_NAMES))

    def ordered_columns(self) -> list[MetricColumn]:
        """The metric columns, training before evaluation."""

        def rank(column: MetricColumn) -> int:
            label = column.label
            return _COLUMN_ORDER.index(label) if label in _COLUMN_ORDER else len(_COLUMN_ORDER)

        return sorted(self.columns.values(), key=rank)

    def finish_estimate(self) -> float | None:
        """When the last round or epoch should end, from the pace so far (None: unknown)."""
        if self.total is None or self.started_at is None or self.done_at is None:
            return None
        if not 0 < self.done < self.total:
            return None
        per_step = (self.done_at - self.started_at) / self.done
        return self.done_at + per_step * (self.total - self.done)

    # ----------------------------------------------------------------------- applying

    def apply(self, message: Message) -> bool:
        """Record one message of the run; return False when its seq was applied already."""
        seq = message.get("seq")
        if isinstance(seq, int):
            if seq <= self.last_seq:
                return False
            self.last_seq = seq
        self.applied += 1
        at = _posix_time(message.get("timestamp"))
        self._note_time(at)
        data = message.get("data")
        handler = _HANDLERS.get(str(message.get("type")))
        if handler is not None and isinstance(data, dict):
            handler(self, data, at)
        return True

    def _note_time(self, at: float | None) -> None:
        if at is None:
            return
        self.started_at = at if self.started_at is None else min(self.started_at, at)
        self.last_at = at if self.last_at is None else max(self.last_at, at)

    def _training_mode(self, data: dict[str, Any], at: float | None) -> None:
        federated = bool(data.get("is_federated"))
        self.mode = FEDERATED if federated else CENTRALIZED
        # A centralized run plans num_epochs (num_rounds 0); the original format may have
        # put them in num_rounds.
        if federated:
            planned = data.get("num_rounds")
        else:
            planned = data.get("num_epochs", data.get("num_rounds"))
        self.total = _positive(planned) or self.total
        self.num_clients = _positive(data.get("num_clients"))

    def _epoch_end(self, data: dict[str, Any], at: float | None) -> None:
        epoch = self._progress(CENTRALIZED, data.get("epoch"), None)
        if epoch is None:
            return
        self._mark_done(epoch, at)
        self._set_column(label_of(EPOCH_PHASES, data.get("phase")), epoch, data.get("metrics"))

    def _round_metrics(self, data: dict[str, Any], at: float | None) -> None:
        round_ = self._progress(FEDERATED, data.get("round"), data.get("total_rounds"))
        if round_ is None:
            return
        phase = data.get("phase", DEFAULT_ROUND_PHASE)
        self._set_column(label_of(ROUND_PHASES, phase), round_, data.get("metrics"))

    def _round_end(self, data: dict[str, Any], at: float | None) -> None:
        round_ = self._progress(FEDERATED, data.get("round"), data.get("total_rounds"))
        if round_ is None:
            return
        self._mark_done(round_, at)
        self._set_column(ROUND_PHASES["train"], round_, data.get("fit_metrics"))
        self._set_column(eval_label(data), round_, data.get("eval_metrics"))
        self.clients = {k: row for k, row in self.clients.items() if row.round > round_}

    def _client_metrics(self, data: dict[str, Any], at: float | None) -> None:
        self._progress(FEDERATED, data.get("round"), data.get("total_rounds"))

    def _client_progress(self, data: dict[str, Any], at: float | None) -> None:
        client_id, reported = data.get("client_id"), _count(data.get("round"))
        if not isinstance(client_id, str) or reported is None:
            return
        # Round 0: the client does not know the server round; it is in the one running now.
        round_ = reported or self.done + 1
        if round_ <= self.done:
            return  # late for a round that has ended
        self._progress(FEDERATED, round_, None)
        phase = data.get("phase")
        node_id = data.get("node_id")
        self.clients = {k: row for k, row in self.clients.items() if row.round >= round_}
        self.clients[client_id] = ClientRow(
            client_id=client_id,
            round=round_,
            phase=label_of(ROUND_PHASES, phase) if isinstance(phase, str) else "",
            reported_at=at,
            epoch=_count(data.get("epoch")),
            num_epochs=_count(data.get("num_epochs")),
            batch=_count(data.get("batch")),
            num_batches=_count(data.get("num_batches")),
            node_id=node_id if isinstance(node_id, str) else None,
            examples_per_second=_finite(data.get("examples_per_second")),
            metrics=_values(data.get("metrics")),
        )

    def _early_stopping(self, data: dict[str, Any], at: float | None) -> None:
        self.early_stopping = data

    def _error(self, data: dict[str, Any], at: float | None) -> None:
        self.errors.append(data)

    def _training_end(self, data: dict[str, Any], at: float | None) -> None:
        self.end = data
        self.clients = {}

    # ----------------------------------------------------------------------- helpers

    def _progress(self, mode: str, step: Any, total: Any) -> int | None:
        """Note a message about round or epoch ``step``; return it (None: not a count)."""
        self.mode = self.mode or mode  # a run that never sent training_mode
        self.total = _positive(total) or self.total
        step = _count(step)
        if step is not None:
            self.current = step if self.current is None else max(self.current, step)
        return step

    def _mark_done(self, step: int, at: float | None) -> None:
        if step >= self.done:
            self.done = step
            self.done_at = at if at is not None else self.done_at

    def _set_column(self, label: str, step: int, metrics: Any) -> None:
        values = _values(metrics)
        column = self.columns.get(label)
        if values and (column is None or step >= column.step):
            self.columns[label] = MetricColumn(label, step, values)


_HANDLERS = {
    "training_mode": RunState._training_mode,
    "epoch_end": RunState._epoch_end,
    "round_metrics": RunState._round_metrics,
    "round_end": RunState._round_end,
    "client_metrics": RunState._client_metrics,
    CLIENT_PROGRESS: RunState._client_progress,
    "early_stopping": RunState._early_stopping,
    "error": RunState._error,
    "training_end": RunState._training_end,
}


def label_of(labels: Mapping[str, str], phase: Any) -> str:
    """How ``phase`` is shown (``train`` -> ``fit`` in ``ROUND_PHASES``); itself if unknown."""
    text = str(phase)
    return labels.get(text, text)


def eval_label(round_end: Mapping[str, Any]) -> str:
    """The column of a ``round_end``'s ``eval_metrics``: by the clients, or the server's own."""
    source = str(round_end.get("eval_source", DEFAULT_EVAL_SOURCE))
    return EVAL_SOURCES.get(source, EVAL_SOURCES[DEFAULT_EVAL_SOURCE])


def exit_status(status: str) -> int:
    """The watcher's exit status for a finished run: 0 completed or early-stopped, else 1."""
    return 0 if status in (COMPLETED, EARLY_STOPPED) else 1


def _posix_time(timestamp: Any) -> float | None:
    if not isinstance(timestamp, str):
        return None
    try:
        parsed = datetime.fromisoformat(timestamp)
    except ValueError:
        return None
    # The protocol's timestamps are UTC; one without an offset is taken as UTC too.
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()


def _count(value: Any) -> int | None:
    """``value`` when it is a non-negative integer (not a bool), else None."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _positive(value: Any) -> int | None:
    count = _count(value)
    return count if count else None


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _values(metrics: Any) -> dict[str, Value]:
    """The scalar entries of a metrics object (anything else is not a metrics object)."""
    if not isinstance(metrics, dict):
        return {}
    return {
        str(name): value
        for name, value in metrics.items()
        if value is None or (isinstance(value, int | float | str) and not isinstance(value, bool))
    }
