"""The relay connection: the asyncio layer that carries a delivery window over WebSockets.

:class:`RelayConnection` keeps one persistent WebSocket connection to the relay, reconnecting
with capped exponential backoff and jitter. On each connection it writes what the
:class:`~fl_stream.monitor.window.DeliveryWindow` hands out, feeds the relay's replies
(``ack``, ``rejected``) back to it, and logs outages once. What to send, resend, drop or
settle is the window's to decide.

The sender connects as a publisher: ``publish`` is added to the query of its URL
(:func:`publisher_uri`), so the relay sends it only the replies to its own frames. A ``wss://``
relay is verified against the system's CAs, or against one CA file (:func:`tls_context`), e.g.
for a self-signed certificate.

``fl-stream replay`` (:mod:`fl_stream.monitor.replay`) drives the same connection with a window
filled from a run log.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import ssl
import threading
import time
from collections.abc import AsyncGenerator, Callable, Generator
from contextlib import aclosing
from functools import partial
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit, urlunsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from .control import RedactCredentials
from .protocol import Message, MessageError, validate_message
from .window import DeliveryWindow

__all__ = [
    "RELAY_CA_FILE_ENV",
    "RelayConnection",
    "ReportOnce",
    "backoff_delays",
    "publisher_uri",
    "tls_context",
]

# The sender's logger: users configure one logger for everything the sender reports.
logger = logging.getLogger("fl_stream.monitor.sender")

# websockets logs every reconnection attempt at INFO; the sender already warns once per outage.
# Set this logger to DEBUG to see each attempt (the token in the handshake is redacted).
_connection_logger = logging.getLogger("fl_stream.monitor.sender.websockets")
_connection_logger.setLevel(logging.WARNING)
_connection_logger.addFilter(RedactCredentials())

# A connection that lasted less than this is treated like a failed attempt (backoff applies).
_STABLE_CONNECTION_S = 2.0

_REPLIES = ("ack", "rejected")

# The CA file a sender trusts for wss:// when none is passed, so that Flower apps and the
# command line pick it up without code.
RELAY_CA_FILE_ENV = "FL_STREAM_RELAY_CA_FILE"
_CA_FILE_OPTIONS = f"ca_file=, --ca-file or ${RELAY_CA_FILE_ENV}"


def tls_context(uri: str, ca_file: str | os.PathLike[str] | None = None) -> ssl.SSLContext | None:
    """The TLS settings for connecting to ``uri``; None for ``ws://`` (no TLS).

    For ``wss://`` the relay's certificate and host name are always verified: against
    ``ca_file`` only, when given (a PEM file, e.g. the relay's self-signed certificate), else
    against ``$FL_STREAM_RELAY_CA_FILE`` when set, else against the system's CAs (None or ``""``
    means "not given").

    Raises:
        ValueError: the CA file cannot be read or holds no PEM certificate; the message names
            the file and what to pass instead.
    """
    if urlsplit(uri).scheme != "wss":
        return None
    path = os.fspath(ca_file) if ca_file else os.environ.get(RELAY_CA_FILE_ENV) or None
    if path is None:
        return ssl.create_default_context()
    hint = f"give the PEM certificate of the relay's CA ({_CA_FILE_OPTIONS})"
    try:
        return ssl.create_default_context(cafile=path)
    except FileNotFoundError:
        raise ValueError(f"CA file {path} not found; {hint}") from None
    except ssl.SSLError as exc:
        raise ValueError(
            f"CA file {path} holds no PEM certificate ({exc.reason or exc}); {hint}"
        ) from None
    except OSError as exc:
        raise ValueError(f"cannot read CA file {path}: {exc.strerror or exc}; {hint}") from None


class ReportOnce:
    """Log each distinct notice once at its level and its repeats at DEBUG.

    ``report(key, level, text, *args)`` logs ``text % args`` on the sender's logger; ``key``
    says which notices are the same.
    """

    def __init__(self) -> None:
        self._reported: set[str] = set()

    def __call__(self, key: str, level: int, text: str, *args: Any) -> None:
        if key in self._reported:
            level = logging.DEBUG
        self._reported.add(key)
        logger.log(level, text, *args)


def publisher_uri(uri: str) -> str:
    """Return ``uri`` with ``publish`` added to its query, keeping its path and query.

    ``ws://host:8765`` becomes ``ws://host:8765/?publish``, ``ws://host/p?x=1`` becomes
    ``ws://host/p?x=1&publish``; a query that already names ``publish`` is kept as it is.
    """
    parts = urlsplit(uri)
    params = parts.query.split("&") if parts.query else []
    if "publish" not in (param.partition("=")[0] for param in params):
        params.append("publish")
    return urlunsplit(parts._replace(path=parts.path or "/", query="&".join(params)))


def backoff_delays(initial: float, maximum: float) -> Generator[float, None, None]:
    """Yield capped exponential reconnection delays with jitter (50-100 % of each step)."""
    delay = initial
    while True:  # an outage may last for hours: no exponent that could overflow
        yield delay * random.uniform(0.5, 1.0)
        delay = min(maximum, delay * 2)


class RelayConnection:
    """Deliver a window's messages over one self-healing WebSocket connection.

    Runs on the sender's event loop thread; :meth:`run` until cancelled.

    Args:
        uri: the relay as the user gave it (named in notices).
        window: what to send; used only while ``guard`` is held.
        guard: the sender's lock, as a condition notified whenever messages settle.
        token: publisher token, sent as ``Authorization: Bearer <token>``.
        backoff: the first and the longest reconnection delay, in seconds.
        log_path: the run log, named in notices.
        report_once: ``report_once(key, level, text, *args)`` logs the first time ``key``
            comes up, at DEBUG afterwards (a :class:`ReportOnce`).
        ssl_context: TLS settings for a ``wss://`` relay (:func:`tls_context`); None: no TLS
            for ``ws://``, the system's CAs for ``wss://``.

    Attributes:
        connections: connections opened so far.
        outage_reason: why the relay is unreachable now (None while connected, and before
            the first attempt failed).
    """

    def __init__(
        self,
        uri: str,
        *,
        window: DeliveryWindow,
        guard: threading.Condition,
        token: str | None,
        backoff: tuple[float, float],
        log_path: Path,
        report_once: Callable[..., None],
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.uri = uri
        self.connections = 0
        self.outage_reason: str | None = None
        self._window = window
        self._guard = guard
        self._token = token
        self._backoff = backoff
        self._log_path = log_path
        self._report_once = report_once
        self._ssl = ssl_context
        self._work = asyncio.Event()  # the window may have something to send
        self._outage_since: float | None = None

    def wake(self) -> None:
        """Tell the writer that the window may have something to send (loop thread only)."""
        self._work.set()

    async def run(self) -> None:
        """Connect, deliver, reconnect after each failure; until cancelled."""
        headers = {"Authorization": f"Bearer {self._token}"} if self._token else None
        connector = connect(
            publisher_uri(self.uri),
            additional_headers=headers,
            ssl=self._ssl,
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
        # An async generator: aclosing() closes the current connection when this is cancelled.
        connections = cast(AsyncGenerator[ClientConnection, None], connector.__aiter__())
        async with aclosing(connections):
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
        elif isinstance(exc, ssl.SSLCertVerificationError):
            reason = (
                f"TLS certificate not trusted: {exc.verify_message}; give the PEM certificate "
                f"of the relay's CA ({_CA_FILE_OPTIONS})"
            )
        else:
            reason = f"{type(exc).__name__}: {exc}"
        self._outage_started(reason)

    def _outage_started(self, reason: str) -> None:
        self.outage_reason = reason
        if self._outage_since is not None:
            return
        self._outage_since = time.monotonic()
        logger.warning(
            "fl-stream: relay %s unreachable (%s); up to %d messages wait and are resent "
            "when it is back; every message is in %s",
            self.uri,
            reason,
            self._window.max_queue,
            self._log_path,
        )

    async def _stream(self, connection: ClientConnection) -> None:
        """Send and collect replies on one connection until it closes."""
        outage_since, self._outage_since = self._outage_since, None
        self.connections += 1
        self.outage_reason = None
        with self._guard:
            resend = self._window.on_connected(time.monotonic())
            waiting = self._window.pending
            dropped = self._window.take_unreported_drops() if outage_since is not None else 0
        if outage_since is not None:
            logger.info(
                "fl-stream: relay %s reachable again after %.1f s; delivering %d queued "
                "message(s) late; %d dropped while the queue was full (they are in %s)",
                self.uri,
                time.monotonic() - outage_since,
                waiting,
                dropped,
                self._log_path,
            )
        reader = asyncio.create_task(self._read_replies(connection))
        writer = asyncio.create_task(self._write_messages(connection, resend))
        try:
            done, _ = await asyncio.wait({reader, writer}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            await connection.close()  # code 1000: the sender is closing, nothing failed
            raise
        finally:
            for task in (reader, writer):
                task.cancel()
            await asyncio.gather(reader, writer, return_exceptions=True)
            with self._guard:
                self._window.on_connection_lost()
        for task in done:
            exc = task.exception()
            if exc is not None and not isinstance(exc, ConnectionClosed):
                logger.error("fl-stream: unexpected error on the relay connection", exc_info=exc)
        self._outage_started(
            f"connection closed: {connection.close_reason or 'no reason'} "
            f"(code {connection.close_code})"
        )

    async def _write_messages(
        self, connection: ClientConnection, resend: list[tuple[str, str]]
    ) -> None:
        for _, text in resend:
            await connection.send(text)
        window, guard = self._window, self._guard
        while True:
            self._work.clear()
            with guard:
                settled = window.settled
                item = window.next_to_send(time.monotonic())
                if window.settled != settled:  # at-most-once: settled as it is handed out
                    guard.notify_all()
            if item is not None:
                await connection.send(item[1])
                continue
            with guard:
                deadline = window.ack_deadline()
                dropped = 0 if window.queued else window.take_unreported_drops()
            if dropped:
                logger.warning(
                    "fl-stream: relay %s caught up; %d message(s) were dropped while the "
                    "queue was full (they are in %s)",
                    self.uri,
                    dropped,
                    self._log_path,
                )
            await self._wait_for_work(deadline)

    async def _wait_for_work(self, deadline: float | None) -> None:
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            await asyncio.wait_for(self._work.wait(), timeout)
        except TimeoutError:
            with self._guard:
                expired = self._window.expire(time.monotonic())
                self._guard.notify_all()
            if expired:
                self._report_once(
                    "no-acks",
                    logging.WARNING,
                    "fl-stream: relay %s sent no ack within %.1f s; treating it as a relay "
                    "without acks: messages are sent once and not resent after a reconnect",
                    self.uri,
                    self._window.ack_timeout,
                )

    async def _read_replies(self, connection: ClientConnection) -> None:
        async for frame in connection:
            reply = self._parse_reply(frame)
            if reply is None:
                continue
            data = reply["data"]
            msg_id, reason = data.get("msg_id"), data.get("reason")
            # "retry": the message was valid but the relay could not store it; like a refusal
            # that names no message, it asks for everything unacknowledged again.
            retry = reply["type"] == "rejected" and data.get("retry") is True
            with self._guard:
                if reply["type"] == "ack":
                    replace = False
                    self._window.on_ack(msg_id)
                else:
                    replace = self._window.on_rejected(None if retry else msg_id)
                self._guard.notify_all()
            self._work.set()  # the in-flight window may have room again
            if replace:
                # Resend everything the relay has not acked, in order, on a new connection
                # after a backoff (what it took meanwhile is acked again, not stored twice).
                self._report_once(
                    f"rejected:{reason}",
                    logging.WARNING,
                    "fl-stream: relay could not take a message (%s); reconnecting to resend "
                    "what it has not acknowledged",
                    reason,
                )
                await connection.close(reason="resending unacknowledged messages")
                return
            if reply["type"] == "rejected":
                self._report_once(
                    f"rejected:{reason}",
                    logging.ERROR,
                    "fl-stream: relay rejected message %s: %s (kept in %s, not resent)",
                    msg_id,
                    reason,
                    self._log_path,
                )

    def _parse_reply(self, frame: str | bytes) -> Message | None:
        """The ``ack`` or ``rejected`` reply in ``frame``; None for anything else.

        A publisher connection gets only the replies to its own frames, but a relay that
        predates publisher connections also sends every live message of every run: those
        and pongs are ignored. An invalid frame or reply is reported once, then ignored.
        """
        try:
            reply = json.loads(frame)
            if not isinstance(reply, dict) or reply.get("type") not in _REPLIES:
                return None
            return validate_message(reply)
        except (ValueError, MessageError) as exc:
            self._report_once(
                "bad-reply",
                logging.WARNING,
                "fl-stream: ignoring an invalid reply from the relay: %s",
                exc,
            )
            return None
