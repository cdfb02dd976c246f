"""Connection handling: validate, number, store, then fan out; subscriptions and replay.

One :class:`Hub` serves every WebSocket connection of the relay. Everything runs on the event
loop's thread, so the hub needs no locks: a frame is handled synchronously from validation to
its insert in the store, and the batch of frames inserted during one loop iteration is
committed, broadcast and acknowledged together by :meth:`Hub.flush` (scheduled with
``call_soon``). Nothing is broadcast or acknowledged before the commit that makes it durable;
when a write or the commit fails, only the messages it lost are refused (each by its
``msg_id``, with ``retry: true``), and every other reply of the batch goes out unchanged.

What a connection receives depends on its role (``relay/clients.py``) and on what it may
read (``relay/access.py``). Fan-out writes one pre-encoded frame to every target with
:func:`websockets.broadcast` (synchronous, no task per client), then checks each target's
write buffer: a connection past the cap is evicted with close code :data:`SLOW_CONSUMER` so
it never slows anyone else. Replays are paced by the reader (``relay/replay.py``) under the
same cap.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from websockets.asyncio.server import ServerConnection, broadcast
from websockets.exceptions import ConnectionClosed

from fl_stream.monitor.checks import is_text
from fl_stream.monitor.protocol import (
    CLIENT_CONTROL_TYPES,
    CONTROL_TYPES,
    Message,
    MessageError,
    decode_message,
)
from relay.access import Access, Gate
from relay.clients import SLOW_CONSUMER, Client, Role, Routing, close_slow_consumer, peer
from relay.replay import STALL_TIMEOUT, Outcome, replay
from relay.replies import ack, control, msg_id_of, rejected, store_failure
from relay.runs import RunIndex
from relay.store import DEFAULT_RUN, BatchLost, MessageStore

__all__ = ["SLOW_CONSUMER", "Hub", "Stats"]

logger = logging.getLogger("relay")


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
class _Pending:
    """A reply waiting for the next commit, and the inserted message to broadcast first."""

    publisher: ServerConnection
    reply: bytes
    msg_id: str | None = None
    stored: bool = False  # the reply holds only if this batch's commit succeeds
    message: Message | None = None  # the inserted message (None: a reply only)
    frame: bytes | None = None  # its encoding, to broadcast


class Hub:
    """Routes every frame of every connection.

    Args:
        store: where accepted messages are numbered and kept.
        runs: the run summaries, updated with every committed message.
        gate: checks the tokens of ``auth`` messages.
        buffer_cap: the most bytes a connection may have waiting to be sent; past it the
            connection is closed with :data:`SLOW_CONSUMER`.
    """

    def __init__(self, store: MessageStore, runs: RunIndex, gate: Gate, buffer_cap: int) -> None:
        self.store = store
        self.runs = runs
        self.gate = gate
        self.buffer_cap = buffer_cap
        self.stats = Stats()
        self._clients: dict[ServerConnection, Client] = {}
        self._connections: set[ServerConnection] = set()  # evicted ones too, until closed
        self._routing = Routing()
        self._pending: list[_Pending] = []
        self._closing: set[asyncio.Task[None]] = set()  # evicted connections being closed
        self._flush_handle: asyncio.Handle | None = None
        self.on_commit: Callable[[Message], None] | None = None  # sees each committed message

    # ----------------------------------------------------------------------- connections

    async def handle(self, websocket: ServerConnection, access: Access, role: Role) -> None:
        """Serve one connection until it closes.

        Args:
            access: what its handshake allows (an ``auth`` message may allow more).
            role: what it receives before it subscribes (see :class:`relay.clients.Role`).
        """
        client = Client(access, role, takes_everything=role is Role.LISTENER)
        self._clients[websocket] = client
        self._connections.add(websocket)
        self._routing.admit(websocket, client)
        self.stats.connections += 1
        self.stats.publishers += role is Role.PUBLISHER
        self.stats.connections_total += 1
        try:
            async for frame in websocket:
                try:
                    await self._on_frame(websocket, frame)
                except Exception as exc:  # a last resort: one bad frame never costs the link
                    reason = f"the relay could not handle this message ({type(exc).__name__})"
                    logger.error("%s from %s: %s", reason, peer(websocket), exc)
                    self._reject(websocket, reason, None, log=False)
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
        self.stats.publishers -= client.role is Role.PUBLISHER
        self._routing.forget(websocket)

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
            self._reject(websocket, str(exc), msg_id_of(frame))
            return
        kind, data, msg_id = message["type"], message["data"], message.get("msg_id")
        if kind == "ping":
            self._reply(websocket, control("pong", {}))
        elif kind == "auth":
            self._authenticate(websocket, client, data["token"])
        elif kind in CONTROL_TYPES and kind not in CLIENT_CONTROL_TYPES:
            self._reject(websocket, f"type: {kind!r} is sent by the relay, not to it", msg_id)
        elif kind in ("subscribe", "unsubscribe") and not client.access.can_read:
            reason = (
                "unauthorised: this relay needs a viewer token to read; send "
                "'Authorization: Bearer <token>' or an auth message first"
            )
            self._reject(websocket, reason, msg_id)
        elif kind == "subscribe":
            await self._subscribe(websocket, client, data)
        elif kind == "unsubscribe":
            self._routing.unsubscribe(websocket, client, data.get("run_id"))
        elif not client.access.can_publish:
            reason = (
                "unauthorised: this relay needs 'Authorization: Bearer <token>' to publish; "
                "this connection is read-only"
            )
            self._reject(websocket, reason, msg_id)
        else:
            self._accept(websocket, message)

    def _authenticate(self, websocket: ServerConnection, client: Client, token: str) -> None:
        access = self.gate.for_token(token)
        if access is None:
            self._reject(websocket, "unauthorised: invalid token", None)
            return
        could_read = client.access.can_read
        client.access = Access(
            can_read=could_read or access.can_read,
            can_publish=client.access.can_publish or access.can_publish,
        )
        if not could_read and client.access.can_read:
            self._routing.admit(websocket, client)
        reply = {"can_publish": client.access.can_publish}
        self._reply(websocket, control("authenticated", reply))

    # ----------------------------------------------------------------------- publishing

    def _accept(self, publisher: ServerConnection, message: Message) -> None:
        run_id = message.get("run_id", DEFAULT_RUN)
        msg_id = message.get("msg_id")
        try:
            found = self.store.find_seq(run_id, msg_id) if msg_id is not None else None
            if found is not None:
                seq, committed = found
                self.stats.duplicates += 1
                reply = ack(run_id, seq, msg_id)
                self._queue(_Pending(publisher, reply, msg_id, stored=not committed))
                return
            run_id, seq, frame = self.store.append(message)
        except MessageError as exc:
            self._reject(publisher, str(exc), msg_id)
            return
        except sqlite3.Error as exc:
            reason = store_failure(exc)
            if isinstance(exc, BatchLost):  # the messages inserted before it are gone too
                self._refuse_stored(self._pending, reason)
            logger.error("store failed: %s", exc)
            self._reject(publisher, reason, msg_id, retry=True, log=False)
            return
        pending = _Pending(publisher, ack(run_id, seq, msg_id), msg_id, True, message, frame)
        self._queue(pending)

    def _queue(self, pending: _Pending) -> None:
        self._pending.append(pending)
        if self._flush_handle is None:
            self._flush_handle = asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        """Commit the pending messages, then broadcast them and send every pending reply."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        if not self._pending:
            return
        batch, self._pending = self._pending, []
        try:
            self.store.commit()
        except sqlite3.Error as exc:
            logger.error("store commit failed: %s", exc)
            self._refuse_stored(batch, store_failure(exc))
        changed: dict[str, None] = {}  # runs that appeared or changed status, in order
        for pending in batch:
            if pending.message is not None and pending.frame is not None:
                run_id = pending.message["run_id"]
                self.stats.messages_in += 1
                self._fan_out(run_id, pending.frame, pending.publisher)
                if self._observe(pending.message):
                    changed[run_id] = None
            self._send(pending.publisher, pending.reply)
        for run_id in changed:
            self._announce(run_id)

    def _observe(self, message: Message) -> bool:
        """Update the run summaries and alerts; a bug there must not cost the batch its acks."""
        try:
            changed = self.runs.record(message)
            if self.on_commit is not None:  # alerts (relay/alerts.py)
                self.on_commit(message)
        except Exception:
            logger.exception("run summary or alert update failed for a stored message")
            return False
        return changed

    def _refuse_stored(self, batch: list[_Pending], reason: str) -> None:
        """Turn the replies that needed the lost transaction into refusals (``retry``)."""
        for pending in batch:
            if pending.stored:
                pending.reply = rejected(reason, pending.msg_id, retry=True)
                pending.stored, pending.message, pending.frame = False, None, None
                self.stats.rejected += 1

    def _fan_out(self, run_id: str, frame: bytes, publisher: ServerConnection) -> None:
        targets = self._routing.targets(run_id, publisher)
        broadcast(targets, frame, text=True)
        self.stats.messages_out += len(targets)
        self._check_buffers(targets)

    def _announce(self, run_id: str) -> None:
        """Tell every dashboard that a run appeared or changed status."""
        summary = self.runs.summary(run_id)
        if summary is not None and self._routing.dashboards:
            dashboards = set(self._routing.dashboards)
            broadcast(dashboards, control("run_summary", summary), text=True)
            self._check_buffers(dashboards)

    def _reply(self, websocket: ServerConnection, frame: bytes) -> None:
        """Send a reply behind the acks still waiting for a commit: replies keep frame order."""
        if self._pending:
            self._queue(_Pending(websocket, frame))
        else:
            self._send(websocket, frame)

    def _send(self, websocket: ServerConnection, frame: bytes) -> None:
        broadcast((websocket,), frame, text=True)
        self._check_buffers((websocket,))

    def _reject(
        self,
        websocket: ServerConnection,
        reason: str,
        msg_id: Any,
        *,
        retry: bool = False,
        log: bool = True,
    ) -> None:
        self.stats.rejected += 1
        if log:
            logger.warning("rejected a message from %s: %s", peer(websocket), reason)
        self._reply(websocket, rejected(reason, msg_id if is_text(msg_id) else None, retry))

    # ----------------------------------------------------------------------- slow consumers

    def _check_buffers(self, targets: Any) -> None:
        cap = self.buffer_cap
        for websocket in [t for t in targets if t.transport.get_write_buffer_size() > cap]:
            self._evict(websocket, f"more than {cap} bytes waiting to be sent")

    def _evict(self, websocket: ServerConnection, why: str) -> None:
        if websocket not in self._clients:  # already evicted, closing
            return
        self._forget(websocket)
        self.stats.evicted += 1
        logger.warning("evicted %s: %s (slow consumer)", peer(websocket), why)
        closing = asyncio.get_running_loop().create_task(close_slow_consumer(websocket))
        self._closing.add(closing)  # the loop keeps only a weak reference to a task
        closing.add_done_callback(self._closing.discard)

    # ----------------------------------------------------------------------- subscribers

    async def _subscribe(
        self, websocket: ServerConnection, client: Client, data: dict[str, Any]
    ) -> None:
        run_id, since, epoch = data.get("run_id"), data.get("since"), data.get("epoch")
        # Seqs from another database mean nothing here: such a client gets the run afresh.
        recovered = None if epoch is None else epoch == self.store.epoch
        if recovered is False and since is not None:
            since = 0
        self._routing.stop_everything(websocket, client)
        if since is not None:
            outcome = await self._replay(websocket, client, run_id, since)
            if outcome is not Outcome.DONE or websocket not in self._clients:
                return
        # No await since the last flush (and the replay's last, empty page): every message
        # up to last_seq was sent to it or is stored for it; every later one comes live.
        self.flush()
        client.live_from.setdefault(run_id, self.store.last_id())
        self._routing.subscribe(websocket, run_id)
        end = {
            "run_id": run_id,
            "last_seq": None if run_id is None else self.store.last_seq(run_id),
            "epoch": self.store.epoch,
            "recovered": recovered,
        }
        self._send(websocket, control("replay_end", end))

    async def _replay(
        self, websocket: ServerConnection, client: Client, run_id: str | None, since: int
    ) -> Outcome:
        """Send the stored messages after ``since``, paced by the reader.

        A connection already live on these messages (through an earlier subscription to all
        runs, or to this run) gets only those stored before it went live: it has the others.
        """
        keys = (None,) if run_id is None else (None, run_id)
        starts = [client.live_from[key] for key in keys if key in client.live_from]
        outcome = await replay(
            websocket,
            self.store,
            run_id=run_id,
            since=since,
            until_id=min(starts) if starts else None,
            cap=self.buffer_cap,
            flush=self.flush,
            still_served=lambda: websocket in self._clients,
            count=self._count_out,
        )
        if outcome is Outcome.STALLED:
            self._evict(websocket, f"took nothing for {STALL_TIMEOUT:g} s during a replay")
        elif outcome is Outcome.OVER_CAP:
            self._evict(websocket, f"more than {self.buffer_cap} bytes waiting to be sent")
        return outcome

    def _count_out(self, sent: int) -> None:
        self.stats.messages_out += sent

    def summary(self) -> dict[str, Any]:
        """Return the counters served on ``/stats``."""
        return asdict(self.stats)
