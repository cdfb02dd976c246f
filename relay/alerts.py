"""Webhook alerts: a run failed, stopped early, completed, or stalled.

:class:`Alerts` sees every committed message (the hub calls :meth:`Alerts.observe` after the
commit, as it broadcasts) and POSTs one JSON document per alert to every ``--alert-webhook``.

Events (``event`` in the payload):
    ``failed``         an ``error``, or a ``training_end`` with status ``failed``
    ``early_stopped``  an ``early_stopping``, or a ``training_end`` with status ``early_stopped``
    ``completed``      a ``training_end`` with status ``completed``
    ``stalled``        nothing received from a running run for ``--stall-factor`` times its
                       median round or epoch interval, and at least ``--stall-floor`` seconds

Each of the first three alerts at most once per run, whatever sent it (``error`` then the
``training_end(failed)`` that follows it is one failure), also across resends and restarts:
the events the stored messages imply are loaded at start (:meth:`Alerts.load`). A run that
raised one of them is finished and never stalls. A stall alerts once; a run that sends
anything again and then goes quiet again alerts again.

Stalls are checked by a periodic task (every ``--stall-floor``/10 s, at least every second).
Delivery (``relay/webhooks.py``) never blocks the event loop. Nothing here is ever awaited
by the hub: :meth:`Alerts.observe` only updates memory and queues alerts.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import statistics
import time
import uuid
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from fl_stream.monitor.protocol import COMPLETED, EARLY_STOPPED, FAILED, Message, utc_timestamp
from relay.runs import RunIndex
from relay.store import MessageStore
from relay.webhooks import Alert, Webhooks

__all__ = ["STALLED", "Alerts", "event_of", "relay_url"]

logger = logging.getLogger("relay")

STALLED = "stalled"
# Intervals of a run's pace kept for its median (the most recent ones).
INTERVALS_KEPT = 15

_EVENT_TYPES = frozenset({"error", "training_end", "early_stopping"})
_PACE_TYPES = {"round_end": "round", "epoch_end": "epoch"}  # type -> what one interval is
_STEP_FIELDS = {
    "round_end": "round",
    "round_metrics": "round",
    "client_metrics": "round",
    "epoch_end": "epoch",
    "early_stopping": "epoch",
}
_HEADLINES = {
    FAILED: "failed",
    EARLY_STOPPED: "stopped early",
    COMPLETED: "completed",
    STALLED: "stalled",
}


def event_of(message: Message) -> tuple[str, str] | None:
    """The event a valid message raises and why (``(event, reason)``), or None."""
    kind, data = message["type"], message["data"]
    if kind == "error":
        error, error_type = data["error"], data["error_type"]
        return FAILED, error if error.startswith(error_type) else f"{error_type}: {error}"
    if kind == "early_stopping":
        return EARLY_STOPPED, data["reason"]
    if kind == "training_end" and data["status"] in (FAILED, EARLY_STOPPED, COMPLETED):
        status = data["status"]
        best = [
            f"best {key[len('best_') :]} {data[key]}"
            for key in ("best_round", "best_epoch")
            if data.get(key) is not None
        ]
        suffix = f" ({best[0]})" if best else ""
        return status, f"training_end reported status {status}{suffix}"
    return None


def relay_url(scheme: str, host: str, port: int) -> str:
    """The relay's own ``scheme://host:port``; a wildcard address becomes this machine's name."""
    if host in ("", "0.0.0.0", "::"):
        host = socket.gethostname()
    if ":" in host:  # an IPv6 address
        host = f"[{host}]"
    return f"{scheme}://{host}:{port}"


@dataclass(slots=True)
class _Watch:
    """A running run's pace: when it was last heard from, and how often it ends a step."""

    last_received: float
    times: dict[tuple[str, Any], datetime] = field(default_factory=dict)
    intervals: deque[float] = field(default_factory=lambda: deque(maxlen=INTERVALS_KEPT))
    unit: str = "epoch"
    median: float | None = None
    threshold: float | None = None  # seconds of silence that make a stall (None: pace unknown)
    stalled: bool = False


@dataclass(slots=True)
class _Run:
    fired: set[str] = field(default_factory=set)  # its events, a stall never among them
    last_round: int | None = None
    last_epoch: int | None = None


class Alerts:
    """Raises the alerts of every run and delivers them to the webhooks.

    Args:
        webhooks: the URLs every alert is POSTed to (none: the relay leaves alerts out).
        runs: the run summaries (a payload's mode and status).
        stall_factor, stall_floor: a running run is stalled after
            ``max(stall_floor, stall_factor * its median interval)`` seconds of silence.
        timeout: seconds one delivery attempt may wait for the webhook.
        public_url: what the dashboard link starts with (None: the relay's own URL, set by
            :meth:`start`).
    """

    def __init__(
        self,
        webhooks: Sequence[str],
        runs: RunIndex,
        *,
        stall_factor: float,
        stall_floor: float,
        timeout: float,
        public_url: str | None = None,
    ) -> None:
        self.runs = runs
        self.stall_factor = stall_factor
        self.stall_floor = stall_floor
        self.public_url = public_url.rstrip("/") if public_url else None
        self.webhooks = Webhooks(webhooks, timeout)
        self._runs: dict[str, _Run] = {}
        self._watched: dict[str, _Watch] = {}  # the runs still running
        self._checks: asyncio.Task[None] | None = None

    @property
    def enabled(self) -> bool:
        """Whether any webhook is configured."""
        return bool(self.webhooks)

    def load(self, store: MessageStore) -> None:
        """Note the events the stored messages imply, so none alerts again after a restart."""
        for run_id, body in store.bodies_of_types(*_EVENT_TYPES):
            found = event_of(json.loads(body))
            if found is not None:
                self._runs.setdefault(run_id, _Run()).fired.add(found[0])

    def start(self, relay_url: str) -> None:
        """Start the deliveries and the stall checks (on the running loop).

        ``relay_url`` (``http(s)://host:port``) is the link's start without ``--public-url``.
        """
        if not self.enabled:
            return
        self.public_url = self.public_url or relay_url
        self.webhooks.start()
        self._checks = asyncio.create_task(self._check_periodically())

    def stop_checks(self) -> None:
        """Stop looking for stalls (at shutdown: runs fall silent because the relay goes)."""
        if self._checks is not None:
            self._checks.cancel()

    async def close(self, grace: float) -> None:
        """Stop the stall checks; wait up to ``grace`` seconds for pending deliveries."""
        if self._checks is None:
            return
        self.stop_checks()
        await asyncio.gather(self._checks, return_exceptions=True)
        await self.webhooks.close(grace)

    def summary(self) -> dict[str, int]:
        """The counters served on ``/stats`` (``alerts_sent``, ...)."""
        return self.webhooks.summary()

    # ----------------------------------------------------------------------- events

    def observe(self, message: Message) -> None:
        """Note a committed message (it carries ``run_id``): the hub's hot path, so cheap.

        Never raises: a bug here must not cost the hub the rest of its batch.
        """
        try:
            self._observe(message)
        except Exception as exc:  # a last resort: one line in the log
            logger.error("alerts could not handle a message (%s: %s)", type(exc).__name__, exc)

    def _observe(self, message: Message) -> None:
        run_id, kind = message["run_id"], message["type"]
        run = self._runs.get(run_id)
        if run is None:
            run = self._runs[run_id] = _Run()
        step = _STEP_FIELDS.get(kind)
        if step is not None:
            value = message["data"].get(step)
            if step == "round":
                run.last_round = value
            else:
                run.last_epoch = value
        if not run.fired:  # running (every event but a stall finishes a run)
            now = time.monotonic()
            watch = self._watched.get(run_id)
            if watch is None:
                watch = self._watched[run_id] = _Watch(now)
            watch.last_received = now
            watch.stalled = False  # heard from again: it may stall again
            if kind in _PACE_TYPES:
                self._pace(watch, message)
        if kind in _EVENT_TYPES:
            found = event_of(message)
            if found is not None and found[0] not in run.fired:
                run.fired.add(found[0])
                self._watched.pop(run_id, None)  # finished: it never stalls
                self._raise(run_id, run, found[0], found[1], message["data"])

    def _pace(self, watch: _Watch, message: Message) -> None:
        """Learn a run's interval from the timestamps of its ``round_end``s or ``epoch_end``s.

        Intervals are taken per type and phase: an epoch's ``train`` and ``val`` ends are
        moments apart, one epoch's ``val`` and the next one's a whole epoch.
        """
        key = (message["type"], message["data"].get("phase"))
        try:
            at = datetime.fromisoformat(message["timestamp"])
        except ValueError:
            return
        if at.tzinfo is None:
            at = at.replace(tzinfo=UTC)
        previous = watch.times.get(key)
        if previous is not None and at <= previous:
            return  # a resend or a clock step back: no interval
        watch.times[key] = at
        if previous is None:
            return
        watch.intervals.append((at - previous).total_seconds())
        watch.unit = _PACE_TYPES[message["type"]]
        watch.median = statistics.median(watch.intervals)
        watch.threshold = max(self.stall_floor, self.stall_factor * watch.median)

    def check_stalls(self, now: float | None = None) -> None:
        """Alert each running run that has been silent past its threshold (once per stall)."""
        now = time.monotonic() if now is None else now
        stalled = [
            (run_id, watch)
            for run_id, watch in self._watched.items()
            if not watch.stalled
            and watch.threshold is not None
            and now - watch.last_received >= watch.threshold
        ]
        for run_id, watch in stalled:
            watch.stalled = True
            silent = round(now - watch.last_received, 3)
            assert watch.median is not None and watch.threshold is not None
            reason = (
                f"nothing received for {silent:.1f} s; its median {watch.unit} interval is "
                f"{watch.median:.3g} s (alert after {self.stall_factor:g} intervals, at least "
                f"{self.stall_floor:g} s)"
            )
            details = {
                "silent_s": silent,
                "threshold_s": round(watch.threshold, 3),
                "median_interval_s": round(watch.median, 3),
                "interval": watch.unit,
            }
            self._raise(run_id, self._runs[run_id], STALLED, reason, details)

    async def _check_periodically(self) -> None:
        every = min(1.0, max(0.05, self.stall_floor / 10))
        while True:
            await asyncio.sleep(every)
            try:
                self.check_stalls()
            except Exception as exc:  # a last resort: the checks go on
                logger.error("stall check failed (%s: %s)", type(exc).__name__, exc)

    def _raise(
        self, run_id: str, run: _Run, event: str, reason: str, details: dict[str, Any]
    ) -> None:
        summary = self.runs.summary(run_id) or {}
        link = f"{self.public_url}/?run={quote(run_id, safe='')}"
        short = reason if len(reason) <= 300 else reason[:299] + "…"
        alert_id = uuid.uuid4().hex  # the same in every attempt: receivers may dedupe
        payload = {
            "alert_id": alert_id,
            "event": event,
            "run_id": run_id,
            "reason": reason,
            "link": link,
            "timestamp": utc_timestamp(),
            "mode": summary.get("mode"),
            "status": summary.get("status"),
            "last_round": run.last_round,
            "last_epoch": run.last_epoch,
            "details": details,
            "text": f"fl-stream: run {run_id} {_HEADLINES[event]}: {short} {link}",
        }
        logger.info("alert: run %r %s: %s", run_id, event, short)
        self.webhooks.offer(Alert(alert_id, event, run_id, json.dumps(payload).encode()))
