"""How a :class:`~fl_stream.watch.state.RunState` reads: a rich live view, or plain lines.

:func:`live_view` draws the whole run for a terminal (header, progress bar with the time
left, banners, the latest metrics, the clients' progress); :func:`plain_line` turns one
applied message into one line of text for a pipe or a log file. Both read the state only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from rich import box
from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table
from rich.text import Text

from fl_stream.monitor.protocol import (
    COMPLETED,
    DEFAULT_ROUND_PHASE,
    EARLY_STOPPED,
    EPOCH_PHASES,
    FAILED,
    METRIC_NAMES,
    ROUND_PHASES,
    RUNNING,
    STATUS_LABELS,
    Message,
)

from .state import (
    CLIENT_PROGRESS,
    WAITING,
    ClientRow,
    RunState,
    Value,
    eval_label,
    label_of,
)

__all__ = [
    "StepBar",
    "end_text",
    "format_duration",
    "format_value",
    "live_view",
    "plain_line",
]

_STATUS_STYLES = {
    WAITING: "dim",
    RUNNING: "cyan",
    COMPLETED: "green",
    EARLY_STOPPED: "yellow",
    FAILED: "red",
}
_NO_VALUE = "—"


# --------------------------------------------------------------------------- values


def format_value(value: Value) -> str:
    """A metric value, compactly: 4 significant digits; non-finite ones as on the wire."""
    if value is None:
        return _NO_VALUE
    if isinstance(value, str):  # "NaN", "Infinity", "-Infinity" travel as strings
        return value
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return f"{value:.4g}"


def format_duration(seconds: float) -> str:
    """``45s``, ``3m 05s``, ``2h 07m``."""
    whole = max(0, round(seconds))
    if whole < 60:
        return f"{whole}s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


def _format_rate(per_second: float | None) -> str:
    if per_second is None:
        return _NO_VALUE
    if per_second >= 1000:
        return f"{per_second / 1000:.3g}k"
    return f"{per_second:.3g}"


def _fraction(done: int | None, total: int | None) -> str:
    if done is None:
        return _NO_VALUE
    return f"{done}/{total if total is not None else '?'}"


def _metrics_text(values: Mapping[str, Value]) -> str:
    known = [name for name in METRIC_NAMES if name in values]
    names = known + sorted(set(values).difference(METRIC_NAMES))
    return ", ".join(f"{name} {format_value(values[name])}" for name in names)


# --------------------------------------------------------------------------- shared text


def _status_label(state: RunState) -> str:
    status = state.status
    return STATUS_LABELS.get(status, status)


def _about(state: RunState) -> str:
    """``federated · 3 rounds · 2 clients``: what the run said about itself."""
    parts = [state.mode or "mode unknown"]
    if state.total is not None:
        parts.append(f"{state.total} {state.unit}s")
    if state.num_clients is not None:
        parts.append(f"{state.num_clients} clients")
    return " · ".join(parts)


def _time_left(state: RunState, now: float) -> str:
    if state.end is not None:
        return ""
    finish = state.finish_estimate()
    if finish is None:
        return "ETA —"
    left = finish - now
    return f"ETA ≈ {format_duration(left)}" if left > 0 else "ETA: finishing"


def _elapsed(state: RunState, now: float) -> str:
    if state.started_at is None:
        return ""
    until = state.last_at if state.end is not None and state.last_at is not None else now
    return f"elapsed {format_duration(until - state.started_at)}"


def early_stopping_text(data: Mapping[str, Any]) -> str:
    """The early-stopping banner: where, why, and the best value it kept."""
    best = format_value(_value(data.get("best_metric_value")))
    return (
        f"early stopping at epoch {data.get('epoch')}: {data.get('reason')} "
        f"(best {data.get('metric_name')} {best}, patience {data.get('patience')})"
    )


def error_text(data: Mapping[str, Any]) -> str:
    """An error banner: its type and message."""
    return f"error ({data.get('error_type')}): {data.get('error')}"


def end_text(state: RunState) -> str:
    """The run's last word: its status, best round or epoch, and final metrics."""
    parts = [f"run {state.run_id} {_status_label(state)}"]
    end = state.end or {}
    best = end.get("best_round", end.get("best_epoch"))
    if best is not None:
        unit = "round" if "best_round" in end else "epoch"
        by = f" by {end['best_metric']}" if end.get("best_metric") else ""
        parts.append(f"best {unit} {best}{by}")
    final = end.get("final_metrics")
    if isinstance(final, dict) and final:
        parts.append(f"final: {_metrics_text({str(k): _value(v) for k, v in final.items()})}")
    return " · ".join(parts)


def _value(value: Any) -> Value:
    return value if isinstance(value, int | float | str) or value is None else str(value)


# --------------------------------------------------------------------------- live view


class StepBar:
    """The run's progress as a rich progress bar: rounds or epochs done, and the time left.

    One bar, updated from the state on every draw: the time left comes from the messages'
    timestamps (:meth:`RunState.finish_estimate`), not from when the watcher saw them, so a
    run joined late or replayed gets a right estimate.
    """

    def __init__(self) -> None:
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[timing]}"),
            auto_refresh=False,
        )
        self._task = self.progress.add_task("", total=None, timing="")

    def update(self, state: RunState, now: float) -> Progress:
        """Set the bar to ``state`` at time ``now``; return it to draw."""
        current = "" if state.current is None else f" {state.current}"
        parts = ("done", _time_left(state, now), _elapsed(state, now))
        timing = " · ".join(part for part in parts if part)
        self.progress.update(
            self._task,
            description=f"{state.unit}{current}",
            total=state.total,
            completed=state.done,
            timing=timing,
        )
        return self.progress


def live_view(state: RunState, bar: StepBar, notice: str | None, now: float) -> RenderableType:
    """The whole run for a terminal at time ``now``; ``notice`` is the link's trouble, if any."""
    parts: list[RenderableType] = [_header(state, notice), bar.update(state, now)]
    parts.extend(_banners(state))
    parts.append(_metrics_table(state))
    if state.clients:
        parts.append(_clients_table(state, now))
    return Group(*parts)


def _header(state: RunState, notice: str | None) -> Text:
    header = Text.assemble(
        ("run ", "bold"),
        (state.run_id, "bold"),
        " · ",
        (_status_label(state), _STATUS_STYLES.get(state.status, "")),
        " · ",
        _about(state),
    )
    if notice is not None:
        header.append(f"  {notice}", style="bold yellow")
    return header


def _banners(state: RunState) -> list[Panel]:
    banners = []
    if state.early_stopping is not None:
        banners.append(Panel(early_stopping_text(state.early_stopping), border_style="yellow"))
    for error in state.errors:
        banners.append(Panel(error_text(error), border_style="red"))
    if state.end is not None:
        style = _STATUS_STYLES.get(state.status, "")
        banners.append(Panel(end_text(state), border_style=style))
    return banners


def _metrics_table(state: RunState) -> RenderableType:
    columns = state.ordered_columns()
    if not columns:
        return Text("no metrics yet", style="dim")
    table = Table(title="latest metrics", title_justify="left", box=box.SIMPLE_HEAD)
    table.add_column("metric")
    for column in columns:
        table.add_column(f"{column.label} ({state.unit} {column.step})", justify="right")
    for name in state.metric_names():
        table.add_row(name, *(format_value(column.values.get(name)) for column in columns))
    return table


def _clients_table(state: RunState, now: float) -> Table:
    round_ = max(row.round for row in state.clients.values())
    table = Table(title=f"clients · round {round_}", title_justify="left", box=box.SIMPLE_HEAD)
    for name in ("client", "phase", "epoch", "batch", "loss", "examples/s", "last report"):
        table.add_column(name, justify="left" if name in ("client", "phase") else "right")
    for row in sorted(state.clients.values(), key=lambda r: r.client_id):
        table.add_row(
            _client_name(row),
            row.phase,
            _fraction(row.epoch, row.num_epochs),
            _fraction(row.batch, row.num_batches),
            format_value(row.metrics.get("loss")),
            _format_rate(row.examples_per_second),
            _age(row, now),
        )
    return table


def _client_name(row: ClientRow) -> str:
    if row.node_id is None or row.node_id == row.client_id:
        return row.client_id
    return f"{row.client_id} (node {row.node_id})"


def _age(row: ClientRow, now: float) -> str:
    if row.reported_at is None:
        return _NO_VALUE
    return f"{format_duration(max(0.0, now - row.reported_at))} ago"


# --------------------------------------------------------------------------- plain lines


def plain_line(state: RunState, message: Message) -> str | None:
    """One line for a message just applied to ``state``; None for one not worth a line."""
    kind, data = message.get("type"), message.get("data")
    if not isinstance(data, dict):
        return None
    if kind == "training_mode":
        return f"run {state.run_id}: {_about(state)}"
    if kind == "epoch_end":
        phase = label_of(EPOCH_PHASES, data.get("phase"))
        line = f"epoch {_step(state, data.get('epoch'))} {phase}: {_metrics(data)}"
        return line + _eta_then(state)
    if kind == "round_metrics":
        return f"round {_step(state, data.get('round'))} {_round_phase(data)}"
    if kind == "round_end":
        return _round_end_line(state, data)
    if kind == CLIENT_PROGRESS:
        return _client_line(state, str(data.get("client_id")))
    if kind == "early_stopping":
        return early_stopping_text(data)
    if kind == "error":
        return error_text(data)
    if kind == "training_end":
        return end_text(state)
    return None


def _step(state: RunState, step: Any) -> str:
    return f"{step}/{state.total}" if state.total is not None else str(step)


def _metrics(data: Mapping[str, Any], key: str = "metrics") -> str:
    metrics = data.get(key)
    if not isinstance(metrics, dict) or not metrics:
        return "no metrics"
    return _metrics_text({str(k): _value(v) for k, v in metrics.items()})


def _round_phase(data: Mapping[str, Any]) -> str:
    phase = data.get("phase", DEFAULT_ROUND_PHASE)
    clients = data.get("num_clients")
    answered = f" ({clients} clients)" if isinstance(clients, int) else ""
    return f"{label_of(ROUND_PHASES, phase)}{answered}: {_metrics(data)}"


def _round_end_line(state: RunState, data: Mapping[str, Any]) -> str:
    return (
        f"round {_step(state, data.get('round'))} ended: "
        f"{ROUND_PHASES['train']} {_metrics(data, 'fit_metrics')} | "
        f"{eval_label(data)} {_metrics(data, 'eval_metrics')}{_eta_then(state)}"
    )


def _eta_then(state: RunState) -> str:
    """`` · ETA ≈ 1m 20s``: the time left when the latest round or epoch ended ("" unknown)."""
    finish = state.finish_estimate()
    if finish is None or state.done_at is None:
        return ""
    return f" · ETA ≈ {format_duration(finish - state.done_at)}"


def _client_line(state: RunState, client_id: str) -> str | None:
    row = state.clients.get(client_id)
    if row is None:  # malformed, or late for its round
        return None
    return (
        f"round {row.round} client {_client_name(row)} {row.phase}: "
        f"epoch {_fraction(row.epoch, row.num_epochs)}, "
        f"batch {_fraction(row.batch, row.num_batches)}, "
        f"loss {format_value(row.metrics.get('loss'))}, "
        f"{_format_rate(row.examples_per_second)} examples/s"
    )
