"""What the hub knows about each connection, and who gets which live message.

A connection declares a :class:`Role` in its URL query; :class:`Routing` keeps the live
targets: the connections that take every run, the subscribers of each run, and the
dashboards (``?subscribe`` connections that may read), which get ``run_summary`` notices.
"""

from __future__ import annotations

import asyncio
import enum
from dataclasses import dataclass, field

from websockets.asyncio.server import ServerConnection

from relay.access import Access

__all__ = ["SLOW_CONSUMER", "Client", "Role", "Routing", "close_slow_consumer", "peer"]

# Close code for a subscriber whose unsent data passed the buffer cap (4000-4999: private use).
SLOW_CONSUMER = 4008
# How long an evicted subscriber gets to take the close frame before its socket is aborted.
EVICT_CLOSE_TIMEOUT = 1.0


class Role(enum.Enum):
    """What a connection declared itself in its URL query, and so what it gets before subscribing.

    Whatever the role, a connection that subscribes receives what it subscribed to, and
    every connection receives the replies to its own frames (ack, rejected, pong,
    authenticated, replay_end and replays).
    """

    LISTENER = "listener"  # no query (the original design): every live message of every run
    SUBSCRIBER = "subscriber"  # ?subscribe: run_summary notices; no run message until it subscribes
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
class Client:
    """One connection: what it may do, what it declared, what it subscribed to."""

    access: Access
    role: Role
    # True while it is a listener that never subscribed: it receives every live message
    # (once it may read).
    takes_everything: bool
    # Subscription (a run id, None: all runs) -> the newest row id when it went live: every
    # later message it matches has been sent to this connection already.
    live_from: dict[str | None, int] = field(default_factory=dict)


class Routing:
    """The live targets: who receives a run's messages, and who gets ``run_summary``."""

    def __init__(self) -> None:
        # Connections that take every run (never subscribed, or subscribed to all runs),
        # and the subscribers of each run.
        self.every_run: set[ServerConnection] = set()
        self.by_run: dict[str, set[ServerConnection]] = {}
        self.dashboards: set[ServerConnection] = set()

    def admit(self, websocket: ServerConnection, client: Client) -> None:
        """Start what ``client`` receives without subscribing (once it may read)."""
        if not client.access.can_read:
            return
        if client.takes_everything:
            self.every_run.add(websocket)
        if client.role is Role.SUBSCRIBER:
            self.dashboards.add(websocket)

    def targets(self, run_id: str, publisher: ServerConnection) -> set[ServerConnection]:
        """Who receives a live message of ``run_id`` from ``publisher`` (never itself)."""
        targets = self.every_run
        if run_id in self.by_run:
            targets = targets | self.by_run[run_id]  # a connection in both gets it once
        return targets - {publisher}

    def subscribe(self, websocket: ServerConnection, run_id: str | None) -> None:
        """Send ``websocket`` the live messages of ``run_id`` (None: of every run)."""
        if run_id is None:
            self.every_run.add(websocket)
        else:
            self.by_run.setdefault(run_id, set()).add(websocket)

    def stop_everything(self, websocket: ServerConnection, client: Client) -> None:
        """End a never-subscribed listener's receive-everything default."""
        if client.takes_everything:
            client.takes_everything = False
            self.every_run.discard(websocket)

    def unsubscribe(self, websocket: ServerConnection, client: Client, run_id: str | None) -> None:
        """Remove one subscription (None: all runs, and the receive-everything default)."""
        client.live_from.pop(run_id, None)
        if run_id is None:
            client.takes_everything = False
            self.every_run.discard(websocket)
        else:
            self._leave_run(websocket, run_id)

    def forget(self, websocket: ServerConnection) -> None:
        """Stop sending ``websocket`` anything live."""
        self.every_run.discard(websocket)
        self.dashboards.discard(websocket)
        for run_id in [r for r, subscribers in self.by_run.items() if websocket in subscribers]:
            self._leave_run(websocket, run_id)

    def _leave_run(self, websocket: ServerConnection, run_id: str) -> None:
        subscribers = self.by_run.get(run_id)
        if subscribers is not None:
            subscribers.discard(websocket)
            if not subscribers:  # finished runs do not cost the fan-out a lookup
                del self.by_run[run_id]


async def close_slow_consumer(websocket: ServerConnection) -> None:
    """Close an evicted connection with :data:`SLOW_CONSUMER`; abort it if it takes too long."""
    try:
        async with asyncio.timeout(EVICT_CLOSE_TIMEOUT):
            await websocket.close(SLOW_CONSUMER, "slow consumer")
    except TimeoutError:
        websocket.transport.abort()


def peer(websocket: ServerConnection) -> str:
    """``host:port`` of a connection, for log lines."""
    address = websocket.remote_address
    return f"{address[0]}:{address[1]}" if address else "a client"
