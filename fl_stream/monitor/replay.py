"""Upload a run log to a relay, so that a run recorded while the relay was down appears there
as if it had streamed live (``fl-stream replay LOG``).

A run log (:mod:`fl_stream.monitor.runlog`) holds, one per line, the exact messages the sender
sent, each with its ``run_id`` and ``msg_id``. :func:`replay` sends them in their order over
the sender's own relay connection (:class:`~fl_stream.monitor.connection.RelayConnection`
carrying a :class:`~fl_stream.monitor.window.DeliveryWindow`) and waits for the relay's acks;
what a dropped connection leaves unacknowledged is resent. The relay stores each
``(run_id, msg_id)`` once, so replaying a log it already has stores nothing again, and
replaying a log it has in part stores only the missing messages (numbered after the ones it
has). Dashboards subscribed to the run receive the replayed messages live.

Lines that cannot be sent are skipped, each reported with its line number, and the rest are
sent: a line that is not JSON or not a valid message, a control message (``subscribe``,
``ack``, ...), a message without ``msg_id`` (the relay could not tell a second replay from new
messages) and one larger than the relay's frame limit. A line that repeats an earlier line's
``(run_id, msg_id)`` is sent once.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .connection import RelayConnection, ReportOnce, tls_context
from .protocol import (
    CONTROL_TYPES,
    DEFAULT_RUN,
    MAX_MESSAGE_BYTES,
    MessageError,
    decode_message,
    relay_token,
)
from .window import Added, DeliveryWindow

__all__ = ["ReplayError", "ReplayResult", "RunLog", "Skipped", "read_run_log", "replay"]

# Sent messages that may wait for an ack before sending pauses, as in the sender.
MAX_IN_FLIGHT = 1_000
# How often the upload looks at the window (progress, completion, failure).
_POLL_S = 0.05
# Seconds from a connection's first send without any ack before the relay is taken for one
# that never acks (the original design's relay); its messages are then sent unconfirmed.
_ACK_TIMEOUT_S = 5.0


class ReplayError(Exception):
    """The relay cannot be reached, or stopped taking messages; the text says what to do."""


@dataclass(frozen=True)
class Skipped:
    """A line of the log that is not sent, and why."""

    line: int  # 1-based
    reason: str


@dataclass(frozen=True)
class LogMessage:
    """A line of the log that is sent: its number, run, ``msg_id`` and exact text."""

    line: int
    run_id: str  # "default" for a message without one, as the relay files it
    msg_id: str
    text: str


@dataclass
class RunLog:
    """A run log read for replay (:func:`read_run_log`).

    Attributes:
        path: the file.
        messages: the lines to send, in file order.
        skipped: the lines that cannot be sent.
        repeated: lines repeating an earlier line's ``(run_id, msg_id)`` (sent once).
        run_ids: the runs of ``messages``, in order of first appearance (``"default"`` for
            messages without ``run_id``).
    """

    path: Path
    messages: list[LogMessage] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    repeated: int = 0
    run_ids: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ReplayResult:
    """What the relay did with a replayed log's messages.

    Attributes:
        sent: messages handed to the relay (the log's sendable lines).
        acked: messages the relay acknowledged: stored now, or already stored before.
        rejected: messages the relay refused (its reasons are logged).
        unconfirmed: messages sent to a relay that sends no acks (not known to be stored).
        skipped: the log's lines that were not sent: :attr:`RunLog.skipped`, then those too
            large to send.
    """

    sent: int
    acked: int
    rejected: int
    unconfirmed: int
    skipped: list[Skipped]

    @property
    def complete(self) -> bool:
        """Whether every line of the log is now stored by the relay."""
        return self.acked == self.sent and not self.skipped


def read_run_log(path: str | os.PathLike[str]) -> RunLog:
    """Read a run log for :func:`replay`, sorting its lines into sendable and skipped.

    Raises:
        OSError: the file cannot be read.
    """
    log = RunLog(Path(path))
    seen: set[tuple[str, str]] = set()  # (run_id, msg_id)
    with open(path, encoding="utf-8", errors="replace") as file:
        for number, raw in enumerate(file, start=1):
            text = raw.rstrip("\r\n")
            if not text.strip():
                continue
            entry = _parse_line(number, text)
            if isinstance(entry, Skipped):
                log.skipped.append(entry)
            elif (entry.run_id, entry.msg_id) in seen:
                log.repeated += 1
            else:
                seen.add((entry.run_id, entry.msg_id))
                if entry.run_id not in log.run_ids:
                    log.run_ids.append(entry.run_id)
                log.messages.append(entry)
    return log


def _parse_line(number: int, text: str) -> LogMessage | Skipped:
    """Line ``number`` of a log as a message to send, or why it cannot be sent."""
    try:
        message = decode_message(text)
    except MessageError as exc:
        return Skipped(number, str(exc))
    if message["type"] in CONTROL_TYPES:
        return Skipped(number, f"a {message['type']} control message, not part of a run")
    if "msg_id" not in message:
        return Skipped(
            number, "no msg_id, so the relay could not tell a second replay from new messages"
        )
    return LogMessage(number, message.get("run_id", DEFAULT_RUN), message["msg_id"], text)


def replay(
    log: RunLog,
    uri: str,
    *,
    token: str | None = None,
    ca_file: str | os.PathLike[str] | None = None,
    timeout: float = 30.0,
    progress: Callable[[int], object] = lambda count: None,
) -> ReplayResult:
    """Send ``log``'s messages to the relay at ``uri`` in order and wait for every ack.

    Args:
        log: from :func:`read_run_log`.
        uri: the relay, ``ws://`` or ``wss://``.
        token: publisher token; None or ``""``: ``$FL_STREAM_RELAY_TOKEN`` when set.
        ca_file: for ``wss://``, the CA certificate(s) to trust (see
            :func:`~fl_stream.monitor.connection.tls_context`).
        timeout: give up after this many seconds without any message settling (acked,
            rejected or sent unconfirmed) once connected.
        progress: called with the number of messages settled since its last call.

    Raises:
        ReplayError: the first connection attempt failed (nothing was sent), or the relay
            stopped taking messages for ``timeout`` seconds; the text names the reason.
        ValueError: the CA file cannot be read (the text names it).
    """
    ssl_context = tls_context(uri, ca_file)
    window = DeliveryWindow(
        max_queue=max(1, len(log.messages)),
        max_in_flight=MAX_IN_FLIGHT,
        max_message_bytes=MAX_MESSAGE_BYTES,
        ack_timeout=_ACK_TIMEOUT_S,
    )
    skipped = list(log.skipped)
    for message in log.messages:
        window.accept()
        if window.add(message.msg_id, message.text) is Added.TOO_LARGE:
            size = len(message.text.encode())
            reason = f"{size} bytes, more than the relay's limit of {MAX_MESSAGE_BYTES} bytes"
            skipped.append(Skipped(message.line, reason))
    too_large = len(skipped) - len(log.skipped)
    guard = threading.Condition()  # one thread here; the connection's contract asks for it
    connection = RelayConnection(
        uri,
        window=window,
        guard=guard,
        token=relay_token(token),
        backoff=(0.1, 2.0),
        log_path=log.path,
        report_once=ReportOnce(),
        ssl_context=ssl_context,
    )
    asyncio.run(_upload(connection, window, guard, timeout, progress))
    stats = window.stats()
    return ReplayResult(
        sent=len(log.messages) - too_large,
        acked=stats.acked,
        rejected=stats.rejected - too_large,
        unconfirmed=stats.unconfirmed,
        skipped=skipped,
    )


async def _upload(
    connection: RelayConnection,
    window: DeliveryWindow,
    guard: threading.Condition,
    timeout: float,
    progress: Callable[[int], object],
) -> None:
    """Run the connection until every message in ``window`` is settled."""
    task = asyncio.create_task(connection.run())
    try:
        reported, last_change = 0, time.monotonic()
        while True:
            with guard:
                settled, total = window.settled, window.accepted
            if settled > reported:
                progress(settled - reported)
                reported, last_change = settled, time.monotonic()
            if settled >= total:
                return
            if task.done():  # run() ends only by failing
                task.result()
            _check_progress(connection, window, time.monotonic() - last_change, timeout)
            await asyncio.sleep(_POLL_S)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def _check_progress(
    connection: RelayConnection, window: DeliveryWindow, idle: float, timeout: float
) -> None:
    """Raise :class:`ReplayError` when the relay is unreachable or has stopped taking messages."""
    reason = connection.outage_reason
    if connection.connections == 0 and reason is not None:
        raise ReplayError(f"cannot reach the relay at {connection.uri}: {reason}")
    if idle < timeout:
        return
    stats = window.stats()
    state = f"unreachable ({reason})" if reason else "connected but not answering"
    raise ReplayError(
        f"the relay at {connection.uri} took no message for {timeout:g} s, {state}; "
        f"{stats.acked} of {stats.accepted} acknowledged; replay again to send the rest "
        "(the relay stores each message once)"
    )
