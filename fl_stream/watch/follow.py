"""Follow one run through the relay until it ends: subscribe, replay, live, reconnect.

:class:`Follower` picks the run (the one named, else the newest in ``/api/runs``, else the
first that appears), subscribes with ``since: 0`` and applies every message to a
:class:`~fl_stream.watch.state.RunState`, which it hands to a :class:`Display` after each.
When the link drops it reconnects with backoff for a bounded time, showing that it does,
and subscribes again with ``since`` = the last seq applied and the relay's ``epoch`` (from
the first ``replay_end``): the replay brings exactly what it missed. It holds that replay
until its ``replay_end``: ``recovered: false`` (another database) means the seqs it holds
mean nothing there, so it drops the state and draws the run from the replay alone.
"""

from __future__ import annotations

import time
from typing import Protocol

from fl_stream.monitor.connection import backoff_delays
from fl_stream.monitor.protocol import CONTROL_TYPES, FAILED, Message

from .link import (
    LinkLost,
    RelayAddress,
    Subscriber,
    WatchError,
    open_subscriber,
    refused_subscription,
)
from .render import format_duration
from .state import RunState, exit_status

__all__ = ["ERROR_GRACE_S", "Display", "Follower"]

# How long a receive waits before the display is redrawn anyway (ages, time left).
TICK_S = 0.25
# An error without a training_end ends the run after this long (producers send both).
ERROR_GRACE_S = 2.0
# Reconnect delays: doubling from the first to the second, with jitter.
BACKOFF_S = (0.25, 5.0)
# What the display shows as the run while none is chosen yet.
_NO_RUN = "(newest)"


class Display(Protocol):
    """Where the watcher shows the run: a live terminal view or plain lines."""

    def message(self, state: RunState, message: Message) -> None:
        """``message`` has just been applied to ``state``."""

    def connecting(self, state: RunState, url: str) -> None:
        """The first connection to the relay at ``url`` is being opened."""

    def notice(self, state: RunState, text: str | None) -> None:
        """The link's state changed: ``text`` says how (None: live, nothing to say)."""

    def tick(self, state: RunState) -> None:
        """Time passed without a message."""


class Follower:
    """Follows one run to its end; :meth:`run` returns the exit status.

    Args:
        address: the relay.
        run_id: the run to follow; None: the newest, or the first to appear.
        display: where the run is shown.
        reconnect_for: how many seconds to keep reconnecting after the link drops.
    """

    def __init__(
        self,
        address: RelayAddress,
        run_id: str | None,
        display: Display,
        reconnect_for: float,
    ) -> None:
        self.address = address
        self.run_id = run_id
        self.display = display
        self.reconnect_for = reconnect_for
        self.state = RunState(run_id or _NO_RUN)
        self.epoch: str | None = None  # the relay database the state's seqs come from
        self._failed_at: float | None = None  # when the first error was applied

    def run(self) -> int:
        """Follow the run until it ends: 0 completed or early-stopped, 1 failed.

        Raises:
            WatchError: the relay cannot be reached at first, refused the watcher, or
                stayed unreachable for ``reconnect_for`` seconds after the link dropped.
        """
        self.display.connecting(self.state, self.address.url)
        try:
            subscriber = open_subscriber(self.address)
        except LinkLost as exc:
            raise WatchError(
                f"cannot reach the relay at {self.address.url} ({exc}); start it "
                "(fl-stream-relay) or pass --relay-url"
            ) from None
        while True:
            try:
                with subscriber:
                    return self._follow(subscriber)
            except LinkLost as exc:
                subscriber = self._reconnect(str(exc))

    # ----------------------------------------------------------------------- one link

    def _follow(self, subscriber: Subscriber) -> int:
        if self.run_id is None:
            self.run_id = self._choose_run(subscriber)
            self.state = RunState(self.run_id)
        resuming = self.state.last_seq > 0
        epoch = self.epoch if resuming else None
        subscriber.subscribe(self.run_id, self.state.last_seq, epoch)
        if resuming:
            text = f"reconnected; catching up after seq {self.state.last_seq}"
        else:
            text = f"following run {self.run_id} on {self.address.url}"
        self.display.notice(self.state, text)
        # A resumed replay is held until replay_end says whether it continues the state.
        held: list[Message] | None = [] if resuming else None
        while True:
            message = subscriber.receive(TICK_S)
            if message is None:
                self.display.tick(self.state)
            elif message.get("type") == "replay_end":
                self._caught_up(message, held or [])
                held = None
            elif message.get("type") == "rejected":
                raise refused_subscription(str(message["data"].get("reason")))
            elif message.get("type") in CONTROL_TYPES:
                continue  # run_summary notices of every run, pongs
            elif held is not None:
                held.append(message)
            else:
                self._apply(message)
            status = self._outcome()
            if status is not None:
                self.display.notice(self.state, None)
                return status

    def _choose_run(self, subscriber: Subscriber) -> str:
        """The newest run, else the first that appears (its ``run_summary``)."""
        newest = self.address.newest_run()
        if newest is not None:
            return newest
        self.display.notice(self.state, "waiting for a run to start")
        while True:
            message = subscriber.receive(TICK_S)
            if message is None:
                self.display.tick(self.state)
            elif message.get("type") == "run_summary":
                return str(message["data"]["run_id"])

    def _caught_up(self, end: Message, held: list[Message]) -> None:
        data = end.get("data") or {}
        if data.get("recovered") is False:  # another database: what we hold means nothing
            self.state = RunState(self.state.run_id)
            self._failed_at = None
            self.display.notice(self.state, "the relay's database changed; the run afresh")
        self.epoch = data.get("epoch", self.epoch)
        for message in held:
            self._apply(message)
        self.display.notice(self.state, None)

    def _apply(self, message: Message) -> None:
        if not self.state.apply(message):
            return
        if self.state.errors and self._failed_at is None:
            self._failed_at = time.monotonic()
        self.display.message(self.state, message)

    def _outcome(self) -> int | None:
        """The exit status once the run has ended; None while it runs."""
        if self.state.end is not None:
            return exit_status(self.state.status)
        if self._failed_at is not None and time.monotonic() - self._failed_at >= ERROR_GRACE_S:
            return exit_status(FAILED)
        return None

    # ----------------------------------------------------------------------- reconnecting

    def _reconnect(self, reason: str) -> Subscriber:
        """Open a new link within ``reconnect_for`` seconds, showing each attempt."""
        deadline = time.monotonic() + self.reconnect_for
        for attempt, delay in enumerate(backoff_delays(*BACKOFF_S), start=1):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self.display.notice(
                self.state,
                f"link lost ({reason}); reconnecting, attempt {attempt}, "
                f"giving up in {format_duration(left)}",
            )
            self._wait(min(delay, left))
            try:
                return open_subscriber(self.address)
            except LinkLost as exc:
                reason = str(exc)
        raise WatchError(
            f"lost the relay at {self.address.url} ({reason}) and could not reconnect within "
            f"{self.reconnect_for:g} s; run the watcher again once the relay is back"
        )

    def _wait(self, seconds: float) -> None:
        """Sleep ``seconds``, redrawing the display meanwhile."""
        until = time.monotonic() + seconds
        while (left := until - time.monotonic()) > 0:
            time.sleep(min(TICK_S, left))
            self.display.tick(self.state)
