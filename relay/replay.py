"""History replay to one connection, paced by how fast it reads.

:func:`replay` sends the stored messages a subscribe asked for, a page at a time. A page
holds at most half the connection's buffer cap (the number of rows adapts to their size), and
the next page waits until the previous one has drained to the socket, so a replay never holds
more than about the cap for a connection however long the run is, and a dashboard that
reads slowly gets its history slowly instead of filling the relay's memory.

A connection that takes nothing for :data:`STALL_TIMEOUT` seconds while a page waits is
stalled (a frozen tab, a client that never reads): the replay stops and the hub evicts it
with close code 4008, as it does a live subscriber past the cap.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Callable

from websockets.asyncio.server import ServerConnection
from websockets.protocol import State

from relay.store import MessageStore

__all__ = ["STALL_TIMEOUT", "Outcome", "replay"]

# Seconds a connection may take nothing of a waiting page before it counts as stalled.
STALL_TIMEOUT = 5.0
# How often a waiting replay looks whether the connection took anything.
_PROGRESS_CHECK = 0.25
# Rows of the first page (later pages adapt to the rows' size), and of any page.
_FIRST_PAGE = 32
_MAX_PAGE = 4000


class Outcome(enum.Enum):
    """How a replay ended."""

    DONE = "done"  # everything sent; nothing awaited since the last (empty) page was read
    GONE = "gone"  # the connection closed, or the hub dropped it, meanwhile
    STALLED = "stalled"  # it took nothing for STALL_TIMEOUT seconds: evict it
    OVER_CAP = "over_cap"  # its buffer passed the cap (live messages came on top): evict it


async def replay(
    websocket: ServerConnection,
    store: MessageStore,
    *,
    run_id: str | None,
    since: int,
    until_id: int | None,
    cap: int,
    flush: Callable[[], None],
    still_served: Callable[[], bool],
    count: Callable[[int], None],
) -> Outcome:
    """Send ``websocket`` the stored messages of ``run_id`` (None: all runs) after ``since``.

    Args:
        until_id: leave out what was stored after this row (see ``MessageStore.replay_page``).
        cap: the connection's buffer cap in bytes.
        flush: commits and broadcasts what is pending; called before each page is read, so
            the pages and the live stream meet with no gap.
        still_served: False once the hub has dropped the connection.
        count: told how many messages each page sent.
    """
    budget = max(cap // 2, 1)
    after, limit = 0, _FIRST_PAGE
    while True:
        flush()
        page = store.replay_page(run_id, since, after, until_id, limit)
        if not page:
            return Outcome.DONE
        after = page[-1][0]
        if websocket.protocol.state is not State.OPEN:
            return Outcome.GONE
        size = 0
        for _, body in page:  # as websockets.broadcast() writes, without a task or a wait
            data = body.encode()
            websocket.protocol.send_text(data)
            size += len(data)
        websocket.send_data()
        count(len(page))
        if websocket.transport.get_write_buffer_size() > cap:
            return Outcome.OVER_CAP
        limit = min(max(budget * len(page) // max(size, 1), 1), _MAX_PAGE)
        if not await _drained(websocket):
            return Outcome.STALLED
        await asyncio.sleep(0)  # a fast reader drains at once: let everyone else run too
        if not still_served():
            return Outcome.GONE


async def _drained(websocket: ServerConnection) -> bool:
    """Wait until the connection's buffer is low again; False if it stalled."""
    transport = websocket.transport
    loop = asyncio.get_running_loop()
    smallest = transport.get_write_buffer_size()
    deadline = loop.time() + STALL_TIMEOUT
    while True:
        try:
            async with asyncio.timeout(_PROGRESS_CHECK):
                await websocket.drain()
            return True
        except TimeoutError:
            size = transport.get_write_buffer_size()
            if size < smallest:  # it is reading, slowly: give it time
                smallest, deadline = size, loop.time() + STALL_TIMEOUT
            elif loop.time() >= deadline:
                return False
        except Exception:  # the connection was lost while waiting: the caller sees it closed
            return True
