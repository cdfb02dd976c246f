"""Helpers for tests that talk to a real relay: the relay process, a listening client, HTTP.

Everything here uses real sockets on 127.0.0.1 with bounded waits:

- :class:`RelayProcess` (from :mod:`scripts.localrun`): ``python -m relay`` in a subprocess on a
  free port with its own database (the ``relay`` / ``relay_factory`` fixtures in
  ``conftest.py`` build these).
- :class:`ListeningClient`: a dashboard stand-in; a background thread keeps one WebSocket
  connection and collects every message it receives.
- :func:`publish`: send messages from a one-off publisher connection and collect the relay's
  replies (``ack`` / ``rejected``), one per message.
- :func:`get_json` / :func:`http_get` / :func:`http_request`: plain HTTP requests to the relay
  (the last one with any headers, repeated ones included).
- :func:`raw_client`: a WebSocket client on a bare socket, for what a well-behaved client
  cannot do: never read (a stalled dashboard), send invalid UTF-8 or any frame at all.
- :func:`rss_kib`: a process's resident memory, from ``/proc``.
"""

from __future__ import annotations

import base64
import datetime
import email.message
import http.client
import ipaddress
import json
import os
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from fl_stream.monitor.protocol import CONTROL_TYPES
from scripts.localrun import RelayProcess, free_port

# The relay process and free ports come from the package, re-exported for the tests.
__all__ = [
    "ListeningClient",
    "RelayProcess",
    "control",
    "free_port",
    "get_json",
    "http_get",
    "http_request",
    "publish",
    "raw_client",
    "rss_kib",
    "self_signed_certificate",
    "ws_frame",
]

Message = dict[str, Any]

# Bounded waits: long enough for a loaded 2-core machine, short enough to fail fast.
WAIT_TIMEOUT = 10.0


# --------------------------------------------------------------------------- HTTP


def http_get(url: str, timeout: float = WAIT_TIMEOUT) -> tuple[int, email.message.Message, bytes]:
    """GET ``url``; return ``(status, headers, body)`` for any status, errors included."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.headers, error.read()


def get_json(url: str, timeout: float = WAIT_TIMEOUT) -> Any:
    """GET ``url`` and return its JSON body; raise AssertionError unless the status is 200."""
    status, _, body = http_get(url, timeout)
    if status != 200:
        raise AssertionError(f"GET {url} answered {status}: {body[:300]!r}")
    return json.loads(body)


def http_request(
    port: int,
    path: str,
    headers: Sequence[tuple[str, str]] = (),
    timeout: float = WAIT_TIMEOUT,
) -> tuple[int, dict[str, str], bytes]:
    """GET ``path`` on 127.0.0.1:``port`` with exactly ``headers`` (a name may repeat)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.putrequest("GET", path, skip_accept_encoding=True)
        for name, value in headers:
            connection.putheader(name, value)
        connection.endheaders()
        reply = connection.getresponse()
        return reply.status, dict(reply.getheaders()), reply.read()
    finally:
        connection.close()


def rss_kib(pid: int) -> int:
    """The resident memory of process ``pid`` in KiB (``VmRSS`` of ``/proc/<pid>/status``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for process {pid}")


# --------------------------------------------------------------------------- raw sockets


def ws_frame(payload: bytes, opcode: int = 0x1) -> bytes:
    """One masked client frame (text by default) carrying ``payload``, any bytes at all."""
    mask = os.urandom(4)
    length = len(payload)
    if length < 126:
        head = bytes([0x80 | opcode, 0x80 | length])
    elif length < 1 << 16:
        head = bytes([0x80 | opcode, 0x80 | 126]) + length.to_bytes(2, "big")
    else:
        head = bytes([0x80 | opcode, 0x80 | 127]) + length.to_bytes(8, "big")
    masked = bytes(byte ^ mask[i % 4] for i, byte in enumerate(payload))
    return head + mask + masked


def raw_client(
    port: int,
    path: str = "/",
    frames: Iterable[Message] = (),
    receive_buffer: int | None = 4096,
) -> socket.socket:
    """A WebSocket client on a bare socket: it completes the handshake, sends ``frames``, and
    reads nothing more unless the caller does (a stalled dashboard: a small receive buffer
    fills fast; None leaves the kernel's default).
    """
    sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT_TIMEOUT)
    if receive_buffer is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    head = b""
    while not head.endswith(b"\r\n\r\n"):  # a byte at a time: the frames after it stay unread
        byte = sock.recv(1)
        if not byte:
            break
        head += byte
    if not head.startswith(b"HTTP/1.1 101"):
        sock.close()
        raise AssertionError(f"the relay refused the WebSocket handshake for {path}: {head!r}")
    for message in frames:
        sock.sendall(ws_frame(json.dumps(message).encode()))
    return sock


# --------------------------------------------------------------------------- clients


class ListeningClient:
    """A dashboard stand-in: one WebSocket connection read by a background thread.

    With neither ``run_id`` nor ``since`` it never subscribes and so receives every live
    message (the original design). Otherwise it subscribes to ``run_id`` (None: all runs)
    with ``since`` and the constructor returns once the relay's ``replay_end`` arrived:
    the replay is in :attr:`messages` and live messages follow; it connects to
    ``<ws_url>/?subscribe`` so that no live message reaches it before that subscribe (which
    would come again in the replay). Either way the connection
    is registered with the relay when the constructor returns (a ping/pong round trip).

    Attributes:
        messages: every message received, in order (control messages included).
        close_code: the close code once the connection closed (1006: no close frame).
        closed: set when the connection has closed.

    Args:
        ws_url: the relay's ``ws://`` URL.
        run_id: the run to subscribe to (None with ``since`` set: all runs).
        since: replay the stored messages with a higher seq first.
        subscribe: force a subscribe (True) or none (False); default: when run_id or since.
        headers: extra handshake headers, e.g. ``{"Origin": ...}``.
        token: sent as ``Authorization: Bearer <token>``.
    """

    def __init__(
        self,
        ws_url: str,
        run_id: str | None = None,
        since: int | None = None,
        *,
        subscribe: bool | None = None,
        headers: Mapping[str, str] | None = None,
        token: str | None = None,
        timeout: float = WAIT_TIMEOUT,
    ) -> None:
        self.messages: list[Message] = []
        self.close_code: int | None = None
        self.closed = threading.Event()
        self._changed = threading.Condition()
        all_headers = dict(headers or {})
        if token is not None:
            all_headers["Authorization"] = f"Bearer {token}"
        if subscribe is None:
            subscribe = run_id is not None or since is not None
        self.connection: ClientConnection = connect(
            # ?subscribe: no live message reaches it before its subscribe is handled.
            f"{ws_url}/?subscribe" if subscribe else ws_url,
            additional_headers=all_headers,
            compression=None,
            open_timeout=timeout,
            legacy=True,  # websockets >= 17.1: a connection kept outside a `with` block
        )
        self._thread = threading.Thread(target=self._read, daemon=True, name="ListeningClient")
        self._thread.start()
        self.send(control("ping"))
        self.wait_for_type("pong", timeout=timeout)
        if subscribe:
            self.subscribe(run_id, since, timeout=timeout)

    def _read(self) -> None:
        try:
            for frame in self.connection:
                with self._changed:
                    self.messages.append(json.loads(frame))
                    self._changed.notify_all()
        except ConnectionClosed:
            pass
        finally:
            self.close_code = self.connection.close_code  # 1006: closed without a close frame
            with self._changed:
                self.closed.set()
                self._changed.notify_all()

    def send(self, message: Message | str) -> None:
        """Send a message (a dict is JSON-encoded, a str goes as it is)."""
        self.connection.send(message if isinstance(message, str) else json.dumps(message))

    def subscribe(
        self,
        run_id: str | None,
        since: int | None = None,
        timeout: float = WAIT_TIMEOUT,
        epoch: str | None = None,
    ) -> list[Message]:
        """Subscribe and wait for the ``replay_end`` that confirms it; return all messages.

        ``epoch``, when given, is the relay database's identity the caller's seqs come from.
        """
        ends_before = len(self.of_type("replay_end"))
        extra = {} if epoch is None else {"epoch": epoch}
        self.send(control("subscribe", run_id=run_id, since=since, **extra))
        return self.wait_for(lambda msgs: len(_of_type(msgs, "replay_end")) > ends_before, timeout)

    def wait_for(
        self, predicate: Callable[[list[Message]], bool], timeout: float = WAIT_TIMEOUT
    ) -> list[Message]:
        """Wait until ``predicate(messages)`` is true; return a copy of the messages.

        Raises:
            AssertionError: not true within ``timeout`` seconds (or the connection closed
                first); the text lists the types received.
        """
        deadline = time.monotonic() + timeout
        with self._changed:
            while not predicate(self.messages):
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self.closed.is_set():
                    kinds = [m.get("type") for m in self.messages][-20:]
                    state = f"closed ({self.close_code})" if self.closed.is_set() else "open"
                    raise AssertionError(
                        f"condition not met within {timeout} s; connection {state}; "
                        f"{len(self.messages)} messages, last types {kinds}"
                    )
                self._changed.wait(remaining)
            return list(self.messages)

    def wait_for_type(
        self, message_type: str, count: int = 1, timeout: float = WAIT_TIMEOUT
    ) -> list[Message]:
        """Wait until ``count`` messages of ``message_type`` arrived; return those."""
        self.wait_for(lambda msgs: len(_of_type(msgs, message_type)) >= count, timeout)
        return self.of_type(message_type)

    def of_type(self, *message_types: str) -> list[Message]:
        """The messages received so far whose type is one of ``message_types``."""
        with self._changed:
            return _of_type(self.messages, *message_types)

    def data_messages(self) -> list[Message]:
        """The messages received so far that are not relay control messages."""
        with self._changed:
            return [m for m in self.messages if m.get("type") not in CONTROL]

    def wait_closed(self, timeout: float = WAIT_TIMEOUT) -> int | None:
        """Wait until the connection closes; return the close code (1006: no close frame)."""
        if not self.closed.wait(timeout):
            raise AssertionError(f"connection still open after {timeout} s")
        return self.close_code

    def close(self) -> None:
        """Close the connection and stop the thread."""
        self.connection.close()
        self._thread.join(WAIT_TIMEOUT)

    def __enter__(self) -> ListeningClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


CONTROL = set(CONTROL_TYPES)


def _of_type(messages: Iterable[Message], *message_types: str) -> list[Message]:
    return [m for m in messages if m.get("type") in message_types]


def control(message_type: str, **data: Any) -> Message:
    """A control message (subscribe, unsubscribe, ping) for the relay."""
    return {"type": message_type, "timestamp": "2026-01-01T00:00:00+00:00", "data": data}


def publish(
    ws_url: str,
    messages: Iterable[Message | str | bytes],
    *,
    token: str | None = None,
    timeout: float = WAIT_TIMEOUT,
) -> list[Message]:
    """Send ``messages`` on one new connection; return the relay's reply to each, in order.

    Dicts are JSON-encoded, str goes as a text frame and bytes as a binary frame. Each reply
    is the ``ack`` or ``rejected`` message the relay sent back (broadcasts from other
    publishers on the same connection are skipped).
    """
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    replies: list[Message] = []
    with connect(ws_url, additional_headers=headers, compression=None, open_timeout=timeout) as ws:
        frames = [m if isinstance(m, (str, bytes)) else json.dumps(m) for m in messages]
        for frame in frames:
            ws.send(frame)
        while len(replies) < len(frames):
            reply = json.loads(ws.recv(timeout))
            if reply.get("type") in ("ack", "rejected"):
                replies.append(reply)
    return replies


# --------------------------------------------------------------------------- TLS


def self_signed_certificate(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and localhost, and its key, as PEM files in
    ``folder``: (certificate file, key file). The certificate is its own CA."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fl-stream test relay")])
    now = datetime.datetime.now(datetime.UTC)
    public_key = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(public_key), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "relay.pem", folder / "relay.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path
