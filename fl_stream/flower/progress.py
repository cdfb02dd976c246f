"""A Flower client mod that streams each ClientApp call's live progress to the relay.

Flower hears from a client only when its call returns; with this mod each client reports
while it trains and evaluates, straight to the relay, under the run's id. Add the mod and
report from the loop through :func:`current_reporter`::

    from fl_stream.flower import current_reporter, progress_mod

    app = ClientApp(mods=[sys_metrics_mod, progress_mod])

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        reporter = current_reporter()
        for epoch in range(1, num_epochs + 1):
            reporter.epoch_started(epoch, num_epochs)
            for batch, (x, y) in enumerate(loader, start=1):
                ...
                reporter.batch_done(batch, len(loader), len(y), loss=running_loss)

For each train and evaluate call the mod makes a
:class:`~fl_stream.monitor.progress.ProgressReporter` (round: the message config's
``server-round``; phase: the message type; client id: the node's ``partition-id`` when it has
one, else its node id, as the strategy names clients) and makes it :func:`current_reporter`
while the call runs, in the thread that runs it. Outside a call, or with progress off,
:func:`current_reporter` is :data:`~fl_stream.monitor.progress.NO_PROGRESS`, which sends
nothing.

The run config's ``relay-url``, ``relay-token`` (empty: ``$FL_STREAM_RELAY_TOKEN``),
``progress-interval`` (seconds between reports, 0: off) and ``metrics-log-dir`` say where
and how often (:class:`ProgressSettings`; all optional). Each client process keeps one
sender per run and client, reused across calls and closed at exit; its log is
``<metrics-log-dir>/<run_id>/progress-<client_id>.jsonl``. A bad setting or a failure of the
mod is logged and the call runs without progress.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from logging import WARNING
from typing import Any

from flwr.app import Context, Message, MessageType
from flwr.clientapp.typing import ClientAppCallable
from flwr.common.logger import log

from fl_stream.monitor.progress import (
    DEFAULT_INTERVAL,
    NO_PROGRESS,
    ProgressReporter,
    progress_sender,
)
from fl_stream.monitor.protocol import DEFAULT_RELAY_URL, RELAY_TOKEN_ENV
from fl_stream.monitor.sender import MetricsWebSocketSender
from fl_stream.settings import WS_URL, finite_at_least, from_mapping, setting, validate

__all__ = ["ProgressSettings", "close_senders", "current_reporter", "progress_mod"]

_PHASES = {MessageType.TRAIN: "train", MessageType.EVALUATE: "evaluate"}
_current: ContextVar[ProgressReporter] = ContextVar("fl_stream_progress", default=NO_PROGRESS)

# (relay url, token, run id, client id, log folder) -> the sender of that client's progress.
_SenderKey = tuple[str, str, str, str, str]
_senders: dict[_SenderKey, MetricsWebSocketSender] = {}
_senders_lock = threading.Lock()


@dataclass(frozen=True)
class ProgressSettings:
    """The run-config keys :func:`progress_mod` reads; the app's other keys are ignored."""

    relay_url: str = setting(DEFAULT_RELAY_URL, check=WS_URL, help='the relay; "": log only')
    relay_token: str = setting(
        "", repr=False, help=f"publisher token (empty: ${RELAY_TOKEN_ENV} when set)"
    )
    progress_interval: float = setting(
        DEFAULT_INTERVAL, check=finite_at_least(0), help="seconds between reports (0: off)"
    )
    metrics_log_dir: str = setting("", help='folder of the runs\' files ("": the default)')

    def __post_init__(self) -> None:
        validate(self)

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, Any]) -> ProgressSettings:
        """The settings in ``context.run_config``; absent keys keep their defaults.

        Raises:
            fl_stream.settings.SettingError: a value of the wrong type or out of range.
        """
        keys = {field.name.replace("_", "-") for field in dataclasses.fields(cls)}
        ours = {key: value for key, value in run_config.items() if key in keys}
        return from_mapping(cls, ours, source="run-config")


def current_reporter() -> ProgressReporter:
    """The reporter of the ClientApp call running now; outside a call, one that sends nothing."""
    return _current.get()


def progress_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Make a progress reporter for this train or evaluate call, current while it runs."""
    phase = _PHASES.get(msg.metadata.message_type.split(".")[0])  # e.g. "train.custom"
    if phase is None:
        return call_next(msg, context)
    token = _current.set(_reporter(msg, context, phase))
    try:
        return call_next(msg, context)
    finally:
        _current.reset(token)


def close_senders(timeout: float = 5.0) -> None:
    """Close this process's progress senders, each within ``timeout`` seconds.

    The interpreter's exit closes them anyway; this is for a process that runs several
    Flower runs in-process (tests, notebooks) and wants their connections gone now.
    """
    with _senders_lock:
        senders = list(_senders.values())
        _senders.clear()
    for sender in senders:
        sender.close(timeout)


def _reporter(msg: Message, context: Context, phase: str) -> ProgressReporter:
    """The call's reporter; :data:`NO_PROGRESS` when progress is off or cannot be set up."""
    try:
        settings = ProgressSettings.from_run_config(context.run_config)
        if settings.progress_interval == 0:
            return NO_PROGRESS
        partition_id = context.node_config.get("partition-id")
        client_id = str(partition_id if partition_id is not None else context.node_id)
        return ProgressReporter(
            _sender(settings, str(context.run_id), client_id),
            client_id,
            round_num=_server_round(msg),
            phase=phase,
            node_id=str(context.node_id),
            interval=settings.progress_interval,
        )
    except Exception as exc:  # the call must run, with or without progress
        log(WARNING, "progress_mod: this call reports no progress: %s", exc)
        return NO_PROGRESS


def _sender(settings: ProgressSettings, run_id: str, client_id: str) -> MetricsWebSocketSender:
    """The process's sender for this run and client, made on first use."""
    key = (
        settings.relay_url,
        settings.relay_token,
        run_id,
        client_id,
        settings.metrics_log_dir,
    )
    with _senders_lock:
        # A new run means the earlier runs of this process are over: their senders go.
        finished = [k for k in _senders if k[2] != run_id]
        done = [_senders.pop(k) for k in finished]
        if key not in _senders:
            _senders[key] = progress_sender(
                settings.relay_url,
                run_id=run_id,
                client_id=client_id,
                token=settings.relay_token,
                directory=settings.metrics_log_dir or None,
            )
        sender = _senders[key]
    for old_sender in done:  # outside the lock: close() may wait up to its timeout
        old_sender.close(timeout=1.0)
    return sender


def _server_round(msg: Message) -> int:
    """The round the strategy put in the message's config (``server-round``), else 0."""
    for record in msg.content.config_records.values():
        server_round = record.get("server-round")
        if isinstance(server_round, int) and not isinstance(server_round, bool):
            return server_round
    return 0
