"""Start the relay, admit connections (origin, tokens), and shut it down cleanly.

:func:`run_relay` opens the store, loads the run summaries, listens (TLS with ``--certfile``),
prints one ready line, and serves until SIGINT or SIGTERM; then it stops accepting, commits,
closes every client with 1001 (going away) and closes the store, all within
:data:`SHUTDOWN_GRACE` seconds plus the abort of stragglers, and up to
:data:`ALERT_GRACE` seconds more while webhook alerts are still being delivered.
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import logging
import signal
import sqlite3
import ssl
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from relay.access import Access, Gate
from relay.alerts import Alerts, relay_url
from relay.clients import Role
from relay.config import RelayConfig
from relay.http import HttpRoutes
from relay.hub import Hub
from relay.responses import error_response
from relay.runs import RunIndex
from relay.store import MessageStore

__all__ = ["RelayStartError", "run_relay"]

logger = logging.getLogger("relay")

# Seconds the clients get to finish the closing handshake at shutdown before being aborted.
SHUTDOWN_GRACE = 1.5
# Seconds between copies of the SQLite write-ahead log into the database file.
CHECKPOINT_INTERVAL = 1.0
# Seconds a graceful shutdown waits for the alert deliveries still pending.
ALERT_GRACE = 3.0


class RelayStartError(RuntimeError):
    """The relay cannot start; the text says why and what to change."""


def open_store(config: RelayConfig) -> tuple[MessageStore, RunIndex]:
    """Open the database and load its run summaries, or raise :class:`RelayStartError`."""
    try:
        store = MessageStore(config.db)
    except (OSError, sqlite3.Error) as exc:
        raise RelayStartError(
            f"cannot open database {config.db}: {exc}; pass another --db (writable, on a disk "
            "with free space, and not used by another relay)"
        ) from None
    try:
        return store, RunIndex.load(store)
    except (sqlite3.Error, ValueError, KeyError) as exc:
        store.close()
        raise _unreadable(config, exc) from None


def load_alerts(config: RelayConfig, store: MessageStore, runs: RunIndex) -> Alerts:
    """The alerts of ``--alert-webhook``, aware of what the store already alerted."""
    alerts = Alerts(
        config.alert_webhooks,
        runs,
        stall_factor=config.stall_factor,
        stall_floor=config.stall_floor,
        timeout=config.alert_timeout,
        public_url=config.public_url,
    )
    if alerts.enabled:
        try:
            alerts.load(store)
        except (sqlite3.Error, ValueError, KeyError) as exc:
            raise _unreadable(config, exc) from None
    return alerts


def _unreadable(config: RelayConfig, exc: Exception) -> RelayStartError:
    return RelayStartError(
        f"cannot read database {config.db}: {exc}; it may be damaged: pass another --db"
    )


def tls_context(config: RelayConfig) -> ssl.SSLContext | None:
    """The server's TLS context from ``--certfile``/``--keyfile`` (None: plain ws and http)."""
    if config.certfile is None:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(config.certfile, config.keyfile)
    except (OSError, ssl.SSLError) as exc:
        raise RelayStartError(
            f"cannot load TLS certificate {config.certfile} with key {config.keyfile}: {exc}; "
            "pass a PEM certificate chain and its private key"
        ) from None
    return context


async def run_relay(config: RelayConfig) -> None:
    """Serve until SIGINT or SIGTERM, then shut down gracefully.

    Raises:
        RelayStartError: the database, the certificate or the address cannot be used.
    """
    tls = tls_context(config)
    store, runs = open_store(config)
    try:
        alerts = load_alerts(config, store, runs)
        gate = Gate(config.token, config.viewer_token, set(config.allowed_origins))
        hub = Hub(store, runs, gate, config.max_buffer_bytes)
        if alerts.enabled:
            hub.on_commit = alerts.observe
        routes = HttpRoutes(store, runs, gate, lambda: {**hub.summary(), **alerts.summary()})
        server = await _listen(config, tls, hub, routes, gate)
        port = server.sockets[0].getsockname()[1]
        web, ws = ("https", "wss") if tls else ("http", "ws")
        alerts.start(relay_url(web, config.host, port))  # before the loop admits anyone
        gate.allowed_origins |= {
            f"{web}://127.0.0.1:{port}",
            f"{web}://localhost:{port}",
            f"{web}://{config.host}:{port}",
        }
        print(
            f"fl-stream relay ready: {ws}://{config.host}:{port}  "
            f"dashboard {web}://{config.host}:{port}/  (db {config.db})",
            flush=True,
        )
        stopping = asyncio.Event()
        checkpoints = asyncio.create_task(_checkpoint_periodically(store, stopping))
        await _until_signal()
        logger.info("shutting down")
        stopping.set()
        alerts.stop_checks()
        await _shut_down(server, hub)
        await alerts.close(ALERT_GRACE)  # the alerts of the last messages too
        await checkpoints  # a checkpoint under way finishes before the store closes
    finally:
        store.close()


async def _listen(
    config: RelayConfig, tls: ssl.SSLContext | None, hub: Hub, routes: HttpRoutes, gate: Gate
) -> Server:
    async def process_request(connection: ServerConnection, request: Request) -> Response | None:
        try:
            urlsplit(request.path)
        except ValueError as exc:
            return error_response(http.HTTPStatus.BAD_REQUEST, f"malformed URL: {exc}")
        try:
            refusal = gate.refuse_token_in_url(request)
            if refusal is not None:
                return refusal
            if not _is_upgrade(request.headers):
                return await routes.respond(request)
            admitted = gate.handshake(request)
            return admitted if isinstance(admitted, Response) else None
        except Exception as exc:  # a last resort: one line in the log, a JSON 500
            logger.error("could not answer a request (%s: %s)", type(exc).__name__, exc)
            return error_response(
                http.HTTPStatus.INTERNAL_SERVER_ERROR,
                f"the relay could not answer this request ({type(exc).__name__})",
            )

    async def handler(websocket: ServerConnection) -> None:
        request = websocket.request
        assert request is not None  # the handler runs after the handshake
        admitted = gate.handshake(request)  # it let the handshake through: an Access
        access = admitted if isinstance(admitted, Access) else gate.anonymous
        query = parse_qs(urlsplit(request.path).query, keep_blank_values=True)
        await hub.handle(websocket, access, Role.from_query(query))

    try:
        return await serve(
            handler,
            config.host,
            config.port,
            process_request=process_request,
            ssl=tls,
            compression=None,  # costs 2-3x CPU per delivery for little gain on small JSON
            max_size=config.max_message_bytes,
            close_timeout=SHUTDOWN_GRACE,
        )
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise RelayStartError(
            f"cannot listen on {config.host}:{config.port}: {reason}; pick another --port or --host"
        ) from None


def _is_upgrade(headers: Headers) -> bool:
    return any(value.lower() == "websocket" for value in headers.get_all("Upgrade"))


async def _until_signal() -> None:
    loop = asyncio.get_running_loop()
    stop: asyncio.Future[None] = loop.create_future()

    def request_stop() -> None:
        if not stop.done():
            stop.set_result(None)

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, request_stop)
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
