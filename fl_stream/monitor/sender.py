"""MetricsWebSocketSender: stream training metrics to the relay without slowing training down.

A ``send_*`` call builds and validates one message (:mod:`fl_stream.monitor.protocol`), puts it on a
bounded queue and returns ``True`` (or ``False``, with one logged error naming the field, when
a value is invalid). It never blocks on the network and never raises into training code.

A background thread (:mod:`fl_stream.monitor.delivery`) appends every accepted message to the
local JSONL run log and delivers it over one persistent, self-healing WebSocket connection
(:mod:`fl_stream.monitor.connection`); the delivery rules and every counter are in
:mod:`fl_stream.monitor.window`: messages the relay has not acknowledged are resent after a
reconnect, and the relay stores each once.
"""

from __future__ import annotations

import atexit
import itertools
import logging
import os
import ssl
import threading
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from websockets.exceptions import InvalidURI
from websockets.uri import parse_uri

from .connection import tls_context
from .delivery import Delivery
from .protocol import (
    DEFAULT_RELAY_URL,
    MAX_MESSAGE_BYTES,
    MessageError,
    make_message,
    relay_token,
)
from .runlog import default_log_path
from .window import SenderStats

__all__ = ["MetricsWebSocketSender", "SenderStats"]

logger = logging.getLogger(__name__)


class MetricsWebSocketSender:
    """Send training metrics to the fl-stream relay from any thread or event loop.

    Args:
        websocket_uri: the relay, ``ws://`` or ``wss://``; ``None`` writes the run log only.
        run_id: added to every message so the relay files it under this run.
        token: publisher token, sent as ``Authorization: Bearer <token>``; None or ``""``:
            ``$FL_STREAM_RELAY_TOKEN`` when set (:func:`fl_stream.monitor.protocol.relay_token`).
        ca_file: for a ``wss://`` relay, the PEM certificate(s) to trust instead of the
            system's CAs (e.g. the relay's self-signed certificate); None or ``""``:
            ``$FL_STREAM_RELAY_CA_FILE`` when set. An unreadable file is logged as one error
            and the sender writes the run log only.
        log_path: the JSONL run log; default ``$FL_STREAM_LOG_DIR/<run_id>.jsonl``
            (``runs/`` when the variable is unset).
        max_queue: messages that may wait for the relay; past it the oldest are dropped
            (counted and logged; they stay in the run log).
        max_in_flight: sent messages that may wait for an ack before sending pauses.
        max_message_bytes: larger messages are kept in the log but not sent (the relay
            would close the connection).
        ack_timeout: seconds without any ack after which a connection is at-most-once.
        backoff_initial, backoff_max: reconnection delays, doubling from the first to the
            second, each with jitter.
        exit_timeout: how long the interpreter's exit waits for undelivered messages when
            :meth:`close` was not called.

    Every ``send_*`` method returns ``True`` when the message was accepted and ``False``
    when it was refused (an invalid value, or the sender is closed); it never raises.

    Raises:
        ValueError: ``max_queue``, ``max_in_flight`` or ``max_message_bytes`` is below 1.
    """

    def __init__(
        self,
        websocket_uri: str | None = DEFAULT_RELAY_URL,
        *,
        run_id: str | None = None,
        token: str | None = None,
        ca_file: str | os.PathLike[str] | None = None,
        log_path: str | Path | None = None,
        max_queue: int = 10_000,
        max_in_flight: int = 1_000,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        ack_timeout: float = 5.0,
        backoff_initial: float = 0.1,
        backoff_max: float = 10.0,
        exit_timeout: float = 1.0,
    ) -> None:
        for name, value in (
            ("max_queue", max_queue),
            ("max_in_flight", max_in_flight),
            ("max_message_bytes", max_message_bytes),
        ):
            if value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        self.websocket_uri = _checked_uri(websocket_uri)
        ssl_context = self._tls_context(ca_file)
        self.run_id = run_id
        self.sender_id = uuid.uuid4().hex[:12]
        self.log_path = Path(log_path) if log_path else default_log_path(run_id, self.sender_id)
        self._exit_timeout = exit_timeout
        self._msg_numbers = itertools.count(1)
        self._lock = threading.Lock()  # guards _closed
        self._closed = False
        self._delivery = Delivery(
            self.websocket_uri,
            self.log_path,
            token=relay_token(token),
            ssl_context=ssl_context,
            max_queue=max_queue,
            max_in_flight=max_in_flight,
            max_message_bytes=max_message_bytes,
            ack_timeout=ack_timeout,
            backoff_initial=backoff_initial,
            backoff_max=backoff_max,
            thread_name=f"fl-stream-sender-{self.sender_id}",
        )
        atexit.register(self._close_at_exit)

    # ------------------------------------------------------------------ public API

    def send_metrics(self, metrics: Mapping[str, Any], type: str = "metrics") -> bool:
        """Send ``metrics`` as the ``data`` of a message of the given ``type``."""
        return self._send(type, metrics)

    def send_training_mode(
        self,
        is_federated: bool,
        num_rounds: int,
        num_clients: int,
        *,
        num_epochs: int | None = None,
        config: Mapping[str, Any] | None = None,
    ) -> bool:
        """Announce the run: federated or centralized, its rounds, clients and epochs.

        A centralized run sends ``num_rounds=0, num_clients=0`` and its planned
        ``num_epochs``, which lets the dashboard show "epoch k of N" and the time left.
        ``config`` holds the run's settings (name -> str, number, bool or None; never a
        secret), which tell runs apart when they are compared.
        """
        data: dict[str, Any] = {
            "is_federated": is_federated,
            "num_rounds": num_rounds,
            "num_clients": num_clients,
        }
        if num_epochs is not None:
            data["num_epochs"] = num_epochs
        if config is not None:
            data["config"] = config
        return self._send("training_mode", data)

    def send_epoch_end(self, epoch: int, phase: str, metrics: Mapping[str, Any]) -> bool:
        """Report one epoch's metrics; ``phase`` is ``"train"`` or ``"val"``."""
        return self._send("epoch_end", {"epoch": epoch, "phase": phase, "metrics": metrics})

    def send_round_metrics(
        self,
        round_num: int,
        total_rounds: int,
        metrics: Mapping[str, Any],
        *,
        phase: str | None = None,
        num_clients: int | None = None,
    ) -> bool:
        """Report a federated round's metrics aggregated over clients."""
        data: dict[str, Any] = {
            "round": round_num,
            "total_rounds": total_rounds,
            "metrics": metrics,
        }
        if phase is not None:
            data["phase"] = phase
        if num_clients is not None:
            data["num_clients"] = num_clients
        return self._send("round_metrics", data)

    def send_round_end(
        self,
        round_num: int,
        total_rounds: int,
        fit_metrics: Mapping[str, Any],
        eval_metrics: Mapping[str, Any],
        *,
        eval_source: str | None = None,
    ) -> bool:
        """Report the end of a federated round with its training and evaluation metrics.

        ``eval_source`` says where ``eval_metrics`` come from: ``"clients"`` (federated
        evaluation) or ``"server"`` (the server's own evaluation of the global model).
        """
        data: dict[str, Any] = {
            "round": round_num,
            "total_rounds": total_rounds,
            "fit_metrics": fit_metrics,
            "eval_metrics": eval_metrics,
        }
        if eval_source is not None:
            data["eval_source"] = eval_source
        return self._send("round_end", data)

    def send_client_metrics(
        self,
        round_num: int,
        total_rounds: int,
        phase: str,
        clients: Sequence[Mapping[str, Any]],
    ) -> bool:
        """Report each client's metrics for one round.

        ``clients`` holds ``{"client_id": str, "num_examples": int, "metrics": {...}}``;
        ``phase`` is ``"train"`` or ``"evaluate"``.
        """
        return self._send(
            "client_metrics",
            {"round": round_num, "total_rounds": total_rounds, "phase": phase, "clients": clients},
        )

    def send_training_end(self, run_id: str, summary_data: Mapping[str, Any]) -> bool:
        """Report the end of a run.

        ``summary_data`` holds ``status`` (``"completed"`` when absent, ``"early_stopped"``,
        ``"failed"``), ``best_epoch`` or ``best_round``, and ``final_metrics``.
        """
        if not isinstance(summary_data, Mapping):
            return self._refuse(
                "training_end", f"summary_data: expected a dict, got {type(summary_data).__name__}"
            )
        data = {"run_id": run_id, "status": "completed", "final_metrics": {}, **summary_data}
        return self._send("training_end", data)

    def send_error(self, error_message: str, error_type: str = "error") -> bool:
        """Report an error of the training run."""
        return self._send("error", {"error": error_message, "error_type": error_type})

    def send_failure(
        self, run_id: str, exc: BaseException, summary_data: Mapping[str, Any] | None = None
    ) -> bool:
        """Report that the run ended with ``exc``: ``error``, then a ``failed`` ``training_end``.

        Every producer ends a failed run this way, so dashboards see one shape of failure.
        ``summary_data`` adds what is known so far (``best_round``, ``final_metrics``, ...).
        """
        error_sent = self.send_error(f"{type(exc).__name__}: {exc}", type(exc).__name__)
        end_sent = self.send_training_end(run_id, {**(summary_data or {}), "status": "failed"})
        return error_sent and end_sent

    def send_early_stopping_triggered(
        self,
        epoch: int,
        best_metric_value: Any,
        metric_name: str,
        patience: int,
        reason: str | None = None,
    ) -> bool:
        """Report that early stopping ended training; a reason is written when none is given."""
        if reason is None:
            reason = (
                f"{metric_name} did not improve for {patience} epochs "
                f"(best {_short(best_metric_value)})"
            )
        return self._send(
            "early_stopping",
            {
                "epoch": epoch,
                "best_metric_value": best_metric_value,
                "metric_name": metric_name,
                "patience": patience,
                "reason": reason,
            },
        )

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every message accepted so far is settled (acked, rejected, dropped).

        Returns ``False`` when ``timeout`` seconds pass first, e.g. while the relay is down.
        Blocks the calling thread: from a coroutine use ``await asyncio.to_thread(...)``.
        """
        return self._delivery.flush(timeout)

    def close(self, timeout: float = 5.0) -> bool:
        """Flush for up to ``timeout`` seconds, then stop; later calls are refused.

        Returns whether everything was delivered. Safe to call twice.
        """
        with self._lock:
            already_closed, self._closed = self._closed, True
        if already_closed:
            return self.stats().pending == 0
        atexit.unregister(self._close_at_exit)
        delivered = self.flush(timeout)
        self._delivery.stop()
        return delivered

    def stats(self) -> SenderStats:
        """Return the sender's counters."""
        return self._delivery.stats()

    def __enter__(self) -> MetricsWebSocketSender:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # ------------------------------------------------------------------ calling threads

    def _send(self, message_type: str, data: Mapping[str, Any]) -> bool:
        if self._closed:
            return self._refuse_closed(message_type)
        try:
            message = make_message(
                message_type,
                data,
                run_id=self.run_id,
                msg_id=f"{self.sender_id}-{next(self._msg_numbers)}",
            )
        except Exception as exc:  # training code must never see an exception from here
            reason = str(exc) if isinstance(exc, MessageError) else f"{type(exc).__name__}: {exc}"
            return self._refuse(message_type, reason)
        if not self._delivery.put(message):  # close() finished while this call ran
            return self._refuse_closed(message_type)
        return True

    def _refuse_closed(self, message_type: str) -> bool:
        self._delivery.report_once(
            "closed",
            logging.WARNING,
            "fl-stream: sender is closed; %s message not sent",
            message_type,
        )
        return False

    def _refuse(self, message_type: str, reason: str) -> bool:
        """Log why a call was refused (once per distinct reason) and return ``False``."""
        self._delivery.count_invalid()
        self._delivery.report_once(
            f"invalid:{message_type}:{reason}",
            logging.ERROR,
            "fl-stream: %s message not sent: %s",
            message_type,
            reason,
        )
        return False

    def _tls_context(self, ca_file: str | os.PathLike[str] | None) -> ssl.SSLContext | None:
        """The TLS settings for the relay; with a bad CA file, log one error and go log-only."""
        if self.websocket_uri is None:
            return None
        try:
            context = tls_context(self.websocket_uri, ca_file)
        except ValueError as exc:
            logger.error("fl-stream: %s; messages go to the run log only", exc)
            self.websocket_uri = None
            return None
        if ca_file and context is None:
            logger.warning(
                "fl-stream: ca_file is used for wss:// relays only; %s is not encrypted",
                self.websocket_uri,
            )
        return context

    def _close_at_exit(self) -> None:
        self.close(timeout=self._exit_timeout)


def _checked_uri(uri: str | None) -> str | None:
    if not uri:  # None or "" (a run config's way of saying "no relay"): the run log only
        return None
    try:
        parse_uri(uri)
    except InvalidURI as exc:
        logger.error("fl-stream: %s; messages go to the run log only", exc)
        return None
    return uri


def _short(value: Any) -> str:
    try:
        return f"{float(value):.4g}"
    except Exception:  # a reason text must never fail the call
        return repr(value)[:40]
