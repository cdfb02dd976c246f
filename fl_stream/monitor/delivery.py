"""The sender's background thread: run log, relay connection, acknowledgements, resends.

:class:`Delivery` takes messages from any thread (:meth:`Delivery.put` never blocks) and runs
a private asyncio loop on its own thread that

* appends every message to the local JSONL run log (:mod:`fl_stream.monitor.runlog`), whether or not
  a relay is reachable;
* keeps one persistent WebSocket connection to the relay, reconnecting with capped
  exponential backoff and jitter;
* keeps each sent message until the relay acknowledges it (``ack {run_id, seq, msg_id}``) and
  resends the unacknowledged ones, in order, after a reconnect; the relay drops resent
  duplicates by ``(run_id, msg_id)``, so each message is stored once.

A relay of the original design never acks. When no ack arrives within ``ack_timeout`` seconds
of the first message on a connection, that connection is treated as at-most-once: messages
are sent once and not resent after a reconnect.

:class:`fl_stream.monitor.sender.MetricsWebSocketSender` builds and validates the messages; this
module only delivers them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Generator
from contextlib import aclosing
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from .protocol import Message, MessageError, encode_message, validate_message
from .runlog import JsonlLog

__all__ = ["Delivery", "SenderStats", "backoff_delays"]

# The sender's logger: users configure one logger for everything the sender reports.
logger = logging.getLogger("fl_stream.monitor.sender")

# websockets logs every reconnection attempt at INFO; the sender already warns once per outage.
# Set this logger to DEBUG to see each attempt.
_connection_logger = logging.getLogger("fl_stream.monitor.sender.websockets")
_connection_logger.setLevel(logging.WARNING)


# How often the loop thread looks for new messages while they keep coming, and for how long
# after the last one before it waits for a wake-up call instead.
_POLL_S = 0.005
_LINGER_S = 1.0

# A connection that lasted less than this is treated like a failed attempt (backoff applies).
_STABLE_CONNECTION_S = 2.0


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


def backoff_delays(initial: float, maximum: float) -> Generator[float, None, None]:
    """Yield capped exponential reconnection delays with jitter (50-100 % of each step)."""
    delay = initial
    while True:  # an outage may last for hours: no exponent that could overflow
        yield delay * random.uniform(0.5, 1.0)
        delay = min(maximum, delay * 2)


@dataclass
class _Link:
    """What the sender knows about one relay connection."""

    first_send: float | None = None  # monotonic time of the first message sent on it
    acks_seen: bool = False
    at_most_once: bool = False  # no ack within ack_timeout: a relay without acks


class Delivery:
    """Log every message and deliver it to the relay from a background thread.

    Args:
        websocket_uri: the relay; ``None`` writes the run log only.
        log_path: the JSONL run log.
        token: publisher token, sent as ``Authorization: Bearer <token>``.
        max_queue, max_in_flight, max_message_bytes, ack_timeout, backoff_initial,
        backoff_max: as documented on :class:`~fl_stream.monitor.sender.MetricsWebSocketSender`.
        thread_name: the background thread's name.
    """

    def __init__(
        self,
        websocket_uri: str | None,
        log_path: Path,
        *,
        token: str | None,
        max_queue: int,
        max_in_flight: int,
        max_message_bytes: int,
        ack_timeout: float,
        backoff_initial: float,
        backoff_max: float,
        thread_name: str,
    ) -> None:
        self.websocket_uri = websocket_uri
        self.log_path = log_path
        self._token = token
        self._max_queue = max_queue
        self._max_in_flight = max_in_flight
        self._max_message_bytes = max_message_bytes
        self._ack_timeout = ack_timeout
        self._backoff = (backoff_initial, backoff_max)
        self._reported: set[str] = set()

        # Shared with the calling threads, guarded by _lock.
        self._lock = threading.Lock()
        self._inbox: deque[Message] = deque()
        self._pump_idle = False  # the loop waits for a wake-up call
        self._stopped = False  # stop() took the last messages: later ones would be lost
        self._accepted = 0
        self._dropped_by_callers = 0  # dropped (and logged) by a caller: the loop fell behind

        # Owned by the loop thread (callers only read them).
        self._outbox: deque[tuple[str, str]] = deque()  # (msg_id, JSON text) not yet sent
        self._in_flight: OrderedDict[str, str] = OrderedDict()  # sent, not yet acked
        self._counts = dict.fromkeys(
            ("sent", "resent", "acked", "rejected", "dropped", "unconfirmed", "logged"), 0
        )
        self._connected = False
        self._outage_since: float | None = None
        self._dropped_reported = 0
        self._dropping = False  # a run of drops is under way and not yet reported
        self._settled = threading.Condition()

        self._log: JsonlLog | None = None
        try:
            self._log = JsonlLog(self.log_path)
        except OSError as exc:
            logger.error(
                "fl-stream: cannot open run log %s (%s); messages go to the relay only",
                self.log_path,
                exc,
            )

        self._loop = asyncio.new_event_loop()
        self._wake_pump = asyncio.Event()
        self._outbox_ready = asyncio.Event()
        self._main = self._loop.create_task(self._run())
        self._thread = threading.Thread(target=self._run_loop, name=thread_name, daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ calling threads

    def put(self, message: Message) -> bool:
        """Queue ``message`` for the run log and the relay; never waits for the loop thread.

        When the loop thread falls ``max_queue`` messages behind, the oldest waiting message
        is written to the log here and dropped from the relay's queue (counted, reported).
        Returns ``False``, keeping nothing, once :meth:`stop` has taken the last messages.
        """
        overflow = None
        with self._lock:
            if self._stopped:
                return False
            if len(self._inbox) >= self._max_queue:  # the loop thread is not keeping up
                overflow = self._inbox.popleft()
                self._dropped_by_callers += 1
            self._inbox.append(message)
            self._accepted += 1
            wake, self._pump_idle = self._pump_idle, False
        if overflow is not None:  # the loop thread is starved; keep the log complete anyway
            self._write_log([encode_message(overflow)])
            self._warn_dropping()
        if wake:
            try:
                self._loop.call_soon_threadsafe(self._wake_pump.set)
            except RuntimeError:  # loop closed by a concurrent stop(); stop() logs the rest
                pass
        return True

    def flush(self, timeout: float) -> bool:
        """Wait until every message put so far is settled (acked, rejected, dropped).

        Returns ``False`` when ``timeout`` seconds pass first, e.g. while the relay is down.
        """
        with self._lock:
            target = self._accepted
        deadline = time.monotonic() + timeout
        with self._settled:
            while self._settled_count() < target:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._thread.is_alive():
                    return False
                self._settled.wait(remaining)
        return True

    def stop(self) -> None:
        """Stop the loop thread, log what it had not taken yet, and close the run log."""
        try:
            self._loop.call_soon_threadsafe(self._main.cancel)
        except RuntimeError:  # the loop already ended
            pass
        self._thread.join(timeout=2.0)
        if not self._thread.is_alive():  # log what arrived while stopping; refuse the rest
            with self._lock:
                self._stopped = True
            self._write_log([encode_message(message) for message in self._take_inbox()])
        with self._lock:
            pending = self._accepted - self._settled_count()
        if pending:
            logger.warning(
                "fl-stream: closed with %d message(s) not delivered to %s; all are in %s",
                pending,
                self.websocket_uri,
                self.log_path,
            )
        if self._log is not None:
            self._log.close()

    def stats(self, invalid: int) -> SenderStats:
        """Return the counters; ``invalid`` is the caller's count of refused calls."""
        counts = self._counts
        with self._lock:
            accepted, dropped = self._accepted, self._dropped_by_callers
        return SenderStats(
            accepted=accepted,
            invalid=invalid,
            sent=counts["sent"],
            resent=counts["resent"],
            acked=counts["acked"],
            rejected=counts["rejected"],
            dropped=counts["dropped"] + dropped,
            unconfirmed=counts["unconfirmed"],
            pending=accepted - self._settled_count(),
            connected=self._connected,
        )

    def report_once(self, key: str, level: int, text: str, *args: Any) -> None:
        """Log ``text`` the first time ``key`` comes up, at DEBUG afterwards."""
        if key in self._reported:
            level = logging.DEBUG
        self._reported.add(key)
        logger.log(level, text, *args)

    # ------------------------------------------------------------------ both threads

    def _take_inbox(self, sleep_when_empty: bool = True) -> list[Message]:
        with self._lock:
            if not self._inbox:
                self._pump_idle = sleep_when_empty
                return []
            batch, self._inbox = list(self._inbox), deque()
            return batch

    def _settled_count(self) -> int:
        counts = self._counts
        return (
            counts["acked"]
            + counts["rejected"]
            + counts["dropped"]
            + counts["unconfirmed"]
            + counts["logged"]
            + self._dropped_by_callers
        )

    # ------------------------------------------------------------------ loop thread

    def _run_loop(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._main)
        except asyncio.CancelledError:
            pass
        except Exception:  # a bug here must not take training down; the log keeps going
            logger.exception(
                "fl-stream: sender thread failed; messages are only in %s", self.log_path
            )
        finally:
            self._loop.run_until_complete(self._loop.shutdown_asyncgens())
            self._loop.close()
            with self._settled:
                self._settled.notify_all()

    async def _run(self) -> None:
        tasks = [asyncio.create_task(self._pump())]
        if self.websocket_uri is not None:
            tasks.append(asyncio.create_task(self._stay_connected(self.websocket_uri)))
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _pump(self) -> None:
        """Move accepted messages from the callers to the run log and the outbox.

        While messages keep coming it polls every ``_POLL_S`` seconds, so that a call makes no
        system call (waking this thread costs the caller more than the rest of the call);
        after ``_LINGER_S`` seconds without messages it sleeps until a call wakes it.
        """
        last_batch = time.monotonic()
        while True:
            self._wake_pump.clear()
            lingering = time.monotonic() - last_batch < _LINGER_S
            batch = self._take_inbox(sleep_when_empty=not lingering)
            if batch:
                self._accept(batch)
                last_batch = time.monotonic()
            elif lingering:
                await asyncio.sleep(_POLL_S)
            else:
                await self._wake_pump.wait()

    def _accept(self, batch: list[Message]) -> None:
        texts = [encode_message(message) for message in batch]
        self._write_log(texts)
        if self.websocket_uri is None:
            self._counts["logged"] += len(texts)
        else:
            for message, text in zip(batch, texts, strict=True):
                self._add_to_outbox(message, text)
            self._outbox_ready.set()
        self._notify_settled()

    def _add_to_outbox(self, message: Message, text: str) -> None:
        if len(text) > self._max_message_bytes:  # ASCII-only JSON: characters are bytes
            self._counts["rejected"] += 1
            self.report_once(
                f"too-large:{message['type']}",
                logging.ERROR,
                "fl-stream: %s message of %d bytes exceeds max_message_bytes=%d; kept in %s "
                "but not sent",
                message["type"],
                len(text),
                self._max_message_bytes,
                self.log_path,
            )
            return
        if len(self._outbox) >= self._max_queue:
            self._outbox.popleft()
            self._counts["dropped"] += 1
            self._warn_dropping()
        self._outbox.append((message["msg_id"], text))

    def _warn_dropping(self) -> None:
        """Warn when a run of drops starts; its count is logged when it ends."""
        if not self._dropping:
            self._dropping = True
            logger.warning(
                "fl-stream: more than %d messages wait for the relay; dropping the oldest "
                "(they stay in %s); the count is logged when the relay takes messages again",
                self._max_queue,
                self.log_path,
            )

    def _dropped_since_reported(self) -> int:
        """Drops since the last report, which this call makes the new starting point."""
        total = self._counts["dropped"] + self._dropped_by_callers
        dropped, self._dropped_reported, self._dropping = (
            total - self._dropped_reported,
            total,
            False,
        )
        return dropped

    def _write_log(self, texts: list[str]) -> None:
        if self._log is None:
            return
        try:
            self._log.write(texts)
        except (OSError, ValueError) as exc:
            self.report_once(
                "log-write",
                logging.ERROR,
                "fl-stream: cannot append to run log %s: %s",
                self.log_path,
                exc,
            )

    def _notify_settled(self) -> None:
        with self._settled:
            self._settled.notify_all()

    # ------------------------------------------------------------------ the connection

    async def _stay_connected(self, uri: str) -> None:
        headers = {"Authorization": f"Bearer {self._token}"} if self._token else None
        connector = connect(
            uri,
            additional_headers=headers,
            compression=None,  # small JSON gains little and costs the relay CPU
            proxy=None,
            open_timeout=10,
            close_timeout=1,
            process_exception=self._on_connect_error,
            reconnect_delays=partial(backoff_delays, *self._backoff),
            logger=_connection_logger,
        )
        # websockets backs off between failed attempts only; a relay that accepts and then
        # drops each connection at once would otherwise be redialled in a tight loop.
        quick_drop_delays = backoff_delays(*self._backoff)
        async with aclosing(connector.__aiter__()) as connections:
            async for connection in connections:
                opened = time.monotonic()
                await self._stream(connection)
                if time.monotonic() - opened < _STABLE_CONNECTION_S:
                    await asyncio.sleep(next(quick_drop_delays))
                else:
                    quick_drop_delays = backoff_delays(*self._backoff)

    def _on_connect_error(self, exc: Exception) -> None:
        """Warn once per outage; returning None tells websockets to back off and retry."""
        if isinstance(exc, InvalidStatus) and exc.response.status_code in (401, 403):
            reason = (
                f"HTTP {exc.response.status_code}: the relay refused the publisher token; "
                "check the token given to the sender"
            )
        else:
            reason = f"{type(exc).__name__}: {exc}"
        self._outage_started(reason)

    def _outage_started(self, reason: str) -> None:
        self._connected = False
        if self._outage_since is not None:
            return
        self._outage_since = time.monotonic()
        logger.warning(
            "fl-stream: relay %s unreachable (%s); up to %d messages wait and are resent "
            "when it is back; every message is in %s",
            self.websocket_uri,
            reason,
            self._max_queue,
            self.log_path,
        )

    async def _stream(self, connection: ClientConnection) -> None:
        """Send and collect acks on one connection until it closes."""
        self._connected = True
        if self._outage_since is not None:
            dropped = self._dropped_since_reported()
            logger.info(
                "fl-stream: relay %s reachable again after %.1f s; delivering %d queued "
                "message(s) late; %d dropped while the queue was full (they are in %s)",
                self.websocket_uri,
                time.monotonic() - self._outage_since,
                len(self._in_flight) + len(self._outbox),
                dropped,
                self.log_path,
            )
            self._outage_since = None
        link = _Link()
        reader = asyncio.create_task(self._read_replies(connection, link))
        writer = asyncio.create_task(self._write_messages(connection, link))
        try:
            done, _ = await asyncio.wait({reader, writer}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            await connection.close()  # code 1000: the sender is closing, nothing failed
            raise
        finally:
            for task in (reader, writer):
                task.cancel()
            await asyncio.gather(reader, writer, return_exceptions=True)
        for task in done:
            exc = task.exception()
            if exc is not None and not isinstance(exc, ConnectionClosed):
                logger.error("fl-stream: unexpected error on the relay connection", exc_info=exc)
        self._outage_started(
            f"connection closed: {connection.close_reason or 'no reason'} "
            f"(code {connection.close_code})"
        )

    async def _write_messages(self, connection: ClientConnection, link: _Link) -> None:
        for msg_id, text in list(self._in_flight.items()):  # unacknowledged, oldest first
            if msg_id in self._in_flight:
                link.first_send = link.first_send or time.monotonic()
                await connection.send(text)
                self._counts["resent"] += 1
        while True:
            self._outbox_ready.clear()
            window_open = link.at_most_once or len(self._in_flight) < self._max_in_flight
            if self._outbox and window_open:
                msg_id, text = self._outbox.popleft()
                self._in_flight[msg_id] = text  # kept until acked, or until sent if at-most-once
                link.first_send = link.first_send or time.monotonic()
                await connection.send(text)
                self._counts["sent"] += 1
                if link.at_most_once:
                    self._settle(msg_id, "unconfirmed")
                continue
            if not self._outbox:
                self._report_caught_up()
            await self._wait_for_work(link)

    async def _wait_for_work(self, link: _Link) -> None:
        timeout = None
        if not link.acks_seen and not link.at_most_once and self._in_flight:
            timeout = max(0.0, link.first_send + self._ack_timeout - time.monotonic())
        try:
            await asyncio.wait_for(self._outbox_ready.wait(), timeout)
        except TimeoutError:
            self._assume_no_acks(link)

    def _assume_no_acks(self, link: _Link) -> None:
        link.at_most_once = True
        self.report_once(
            "no-acks",
            logging.WARNING,
            "fl-stream: relay %s sent no ack within %.1f s; treating it as a relay without "
            "acks: messages are sent once and not resent after a reconnect",
            self.websocket_uri,
            self._ack_timeout,
        )
        for msg_id in list(self._in_flight):
            self._settle(msg_id, "unconfirmed")

    def _report_caught_up(self) -> None:
        if self._dropping and self._connected and (dropped := self._dropped_since_reported()):
            logger.warning(
                "fl-stream: relay %s caught up; %d message(s) were dropped while the "
                "queue was full (they are in %s)",
                self.websocket_uri,
                dropped,
                self.log_path,
            )

    async def _read_replies(self, connection: ClientConnection, link: _Link) -> None:
        async for text in connection:
            try:
                reply = json.loads(text)
                # Anything else is a pong or a live message of another publisher: the relay
                # sends every live message to a connection that never subscribed.
                if not isinstance(reply, dict) or reply.get("type") not in ("ack", "rejected"):
                    continue
                validate_message(reply)
            except (ValueError, MessageError) as exc:
                self.report_once(
                    "bad-reply",
                    logging.WARNING,
                    "fl-stream: ignoring an invalid reply from the relay: %s",
                    exc,
                )
                continue
            kind, data, msg_id = reply["type"], reply["data"], reply["data"].get("msg_id")
            link.acks_seen = True
            link.at_most_once = False  # a slow first ack: track acks again from now on
            if kind == "rejected" and msg_id is None:
                # Not attributable to one message (e.g. the relay's store failed): resend
                # everything it has not acked, on a new connection after a backoff.
                self.report_once(
                    f"rejected:{data['reason']}",
                    logging.WARNING,
                    "fl-stream: relay refused a message without naming it (%s); reconnecting "
                    "to resend what it has not acknowledged",
                    data["reason"],
                )
                await connection.close(reason="resending unacknowledged messages")
                return
            if kind == "rejected":
                self.report_once(
                    f"rejected:{data['reason']}",
                    logging.ERROR,
                    "fl-stream: relay rejected message %s: %s (kept in %s, not resent)",
                    msg_id,
                    data["reason"],
                    self.log_path,
                )
            if msg_id in self._in_flight:
                self._settle(msg_id, "acked" if kind == "ack" else "rejected")
                self._outbox_ready.set()  # the in-flight window may have room again

    def _settle(self, msg_id: str, outcome: str) -> None:
        del self._in_flight[msg_id]
        self._counts[outcome] += 1
        self._notify_settled()
