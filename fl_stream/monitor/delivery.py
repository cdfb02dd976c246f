"""The sender's background thread: the callers' hand-off, the run log, the relay connection.

:class:`Delivery` takes messages from any thread (:meth:`Delivery.put` never blocks) and runs
a private asyncio loop on its own thread that appends every message to the local JSONL run
log (:mod:`fl_stream.monitor.runlog`), whether or not a relay is reachable, and adds it to
the :class:`~fl_stream.monitor.window.DeliveryWindow`, which decides what is sent, resent,
dropped or settled and keeps every counter. A
:class:`~fl_stream.monitor.connection.RelayConnection` on the same loop carries the window
over WebSockets. One lock guards the hand-off queue and the window.

:class:`fl_stream.monitor.sender.MetricsWebSocketSender` builds and validates the messages; this
module only delivers them.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import threading
import time
from collections import deque
from pathlib import Path

from .connection import RelayConnection, ReportOnce, logger
from .protocol import Message, encode_message
from .runlog import JsonlLog
from .window import Added, DeliveryWindow, SenderStats

__all__ = ["Delivery"]

# How often the loop thread looks for new messages while they keep coming, and for how long
# after the last one before it waits for a wake-up call instead.
_POLL_S = 0.005
_LINGER_S = 1.0


class Delivery:
    """Log every message and deliver it to the relay from a background thread.

    Args:
        websocket_uri: the relay; ``None`` writes the run log only.
        log_path: the JSONL run log.
        token: publisher token, sent as ``Authorization: Bearer <token>``.
        ssl_context: TLS settings for a ``wss://`` relay
            (:func:`~fl_stream.monitor.connection.tls_context`).
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
        ssl_context: ssl.SSLContext | None,
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
        self.report_once = ReportOnce()
        """``report_once(key, level, text, *args)``: log a notice once, repeats at DEBUG."""

        # Shared by the calling threads and the loop thread, guarded by _lock.
        self._lock = threading.Lock()
        self._settled = threading.Condition(self._lock)  # notified when messages settle
        self._window = DeliveryWindow(
            max_queue=max_queue,
            max_in_flight=max_in_flight,
            max_message_bytes=max_message_bytes,
            ack_timeout=ack_timeout,
        )
        self._inbox: deque[Message] = deque()  # accepted, not yet taken by the loop thread
        self._pump_idle = False  # the loop waits for a wake-up call
        self._stopped = False  # stop() took the last messages: later ones would be lost

        self._log: JsonlLog | None = None
        try:
            self._log = JsonlLog(self.log_path)
        except OSError as exc:
            logger.error(
                "fl-stream: cannot open run log %s (%s); messages go to the relay only",
                self.log_path,
                exc,
            )

        self._relay = None
        if websocket_uri is not None:
            self._relay = RelayConnection(
                websocket_uri,
                window=self._window,
                guard=self._settled,
                token=token,
                backoff=(backoff_initial, backoff_max),
                log_path=log_path,
                report_once=self.report_once,
                ssl_context=ssl_context,
            )
        self._loop = asyncio.new_event_loop()
        self._wake_pump = asyncio.Event()
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
        overflow, drops_began = None, False
        window = self._window
        with self._lock:
            if self._stopped:
                return False
            window.accept()
            if len(self._inbox) >= window.max_queue:  # the loop thread is not keeping up
                overflow = self._inbox.popleft()
                window.drop_accepted()
                drops_began = window.unreported_drops == 1
                self._settled.notify_all()
            self._inbox.append(message)
            wake, self._pump_idle = self._pump_idle, False
        if overflow is not None:  # the loop thread is starved; keep the log complete anyway
            self._write_log([encode_message(overflow)])
            if drops_began:
                self._warn_dropping()
        if wake:
            try:
                self._loop.call_soon_threadsafe(self._wake_pump.set)
            except RuntimeError:  # loop closed by a concurrent stop(); stop() logs the rest
                pass
        return True

    def count_invalid(self) -> None:
        """Count a call refused for an invalid value."""
        with self._lock:
            self._window.count_invalid()

    def flush(self, timeout: float) -> bool:
        """Wait until every message put so far is settled (acked, rejected, dropped).

        Returns ``False`` when ``timeout`` seconds pass first, e.g. while the relay is down.
        """
        deadline = time.monotonic() + timeout
        with self._settled:
            target = self._window.accepted
            while self._window.settled < target:
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
            pending = self._window.pending
        if pending:
            logger.warning(
                "fl-stream: closed with %d message(s) not delivered to %s; all are in %s",
                pending,
                self.websocket_uri,
                self.log_path,
            )
        if self._log is not None:
            self._log.close()

    def stats(self) -> SenderStats:
        """Return the counters."""
        with self._lock:
            return self._window.stats()

    # ------------------------------------------------------------------ both threads

    def _take_inbox(self, sleep_when_empty: bool = True) -> list[Message]:
        with self._lock:
            if not self._inbox:
                self._pump_idle = sleep_when_empty
                return []
            batch, self._inbox = list(self._inbox), deque()
            return batch

    def _warn_dropping(self) -> None:
        """Warn when a run of drops begins; the connection logs its count when it ends."""
        logger.warning(
            "fl-stream: more than %d messages wait for the relay; dropping the oldest "
            "(they stay in %s); the count is logged when the relay takes messages again",
            self._window.max_queue,
            self.log_path,
        )

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
        if self._relay is not None:
            tasks.append(asyncio.create_task(self._relay.run()))
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _pump(self) -> None:
        """Move accepted messages from the callers to the run log and the window.

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
        too_large: list[tuple[str, str]] = []  # (message type, text)
        drops_began = False
        with self._lock:
            window = self._window
            if self._relay is None:
                window.settle_logged(len(batch))
            else:
                for message, text in zip(batch, texts, strict=True):
                    added = window.add(message["msg_id"], text)
                    if added is Added.TOO_LARGE:
                        too_large.append((message["type"], text))
                    elif added is Added.DROPPED_OLDEST and window.unreported_drops == 1:
                        drops_began = True
            self._settled.notify_all()
        for message_type, text in too_large:
            self.report_once(
                f"too-large:{message_type}",
                logging.ERROR,
                "fl-stream: %s message of %d bytes exceeds max_message_bytes=%d; kept in %s "
                "but not sent",
                message_type,
                len(text.encode()),
                self._window.max_message_bytes,
                self.log_path,
            )
        if drops_began:
            self._warn_dropping()
        if self._relay is not None:
            self._relay.wake()
