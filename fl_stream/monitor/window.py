"""The sender's delivery rules and counters, with no I/O: what waits, what is in flight.

:class:`DeliveryWindow` is the core of delivery in the manner of a sans-I/O protocol: it opens
no socket, runs no thread or event loop and reads no clock (callers pass ``now``, monotonic
seconds). The layers around it tell it what happened and ask it what to send:
:mod:`fl_stream.monitor.delivery` (the callers' hand-off, the run log, the thread) and
:mod:`fl_stream.monitor.connection` (the WebSocket). It is not thread-safe: the sender calls
it under one lock.

A message's life (``msg_id`` is unique per sender)::

    accept()                     counted as accepted, pending
      add(msg_id, text)          queued                 (too large: rejected;
                                                         queue full: the oldest is dropped)
      next_to_send(now)          in flight              (at-most-once connection: unconfirmed)
      on_ack / on_rejected       acked / rejected
    drop_accepted()              dropped before add: the hand-off to the thread was full
    settle_logged(n)             no relay: the run log is the only destination
    expire(now)                  no reply in time: what is in flight becomes unconfirmed

Rules:

* At most ``max_queue`` messages are queued; adding one more drops the oldest queued one.
* At most ``max_in_flight`` sent messages wait for an ack; then sending pauses.
* After a reconnect every unacknowledged message is sent again first, oldest first; the relay
  drops duplicates by ``msg_id``.
* ``rejected`` naming a ``msg_id`` settles that message. ``rejected`` without one (the relay
  could not store a message) stops sending on that connection: everything unacknowledged is
  sent again on the next one.
* A relay of the original design never acks: when no reply comes within ``ack_timeout`` of
  the first send on a connection, the connection becomes at-most-once (what is in flight and
  what is sent later is settled as unconfirmed, never resent) until a late reply comes.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass

__all__ = ["Added", "DeliveryWindow", "SenderStats"]


@dataclass(frozen=True)
class SenderStats:
    """Counters since the sender started; ``pending`` is what is not yet settled."""

    accepted: int  # calls that produced a message (written to the log, queued for the relay)
    invalid: int  # calls refused because of an invalid value (logged, nothing sent)
    sent: int  # messages written to a relay connection for the first time
    resent: int  # messages written again after a reconnect
    acked: int  # messages the relay acknowledged
    rejected: int  # messages the relay refused (or too large to send)
    dropped: int  # messages dropped from a full queue (still in the log)
    unconfirmed: int  # messages sent to a relay that does not ack
    pending: int  # accepted messages not yet acked, rejected, dropped or unconfirmed
    connected: bool


class Added(enum.Enum):
    """What :meth:`DeliveryWindow.add` did with a message."""

    QUEUED = "queued"
    DROPPED_OLDEST = "dropped_oldest"  # queued; the oldest queued message was dropped for it
    TOO_LARGE = "too_large"  # refused (counted as rejected); the relay would close the link


class DeliveryWindow:
    """Queue, in-flight window, resends, at-most-once detection and every counter.

    Args:
        max_queue: queued messages kept; past it the oldest is dropped.
        max_in_flight: sent messages that may wait for an ack before sending pauses.
        max_message_bytes: larger messages (UTF-8 bytes) are refused.
        ack_timeout: seconds from the first send on a connection without any reply after
            which that connection is at-most-once.
    """

    def __init__(
        self, *, max_queue: int, max_in_flight: int, max_message_bytes: int, ack_timeout: float
    ) -> None:
        self.max_queue = max_queue
        self.max_in_flight = max_in_flight
        self.max_message_bytes = max_message_bytes
        self.ack_timeout = ack_timeout
        self._queue: deque[tuple[str, str]] = deque()  # (msg_id, JSON text), oldest first
        self._in_flight: dict[str, str] = {}  # sent, not yet acked; insertion order = send order
        # The current connection.
        self._connected = False
        self._first_send: float | None = None
        self._replied = False  # an ack or rejected reply came on it
        self._at_most_once = False
        self._replacing = False  # rejected without msg_id: send nothing more on it
        # Counters.
        self._accepted = self._invalid = self._sent = self._resent = 0
        self._acked = self._rejected = self._dropped = self._unconfirmed = 0
        self._settled = 0  # acked + rejected + dropped + unconfirmed + logged only
        self._unreported_drops = 0

    # ------------------------------------------------------------------ intake

    def count_invalid(self) -> None:
        """Count a call refused for an invalid value (no message exists)."""
        self._invalid += 1

    def accept(self) -> None:
        """Count a message the sender accepted; it is pending until added or dropped."""
        self._accepted += 1

    def drop_accepted(self) -> None:
        """Drop an accepted message before it is added (the hand-off to the thread was full)."""
        self._drop()

    def settle_logged(self, count: int) -> None:
        """Settle ``count`` accepted messages that have no relay: the run log is all they get."""
        self._settled += count

    def add(self, msg_id: str, text: str) -> Added:
        """Queue an accepted message's JSON text for sending."""
        size = len(text) if text.isascii() else len(text.encode())
        if size > self.max_message_bytes:
            self._rejected += 1
            self._settled += 1
            return Added.TOO_LARGE
        full = len(self._queue) >= self.max_queue
        if full:
            self._queue.popleft()
            self._drop()
        self._queue.append((msg_id, text))
        return Added.DROPPED_OLDEST if full else Added.QUEUED

    def _drop(self) -> None:
        self._dropped += 1
        self._settled += 1
        self._unreported_drops += 1

    # ------------------------------------------------------------------ the connection

    def on_connected(self, now: float) -> list[tuple[str, str]]:
        """Start a new connection; return what to send on it first (counted as resent).

        That is every sent message not yet acknowledged, oldest first, as ``(msg_id, text)``.
        """
        self._connected = True
        self._replied = self._at_most_once = self._replacing = False
        resend = list(self._in_flight.items())
        self._first_send = now if resend else None
        self._resent += len(resend)
        return resend

    def on_connection_lost(self) -> None:
        """The connection closed; what is in flight stays for the next one."""
        self._connected = False

    def next_to_send(self, now: float) -> tuple[str, str] | None:
        """Hand out the oldest queued message as ``(msg_id, text)`` (counted as sent).

        Returns None when nothing is queued, there is no connection, the connection is being
        replaced, or ``max_in_flight`` messages wait for an ack.
        """
        if not (self._queue and self._connected) or self._replacing:
            return None
        if not self._at_most_once and len(self._in_flight) >= self.max_in_flight:
            return None
        msg_id, text = self._queue.popleft()
        if self._first_send is None:
            self._first_send = now
        self._sent += 1
        if self._at_most_once:
            self._unconfirmed += 1
            self._settled += 1
        else:
            self._in_flight[msg_id] = text
        return msg_id, text

    def on_ack(self, msg_id: str | None) -> None:
        """The relay acknowledged ``msg_id``; the connection tracks acks from now on."""
        self._replied, self._at_most_once = True, False
        if msg_id is not None and self._in_flight.pop(msg_id, None) is not None:
            self._acked += 1
            self._settled += 1

    def on_rejected(self, msg_id: str | None) -> bool:
        """The relay refused ``msg_id``, or, when None, a message it could not store.

        Returns True when the connection must be replaced: the relay wants every
        unacknowledged message again, which the next connection sends first.
        """
        self._replied, self._at_most_once = True, False
        if msg_id is None:
            self._replacing = True
            return True
        if self._in_flight.pop(msg_id, None) is not None:
            self._rejected += 1
            self._settled += 1
        return False

    def ack_deadline(self) -> float | None:
        """When :meth:`expire` makes the connection at-most-once; None while it cannot."""
        if self._first_send is None or self._replied or self._at_most_once:
            return None
        if not (self._connected and self._in_flight):
            return None
        return self._first_send + self.ack_timeout

    def expire(self, now: float) -> bool:
        """Make the connection at-most-once if its ack deadline passed; say whether it did.

        What is in flight is then settled as unconfirmed and never resent.
        """
        deadline = self.ack_deadline()
        if deadline is None or now < deadline:
            return False
        self._at_most_once = True
        self._unconfirmed += len(self._in_flight)
        self._settled += len(self._in_flight)
        self._in_flight.clear()
        return True

    # ------------------------------------------------------------------ reading

    @property
    def accepted(self) -> int:
        return self._accepted

    @property
    def settled(self) -> int:
        """Accepted messages acked, rejected, dropped, unconfirmed, or only logged."""
        return self._settled

    @property
    def pending(self) -> int:
        """Accepted messages not yet settled (waiting to be added, queued or in flight)."""
        return self._accepted - self._settled

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def unreported_drops(self) -> int:
        """Drops since the last :meth:`take_unreported_drops` (1: a run of drops began)."""
        return self._unreported_drops

    def take_unreported_drops(self) -> int:
        """Return the drops since the last call, which becomes the new starting point."""
        dropped, self._unreported_drops = self._unreported_drops, 0
        return dropped

    def stats(self) -> SenderStats:
        return SenderStats(
            accepted=self._accepted,
            invalid=self._invalid,
            sent=self._sent,
            resent=self._resent,
            acked=self._acked,
            rejected=self._rejected,
            dropped=self._dropped,
            unconfirmed=self._unconfirmed,
            pending=self.pending,
            connected=self._connected,
        )
