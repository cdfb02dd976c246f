"""Start the relay, admit connections (origin, token), and shut it down cleanly.

:func:`run_relay` opens the store, listens, prints one ready line, and serves until SIGINT or
SIGTERM; then it stops accepting, commits, closes every client with 1001 (going away) and
closes the store, all within :data:`SHUTDOWN_GRACE` seconds plus the abort of stragglers.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import http
import logging
import signal
import sqlite3
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers, MultipleValuesError
from websockets.http11 import Request, Response

from relay.config import RelayConfig
from relay.http import HttpRoutes, error_response
from relay.hub import Hub, Role
from relay.store import MessageStore

__all__ = ["RelayStartError", "run_relay"]

logger = logging.getLogger("relay")

# Seconds the clients get to finish the closing handshake at shutdown before being aborted.
SHUTDOWN_GRACE = 1.5
# Seconds between copies of the SQLite write-ahead log into the database file.
CHECKPOINT_INTERVAL = 1.0


class RelayStartError(RuntimeError):
    """The relay cannot start; the text says why and what to change."""


class Gate:
    """Decides, at the WebSocket handshake, who may connect and who may publish.

    Args:
        token: the publisher token, or None when anyone may publish.
        allowed_origins: browser origins allowed to connect; a client that sends no
            ``Origin`` (not a browser) is always allowed.
    """

    def __init__(self, token: str | None, allowed_origins: set[str]) -> None:
        self._token = token.encode() if token else None
        self.allowed_origins = allowed_origins

    def refusal(self, headers: Headers) -> Response | None:
        """Return the HTTP error that refuses this handshake, or None to let it through."""
        try:
            origin = headers.get("Origin")
        except MultipleValuesError:
            return error_response(http.HTTPStatus.BAD_REQUEST, "more than one Origin header")
        if origin is not None and origin not in self.allowed_origins:
            return error_response(
                http.HTTPStatus.FORBIDDEN,
                f"origin {origin} is not allowed; start the relay with --allowed-origin {origin}",
            )
        if self._token is not None and "Authorization" in headers and not self.may_publish(headers):
            return error_response(http.HTTPStatus.UNAUTHORIZED, "invalid publisher token")
        return None

    def may_publish(self, headers: Headers) -> bool:
        """True when the relay has no token or the request presents it."""
        if self._token is None:
            return True
        scheme, _, presented = headers.get("Authorization", "").partition(" ")
        # compare_digest: the time taken does not reveal how much of the token matched.
        return scheme.lower() == "bearer" and hmac.compare_digest(
            presented.strip().encode(), self._token
        )


def open_store(config: RelayConfig) -> MessageStore:
    """Open the configured database, or raise :class:`RelayStartError` saying why not."""
    try:
        return MessageStore(config.db)
    except (OSError, sqlite3.Error) as exc:
        raise RelayStartError(
            f"cannot open database {config.db}: {exc}; "
            "pass another --db (writable, and not used by another relay)"
        ) from None


async def run_relay(config: RelayConfig) -> None:
    """Serve until SIGINT or SIGTERM, then shut down gracefully.

    Raises:
        RelayStartError: the database cannot be opened or the address cannot be bound.
    """
    store = open_store(config)
    try:
        hub = Hub(store, config.max_buffer_bytes)
        routes = HttpRoutes(store, hub.summary)
        gate = Gate(config.token, set(config.allowed_origins))
        server = await _listen(config, hub, routes, gate)
        port = server.sockets[0].getsockname()[1]
        gate.allowed_origins |= {
            f"http://127.0.0.1:{port}",
            f"http://localhost:{port}",
            f"http://{config.host}:{port}",
        }
        print(
            f"fl-stream relay ready: ws://{config.host}:{port}  "
            f"dashboard http://{config.host}:{port}/  (db {config.db})",
            flush=True,
        )
        stopping = asyncio.Event()
        checkpoints = asyncio.create_task(_checkpoint_periodically(store, stopping))
        await _until_signal()
        logger.info("shutting down")
        stopping.set()
        await _shut_down(server, hub)
        await checkpoints  # a checkpoint under way finishes before the store closes
    finally:
        store.close()


async def _listen(config: RelayConfig, hub: Hub, routes: HttpRoutes, gate: Gate) -> Server:
    def process_request(connection: ServerConnection, request: Request) -> Response | None:
        if request.headers.get("Upgrade", "").lower() != "websocket":
            return routes.respond(request)
        return gate.refusal(request.headers)

    async def handler(websocket: ServerConnection) -> None:
        request = websocket.request
        assert request is not None  # the handler runs after the handshake
        query = parse_qs(urlsplit(request.path).query, keep_blank_values=True)
        await hub.handle(websocket, gate.may_publish(request.headers), Role.from_query(query))

    try:
        return await serve(
            handler,
            config.host,
            config.port,
            process_request=process_request,
            compression=None,  # costs 2-3x CPU per delivery for little gain on small JSON
            max_size=config.max_message_bytes,
            close_timeout=SHUTDOWN_GRACE,
        )
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise RelayStartError(
            f"cannot listen on {config.host}:{config.port}: {reason}; pick another --port or --host"
        ) from None


async def _until_signal() -> None:
    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))
    await stop


async def _checkpoint_periodically(store: MessageStore, stopping: asyncio.Event) -> None:
    while not stopping.is_set():
        try:
            await asyncio.wait_for(stopping.wait(), CHECKPOINT_INTERVAL)
        except TimeoutError:
            pass
        try:
            await asyncio.to_thread(store.checkpoint)
        except sqlite3.Error as exc:  # the next one retries; commits are unaffected
            logger.warning("WAL checkpoint failed: %s", exc)


async def _shut_down(server: Server, hub: Hub) -> None:
    hub.flush()  # what was accepted is committed, broadcast and acknowledged first
    server.close()  # stop accepting; close every client with 1001 (going away)
    try:
        await asyncio.wait_for(server.wait_closed(), SHUTDOWN_GRACE)
    except TimeoutError:  # e.g. a stalled client never takes its close frame
        hub.abort_all()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(server.wait_closed(), SHUTDOWN_GRACE)
    hub.flush()
