"""The watcher's link to the relay: the run list over HTTP, and one subscriber connection.

The token travels only as ``Authorization: Bearer <token>`` (never in a URL). Failures come
in two kinds: :class:`LinkLost` (the relay cannot be reached now, or the connection dropped:
worth retrying) and :class:`WatchError` (the relay refused the watcher: retrying would not
help); both say what happened and what to do.
"""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from fl_stream.monitor.protocol import (
    RELAY_TOKEN_ENV,
    VIEWER_TOKEN_ENV,
    Message,
    make_message,
)

__all__ = [
    "LinkLost",
    "RelayAddress",
    "Subscriber",
    "WatchError",
    "open_subscriber",
    "refused_subscription",
]

# Seconds to open a connection or answer a request, and the keepalive that notices a dead
# link (a relay host that vanished) within PING_INTERVAL + PING_TIMEOUT.
OPEN_TIMEOUT = 5.0
PING_INTERVAL = 5.0
PING_TIMEOUT = 10.0

_TOKEN_HINT = f"pass --token or set ${VIEWER_TOKEN_ENV} (or ${RELAY_TOKEN_ENV})"


class WatchError(Exception):
    """The watcher cannot go on (the relay refused it, or stayed unreachable)."""


class LinkLost(Exception):
    """The relay cannot be reached now, or the connection dropped; a retry may succeed."""


@dataclass(frozen=True)
class RelayAddress:
    """Where the relay is and how to show it the token.

    Args:
        url: the relay's ``ws://`` or ``wss://`` address.
        token: the viewer (or publisher) token, or None for a relay anyone may read.
        ssl: the TLS settings for ``wss://`` and ``https://`` (None for ``ws://``).
    """

    url: str
    token: str | None
    ssl: ssl.SSLContext | None

    @property
    def headers(self) -> dict[str, str]:
        """The handshake and request headers: the token, when there is one."""
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def http_url(self, path: str) -> str:
        """The relay's HTTP address of ``path``, on its WebSocket port."""
        parts = urlsplit(self.url)
        scheme = "https" if parts.scheme == "wss" else "http"
        return urlunsplit((scheme, parts.netloc, parts.path.rstrip("/") + path, "", ""))

    def newest_run(self) -> str | None:
        """The most recently active run in ``/api/runs``; None when the relay has none.

        Raises:
            LinkLost: the relay does not answer.
            WatchError: the relay refused the request (e.g. a viewer token is needed).
        """
        request = urllib.request.Request(self.http_url("/api/runs"), headers=self.headers)
        # Straight to the relay, as the WebSocket goes: no proxy from the environment.
        opener = urllib.request.build_opener(
            urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=self.ssl)
        )
        try:
            with opener.open(request, timeout=OPEN_TIMEOUT) as response:
                runs = json.load(response).get("runs") or []
        except urllib.error.HTTPError as exc:
            with exc:
                raise _refusal(exc.code, exc.read(), "list its runs") from None
        except (OSError, ValueError) as exc:  # URLError is an OSError
            raise LinkLost(_reason(exc)) from None
        return str(runs[0]["run_id"]) if runs else None


def open_subscriber(address: RelayAddress) -> Subscriber:
    """Open a ``?subscribe`` connection: the relay sends it nothing of a run until it subscribes.

    Raises:
        LinkLost: the relay cannot be reached, or its handshake failed.
        WatchError: the relay refused the handshake (a 4xx: a wrong token, ...).
    """
    try:
        connection = connect(
            _subscriber_url(address.url),
            additional_headers=address.headers,
            ssl=address.ssl,
            proxy=None,
            compression=None,
            open_timeout=OPEN_TIMEOUT,
            ping_interval=PING_INTERVAL,
            ping_timeout=PING_TIMEOUT,
            close_timeout=1,
            max_size=None,  # the relay decides how large its messages may be
            legacy=True,  # a connection kept across calls, closed by Subscriber
        )
    except InvalidStatus as exc:
        raise _refusal(exc.response.status_code, exc.response.body, "accept the watcher") from None
    except (OSError, InvalidHandshake) as exc:  # refused, timed out, TLS, a broken handshake
        raise LinkLost(_reason(exc)) from None
    return Subscriber(connection)


class Subscriber:
    """One subscriber connection to the relay; a context manager that closes it."""

    def __init__(self, connection: ClientConnection) -> None:
        self._connection = connection

    def subscribe(self, run_id: str, since: int, epoch: str | None) -> None:
        """Ask for ``run_id``: its stored messages after ``since`` first, then live ones.

        ``epoch`` is the relay database the caller's seqs come from (None: unknown).

        Raises:
            LinkLost: the connection dropped.
        """
        data: dict[str, Any] = {"run_id": run_id, "since": since}
        if epoch is not None:
            data["epoch"] = epoch
        try:
            self._connection.send(json.dumps(make_message("subscribe", data)))
        except ConnectionClosed as exc:
            raise LinkLost(_closed(exc)) from None

    def receive(self, timeout: float) -> Message | None:
        """The next message, or None when none came within ``timeout`` seconds.

        Raises:
            LinkLost: the connection dropped or the relay closed it.
        """
        try:
            frame = self._connection.recv(timeout)
        except TimeoutError:
            return None
        except ConnectionClosed as exc:
            raise LinkLost(_closed(exc)) from None
        message = json.loads(frame)  # the relay sends JSON objects only
        return message if isinstance(message, dict) else None

    def close(self) -> None:
        """Close the connection (at once if the relay does not answer)."""
        self._connection.close()

    def __enter__(self) -> Subscriber:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def refused_subscription(reason: str) -> WatchError:
    """The error for a ``rejected`` reply to the watcher's subscribe."""
    hint = f"; {_TOKEN_HINT}" if reason.startswith("unauthorised") else ""
    return WatchError(f"the relay refused to send the run: {reason}{hint}")


def _subscriber_url(url: str) -> str:
    """``url`` with ``subscribe`` added to its query: ``ws://h:8765`` -> ``ws://h:8765/?subscribe``."""
    parts = urlsplit(url)
    params = [param for param in parts.query.split("&") if param]
    if "subscribe" not in (param.partition("=")[0] for param in params):
        params.append("subscribe")
    return urlunsplit(parts._replace(path=parts.path or "/", query="&".join(params)))


def _refusal(status: int, body: bytes | bytearray | None, what: str) -> WatchError | LinkLost:
    """A 4xx is a refusal (WatchError); anything else a relay in trouble (LinkLost)."""
    try:
        reason = str(json.loads(body or b"{}").get("error") or status)
    except (ValueError, AttributeError):
        reason = str(status)
    if not 400 <= status < 500:
        return LinkLost(f"the relay answered {status}: {reason}")
    hint = f"; {_TOKEN_HINT}" if status == 401 else ""
    return WatchError(f"the relay would not {what} ({status}): {reason}{hint}")


def _reason(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.URLError) and isinstance(exc.reason, BaseException):
        exc = exc.reason
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc) or type(exc).__name__


def _closed(exc: ConnectionClosed) -> str:
    code = exc.rcvd.code if exc.rcvd is not None else 1006
    return f"the connection closed ({code})"
