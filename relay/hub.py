"""Connection handling: validate, number, store, then fan out; subscriptions and replay.

One :class:`Hub` serves every WebSocket connection of the relay. Everything runs on the event
loop's thread, so the hub needs no locks: a frame is handled synchronously from validation to
its insert in the store, and the batch of frames inserted during one loop iteration is
committed, broadcast and acknowledged together by :meth:`Hub.flush` (scheduled with
``call_soon``). Nothing is broadcast or acknowledged before the commit that makes it durable.

What a connection receives depends on its :class:`Role`, declared in its URL query: a
listener (no query, the original design) gets every live message until it subscribes; a
subscriber (``?subscribe``) and a publisher (``?publish``) get only the replies to their own
frames until they subscribe, and then what they subscribed to.

Fan-out writes one pre-encoded frame to every target with :func:`websockets.broadcast`
(synchronous, no task per client), then checks each target's write buffer: a subscriber past
the cap is evicted with close code :data:`SLOW_CONSUMER` so it never slows anyone else.
"""

from __future__ import annotations

import asyncio
import enum
import json
import logging
import sqlite3
from dataclasses import asdict, dataclass, field
from typing import Any

from websockets.asyncio.server import ServerConnection, broadcast
from websockets.exceptions import ConnectionClosed

from fl_stream.monitor.protocol import (
    CONTROL_TYPES,
    Message,
    MessageError,
    decode_message,
    encode_message,
    utc_timestamp,
)
from relay.store import DEFAULT_RUN, MessageStore

__all__ = ["SLOW_CONSUMER", "Hub", "Role", "Stats"]

logger = logging.getLogger("relay")

# Close code for a subscriber whose unsent data passed the buffer cap (4000-4999: private use).
SLOW_CONSUMER = 4008
# Stored messages written per step of a replay before waiting for the socket to drain.
REPLAY_PAGE = 500
# How long an evicted subscriber gets to take the close frame before its socket is aborted.
EVICT_CLOSE_TIMEOUT = 1.0


class Role(enum.Enum):
    """What a connection declared itself in its URL query, and so what it gets before subscribing.

    Whatever the role, a connection that subscribes receives what it subscribed to, and
    every connection receives the replies to its own frames (ack, rejected, pong,
    replay_end and replays).
    """

    LISTENER = "listener"  # no query (the original design): every live message of every run
    SUBSCRIBER = "subscriber"  # ?subscribe: nothing live until its first subscribe
    PUBLISHER = "publisher"  # ?publish: nothing live unless it subscribes

    @classmethod
    def from_query(cls, query: dict[str, list[str]]) -> Role:
        """The role a parsed URL query asks for; ``publish`` wins over ``subscribe``."""
        if "publish" in query:
            return cls.PUBLISHER
        if "subscribe" in query:
            return cls.SUBSCRIBER
        return cls.LISTENER


@dataclass
class Stats:
    """Counters served on ``/stats``."""

    connections: int = 0
    publishers: int = 0  # connections open now that declared themselves publishers
    connections_total: int = 0
    messages_in: int = 0
    messages_out: int = 0
    duplicates: int = 0
    rejected: int = 0
    evicted: int = 0


@dataclass
class _Client:
    """What the hub knows about one connection."""

    can_publish: bool
    role: Role
    # True while it is a listener that never subscribed: it receives every live message.
    takes_everything: bool
    # Subscription (a run id, None: all runs) -> the newest row id when it went live: every
    # later message it matches has been sent to this connection already.
    live_from: dict[str | None, int] = field(default_factory=dict)


@dataclass
class _Pending:
    """A reply waiting for the next commit, and the inserted message to broadcast first."""

    publisher: ServerConnection
    reply: bytes
    run_id: str | None = None
    frame: bytes | None = None  # None: nothing to broadcast (a resent duplicate, a refusal)


class Hub:
    """Routes every frame of every connection.

    Args:
        store: where accepted messages are numbered and kept.
        buffer_cap: the most bytes a connection may have waiting to be sent; past it the
            connection is closed with :data:`SLOW_CONSUMER`.
    """

    def __init__(self, store: MessageStore, buffer_cap: int) -> None:
        self.store = store
        self.buffer_cap = buffer_cap
        self.stats = Stats()
        self._clients: dict[ServerConnection, _Client] = {}
        self._connections: set[ServerConnection] = set()  # evicted ones too, until closed
        # Live targets: connections that take every run (never subscribed, or subscribed
        # to all runs), and the subscribers of each run.
        self._every_run: set[ServerConnection] = set()
        self._by_run: dict[str, set[ServerConnection]] = {}
        self._pending: list[_Pending] = []
        self._flush_handle: asyncio.Handle | None = None

    # ----------------------------------------------------------------------- connections

    async def handle(self, websocket: ServerConnection, can_publish: bool, role: Role) -> None:
        """Serve one connection until it closes.

        Args:
            can_publish: whether its messages are accepted (the token rule).
            role: what it receives before it subscribes (see :class:`Role`).
        """
        listener = role is Role.LISTENER
        self._clients[websocket] = _Client(can_publish, role, takes_everything=listener)
        self._connections.add(websocket)
        if listener:
            self._every_run.add(websocket)
        self.stats.connections += 1
        if role is Role.PUBLISHER:
            self.stats.publishers += 1
        self.stats.connections_total += 1
        try:
            async for frame in websocket:
                await self._on_frame(websocket, frame)
        except ConnectionClosed:
            pass
        finally:
            self._forget(websocket)
            self._connections.discard(websocket)

    def abort_all(self) -> None:
        """Drop every connection at once, without a closing handshake."""
        for websocket in self._connections:
            websocket.transport.abort()

    def _forget(self, websocket: ServerConnection) -> None:
        client = self._clients.pop(websocket, None)
        if client is None:
            return
        self.stats.connections -= 1
        if client.role is Role.PUBLISHER:
            self.stats.publishers -= 1
        self._every_run.discard(websocket)
        for run_id in [r for r, subscribers in self._by_run.items() if websocket in subscribers]:
            self._leave_run(websocket, run_id)

    async def _on_frame(self, websocket: ServerConnection, frame: str | bytes) -> None:
        client = self._clients.get(websocket)
        if client is None:  # evicted: its closing handshake is under way
            return
        if isinstance(frame, bytes):
            self._reject(websocket, "binary frames are not accepted; send JSON as text", None)
            return
        try:
            message = decode_message(frame)
        except MessageError as exc:
            self._reject(websocket, str(exc), _msg_id_of(frame))
            return
        kind = message["type"]
        if kind == "subscribe":
            await self._subscribe(websocket, client, message["data"])
        elif kind == "unsubscribe":
            self._unsubscribe(websocket, client, message["data"].get("run_id"))
        elif kind == "ping":
            self._reply(websocket, _control("pong", {}))
        elif kind in CONTROL_TYPES:
            reason = f"type: {kind!r} is sent by the relay, not to it"
            self._reject(websocket, reason, message.get("msg_id"))
        elif not client.can_publish:
            reason = (
                "unauthorised: this relay needs 'Authorization: Bearer <token>' to publish; "
                "this connection is read-only"
            )
            self._reject(websocket, reason, message.get("msg_id"))
        else:
            self._accept(websocket, message)

    # ----------------------------------------------------------------------- publishing

    def _accept(self, publisher: ServerConnection, message: Message) -> None:
        run_id = message.get("run_id", DEFAULT_RUN)
        msg_id = message.get("msg_id")
        seq = self.store.find_seq(run_id, msg_id) if msg_id is not None else None
        if seq is not None:
            self.stats.duplicates += 1
            self._queue(_Pending(publisher, _ack(run_id, seq, msg_id)))
            return
        try:
            run_id, seq, frame = self.store.append(message)
        except MessageError as exc:
            self._reject(publisher, str(exc), msg_id)
            return
        except sqlite3.Error as exc:
            logger.error("store failed: %s", exc)
            self._reject(publisher, f"relay could not store the message ({exc})", msg_id)
            return
        self.stats.messages_in += 1
        self._queue(_Pending(publisher, _ack(run_id, seq, msg_id), run_id, frame))

    def _queue(self, pending: _Pending) -> None:
        self._pending.append(pending)
        if self._flush_handle is None:
            self._flush_handle = asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        """Commit the pending messages, then broadcast them and acknowledge their publishers."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        if not self._pending:
            return
        batch, self._pending = self._pending, []
        try:
            self.store.commit()
        except sqlite3.Error as exc:
            logger.error("store commit failed, %d messages refused: %s", len(batch), exc)
            self.stats.rejected += len(batch)
            reason = f"relay could not store the message ({exc}); send it again"
            for pending in batch:
                self._send(pending.publisher, _control("rejected", {"reason": reason}))
            return
        for pending in batch:
            if pending.frame is not None:
                self._fan_out(pending.run_id, pending.frame, pending.publisher)
            self._send(pending.publisher, pending.reply)

    def _fan_out(self, run_id: str, frame: bytes, publisher: ServerConnection) -> None:
        targets = self._every_run
        if run_id in self._by_run:
            targets = targets | self._by_run[run_id]  # a connection in both gets it once
        targets = targets - {publisher}  # never echoed
        broadcast(targets, frame, text=True)
        self.stats.messages_out += len(targets)
        cap = self.buffer_cap
        for websocket in [t for t in targets if t.transport.get_write_buffer_size() > cap]:
            self._evict(websocket)

    def _reply(self, websocket: ServerConnection, frame: bytes) -> None:
        """Send a reply behind the acks still waiting for a commit: replies keep frame order."""
        if self._pending:
            self._queue(_Pending(websocket, frame))
        else:
            self._send(websocket, frame)

    def _send(self, websocket: ServerConnection, frame: bytes) -> None:
        broadcast((websocket,), frame, text=True)
        self._check_buffer(websocket)

    def _reject(self, websocket: ServerConnection, reason: str, msg_id: Any) -> None:
        self.stats.rejected += 1
        logger.warning("rejected a message from %s: %s", _peer(websocket), reason)
        data = {"reason": reason, "msg_id": msg_id if isinstance(msg_id, str) else None}
        self._reply(websocket, _control("rejected", data))

    # ----------------------------------------------------------------------- slow consumers

    def _check_buffer(self, websocket: ServerConnection) -> None:
        if websocket.transport.get_write_buffer_size() > self.buffer_cap:
            self._evict(websocket)

    def _evict(self, websocket: ServerConnection) -> None:
        if websocket not in self._clients:  # already evicted, closing
            return
        self._forget(websocket)
        self.stats.evicted += 1
        logger.warning(
            "evicted %s: more than %d bytes waiting to be sent (slow consumer)",
            _peer(websocket),
            self.buffer_cap,
        )
        asyncio.get_running_loop().create_task(_close_slow_consumer(websocket))

    # ----------------------------------------------------------------------- subscribers

    async def _subscribe(
        self, websocket: ServerConnection, client: _Client, data: dict[str, Any]
    ) -> None:
        run_id, since = data.get("run_id"), data.get("since")
        if client.takes_everything:  # from now on it receives only what it subscribed to
            client.takes_everything = False
            self._every_run.discard(websocket)
        if since is not None:
            await self._replay(websocket, client, run_id, since)
            if websocket not in self._clients:  # it went away or was evicted meanwhile
                return
        # No await since the last flush (and the replay's last, empty page): every message
        # up to last_seq was sent to it or is stored for it; every later one comes live.
        self.flush()
        client.live_from.setdefault(run_id, self.store.last_id())
        if run_id is None:
            self._every_run.add(websocket)
        else:
            self._by_run.setdefault(run_id, set()).add(websocket)
        last_seq = None if run_id is None else self.store.last_seq(run_id)
        self._send(websocket, _control("replay_end", {"run_id": run_id, "last_seq": last_seq}))

    async def _replay(
        self, websocket: ServerConnection, client: _Client, run_id: str | None, since: int
    ) -> None:
        """Send the stored messages after ``since``, a page at a time, until none are left.

        A connection already live on these messages (through an earlier subscription to all
        runs, or to this run) gets only those stored before it went live: it has the others.
        """
        keys = (None,) if run_id is None else (None, run_id)
        starts = [client.live_from[key] for key in keys if key in client.live_from]
        until_id = min(starts) if starts else None
        after = 0
        while True:
            self.flush()  # every inserted message is committed and broadcast: none pending
            page = self.store.replay_page(run_id, since, after, until_id, REPLAY_PAGE)
            if not page:
                return
            after = page[-1][0]
            for _, body in page[:-1]:
                broadcast((websocket,), body)
            self.stats.messages_out += len(page)
            try:
                await websocket.send(page[-1][1])  # waits until the socket drains
            except ConnectionClosed:
                return

    def _unsubscribe(
        self, websocket: ServerConnection, client: _Client, run_id: str | None
    ) -> None:
        client.live_from.pop(run_id, None)
        if run_id is None:  # also ends the receive-everything of a never-subscribed one
            client.takes_everything = False
            self._every_run.discard(websocket)
        else:
            self._leave_run(websocket, run_id)

    def _leave_run(self, websocket: ServerConnection, run_id: str) -> None:
        subscribers = self._by_run.get(run_id)
        if subscribers is not None:
            subscribers.discard(websocket)
            if not subscribers:  # finished runs do not cost the fan-out a lookup
                del self._by_run[run_id]

    def summary(self) -> dict[str, Any]:
        """Return the counters served on ``/stats``."""
        return asdict(self.stats)


async def _close_slow_consumer(websocket: ServerConnection) -> None:
    try:
        async with asyncio.timeout(EVICT_CLOSE_TIMEOUT):
            await websocket.close(SLOW_CONSUMER, "slow consumer")
    except TimeoutError:
        websocket.transport.abort()


def _control(kind: str, data: dict[str, Any]) -> bytes:
    return encode_message({"type": kind, "timestamp": utc_timestamp(), "data": data}).encode()


def _ack(run_id: str, seq: int, msg_id: str | None) -> bytes:
    return _control("ack", {"run_id": run_id, "seq": seq, "msg_id": msg_id})


def _msg_id_of(frame: str) -> str | None:
    """Best-effort msg_id of a refused frame, so its sender can match the rejection."""
    try:
        message = json.loads(frame)
    except ValueError:
        return None
    msg_id = message.get("msg_id") if isinstance(message, dict) else None
    return msg_id if isinstance(msg_id, str) else None


def _peer(websocket: ServerConnection) -> str:
    address = websocket.remote_address
    return f"{address[0]}:{address[1]}" if address else "a client"
