"""Live progress from inside a training loop: ``client_progress`` messages, rate-limited.

A :class:`ProgressReporter` turns a loop's per-batch calls into at most one message per
``interval`` seconds (2 a second by default), and always sends the first and the last batch
of each epoch, so a dashboard sees every epoch begin and end. Each message carries the epoch
and batch counts, the examples per second of the epoch so far and the metrics the loop passes
(a running ``loss``, ...). It works with any loop and any framework: it imports neither torch
nor Flower, and values are converted (tensors included) only for the messages it sends.

Reporting never gets in the way of training: calls take microseconds, never block and never
raise. Messages go through a :class:`~fl_stream.monitor.sender.MetricsWebSocketSender`;
:func:`progress_sender` makes one with a small queue, so a relay that cannot be reached costs
a bounded amount of memory: past ``max_queue`` the oldest messages are dropped, counted in its
``stats().dropped`` and announced by one warning. Example::

    from fl_stream.monitor.progress import ProgressReporter, progress_sender

    sender = progress_sender("ws://127.0.0.1:8765", run_id="exp-42", client_id="0")
    reporter = ProgressReporter(sender, "0", round_num=1)
    for epoch in range(1, num_epochs + 1):
        reporter.epoch_started(epoch, num_epochs)
        loss_sum, seen = 0.0, 0
        for batch, (x, y) in enumerate(loader, start=1):
            loss = train_step(x, y)
            loss_sum, seen = loss_sum + loss * len(y), seen + len(y)
            reporter.batch_done(batch, len(loader), len(y), loss=loss_sum / seen)
    sender.close()

In a Flower ClientApp, :func:`fl_stream.flower.progress.progress_mod` makes the reporter of
each call and :func:`fl_stream.flower.progress.current_reporter` hands it to the loop.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

from .runlog import default_log_path, run_dir
from .sender import MetricsWebSocketSender

__all__ = [
    "DEFAULT_INTERVAL",
    "NO_PROGRESS",
    "PROGRESS_MAX_QUEUE",
    "ProgressReporter",
    "Publisher",
    "progress_log_path",
    "progress_sender",
]

logger = logging.getLogger(__name__)

DEFAULT_INTERVAL = 0.5
"""Seconds between two progress messages that are not an epoch's first or last batch."""
PROGRESS_MAX_QUEUE = 64
"""Progress messages a progress sender keeps for an unreachable relay (about 30 s of them)."""
_MESSAGE_TYPE = "client_progress"


class Publisher(Protocol):
    """What a reporter sends through: a :class:`MetricsWebSocketSender`, or a stand-in."""

    def send_metrics(self, metrics: Mapping[str, Any], type: str = ...) -> bool: ...


class ProgressReporter:
    """Report a loop's progress through one pass of ``phase``, batch by batch.

    Args:
        sender: where the messages go; None makes a reporter that sends nothing (as
            :data:`NO_PROGRESS`), so a loop can report unconditionally.
        client_id: who trains, as ``client_metrics`` names clients.
        round_num: the server round (0 outside federated training).
        phase: ``"train"`` or ``"evaluate"``.
        node_id: the Flower node id, as a string.
        interval: least seconds between two messages, except that an epoch's first and
            last batch are always sent.
        clock: seconds from a monotonic clock (tests pass a fake one).

    Until :meth:`epoch_started` is called the pass is epoch 1 of 1, started when the
    reporter was made.

    Raises:
        ValueError: ``interval`` is not a finite number > 0.
    """

    def __init__(
        self,
        sender: Publisher | None,
        client_id: str = "",
        *,
        round_num: int = 0,
        phase: str = "train",
        node_id: str | None = None,
        interval: float = DEFAULT_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not (math.isfinite(interval) and interval > 0):
            raise ValueError(f"interval must be a finite number of seconds > 0, got {interval}")
        self.sender = sender
        self.client_id = client_id
        self.round_num = round_num
        self.phase = phase
        self.node_id = node_id
        self.interval = interval
        self._clock = clock
        self._failed = False
        self._last_sent = -math.inf
        self._start_epoch(1, 1)

    @property
    def active(self) -> bool:
        """Whether this reporter sends anything."""
        return self.sender is not None

    def epoch_started(self, epoch: int, num_epochs: int) -> None:
        """Start epoch ``epoch`` (from 1) of ``num_epochs``: its clock and batch count."""
        if self.sender is not None:
            self._guarded(self._start_epoch, epoch, num_epochs)

    def batch_done(
        self, batch: int, num_batches: int, examples: int, *, loss: Any = None, **metrics: Any
    ) -> None:
        """Report that ``batch`` of the epoch's ``num_batches`` batches is done.

        Args:
            batch: batches done in this epoch, from 1 (the last one is ``num_batches``).
            num_batches: the epoch's batches.
            examples: the examples this batch held (for examples per second).
            loss: the running loss, sent as metric ``loss`` (None: not sent).
            metrics: other metrics to send, name -> number (a 0-d tensor is fine).

        Sends a message for the epoch's first call, its last batch, and otherwise when
        ``interval`` seconds passed since the last message.
        """
        if self.sender is not None:
            self._guarded(
                self._batch_done, self.sender, batch, num_batches, examples, loss, metrics
            )

    # ------------------------------------------------------------------ internals

    def _start_epoch(self, epoch: int, num_epochs: int) -> None:
        self._epoch, self._num_epochs = epoch, num_epochs
        self._epoch_began = self._clock()
        self._epoch_examples = 0
        self._sent_in_epoch = False

    def _batch_done(
        self,
        sender: Publisher,
        batch: int,
        num_batches: int,
        examples: int,
        loss: Any,
        metrics: dict[str, Any],
    ) -> None:
        now = self._clock()
        self._epoch_examples += examples
        first, last = not self._sent_in_epoch, batch >= num_batches
        if not (first or last or now - self._last_sent >= self.interval):
            return
        self._last_sent, self._sent_in_epoch = now, True
        if loss is not None:
            metrics = {"loss": loss, **metrics}
        sender.send_metrics(self._data(batch, num_batches, now, metrics), _MESSAGE_TYPE)

    def _data(
        self, batch: int, num_batches: int, now: float, metrics: dict[str, Any]
    ) -> dict[str, Any]:
        data: dict[str, Any] = {
            "round": self.round_num,
            "phase": self.phase,
            "client_id": self.client_id,
            "epoch": self._epoch,
            "num_epochs": self._num_epochs,
            "batch": batch,
            "num_batches": num_batches,
        }
        if self.node_id is not None:
            data["node_id"] = self.node_id
        elapsed = now - self._epoch_began
        if elapsed > 0:
            data["examples_per_second"] = self._epoch_examples / elapsed
        if metrics:
            data["metrics"] = metrics
        return data

    def _guarded(self, step: Callable[..., None], *args: Any) -> None:
        """Run ``step``; a failure is logged once and never reaches the training loop."""
        try:
            step(*args)
        except Exception as exc:
            if not self._failed:
                self._failed = True
                logger.warning("fl-stream: progress report failed, training goes on: %r", exc)


NO_PROGRESS = ProgressReporter(None)
"""A reporter that sends nothing."""


def progress_log_path(
    run_id: str, client_id: str, directory: str | os.PathLike[str] | None = None
) -> Path:
    """``<directory>/<run_id>/progress-<client_id>.jsonl``: a client's log, in its run's folder.

    ``directory`` defaults as for :func:`fl_stream.monitor.runlog.run_dir`. The file is not
    the run's own log (``<directory>/<run_id>.jsonl``), which holds the server's messages.
    """
    return default_log_path(f"progress-{client_id}", "", directory=run_dir(run_id, directory))


def progress_sender(
    relay_url: str | None,
    *,
    run_id: str,
    client_id: str,
    token: str | None = None,
    directory: str | os.PathLike[str] | None = None,
    max_queue: int = PROGRESS_MAX_QUEUE,
) -> MetricsWebSocketSender:
    """A sender for one client's progress messages of run ``run_id``.

    ``relay_url`` None or ``""`` writes the log only; ``token`` None or ``""`` is
    ``$FL_STREAM_RELAY_TOKEN`` when set. The log is :func:`progress_log_path`.
    """
    return MetricsWebSocketSender(
        relay_url or None,
        run_id=run_id,
        token=token,
        log_path=progress_log_path(run_id, client_id, directory),
        max_queue=max_queue,
    )
