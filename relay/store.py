"""The relay's message store: every accepted message, numbered per run, in SQLite (WAL).

The store numbers messages (``seq`` 1, 2, 3, ... per run, continuing after a restart), keeps
the encoded frame exactly as it was broadcast, and answers the reads the relay needs: replay
after a ``since``, duplicate look-ups by ``(run_id, msg_id)``, a run's messages for the HTTP
API, and the rows the in-memory run summaries (``relay/runs.py``) are loaded from at start.

Each database has an identity, its ``epoch``: a random id made when the database is created
and kept in it. A client that remembers seqs from another database (the relay restarted on
another or an emptied file) sees another epoch and knows its seqs mean nothing here.

Writes are grouped: :meth:`MessageStore.append` inserts inside an open transaction and
:meth:`MessageStore.commit` ends it. The relay commits once per batch, before it broadcasts or
acknowledges anything in that batch (see ``relay/hub.py``).
"""

from __future__ import annotations

import fcntl
import secrets
import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from fl_stream.monitor import protocol
from fl_stream.monitor.protocol import DEFAULT_RUN, EncodingError, Message, encode_message

# DEFAULT_RUN (messages without run_id are filed there) is the protocol's, re-exported.
__all__ = ["DEFAULT_RUN", "BatchLost", "MessageStore", "RunPage", "RunRead"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id        INTEGER PRIMARY KEY,
    run_id    TEXT    NOT NULL,
    seq       INTEGER NOT NULL,
    msg_id    TEXT,
    type      TEXT    NOT NULL,
    timestamp TEXT    NOT NULL,
    body      TEXT    NOT NULL,
    UNIQUE (run_id, seq)
);
CREATE UNIQUE INDEX IF NOT EXISTS messages_msg_id
    ON messages (run_id, msg_id) WHERE msg_id IS NOT NULL;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


@dataclass(frozen=True)
class RunRead:
    """Which of a run's messages to read: ``since < seq <= until``, by type, up to a size.

    Attributes:
        since: only messages after this seq.
        until: only messages up to this seq (None: up to the newest).
        types: only messages of these types (empty: every type).
        exclude: no messages of these types.
        max_bytes: stop before the bodies pass this many characters (at least one message
            is read); None: no limit.
    """

    since: int = 0
    until: int | None = None
    types: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    max_bytes: int | None = None


@dataclass(frozen=True)
class RunPage:
    """What one :class:`RunRead` found.

    Attributes:
        bodies: the messages' stored frames, in seq order.
        through_seq: every message the read asked for with ``since < seq <= through_seq``
            is in ``bodies``: a reader that asked for some types only knows that the run has
            no other message of those types up to there.
        more: ``max_bytes`` stopped the read: read again from ``through_seq``.
    """

    bodies: list[str]
    through_seq: int
    more: bool


class BatchLost(sqlite3.Error):
    """A write failed and SQLite rolled back the whole open transaction (e.g. a full disk).

    Every message appended since the last commit is gone, numbering included.
    """


class MessageStore:
    """SQLite storage of the relay's messages.

    Args:
        path: the database file; its folder is created when missing.

    Attributes:
        epoch: this database's identity (random, made with the database, kept in it).

    Raises:
        OSError: the folder cannot be created.
        sqlite3.Error: the file cannot be opened or written.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = _lock_exclusively(self.path.with_name(self.path.name + ".lock"))
        # isolation_level=None: transactions are opened and closed here, explicitly.
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode: a commit survives a crash of the relay; only a power loss
            # may lose the last transactions, and the database stays consistent either way.
            self._db.execute("PRAGMA synchronous=NORMAL")
            # Checkpoints (which fsync) run in a worker thread, see checkpoint(), so the
            # event loop that commits never waits for the disk.
            self._db.execute("PRAGMA wal_autocheckpoint=0")
            self._db.executescript(_SCHEMA)
            self._db.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('epoch', ?)",
                (secrets.token_hex(8),),
            )
            self.epoch: str = self._db.execute(
                "SELECT value FROM meta WHERE key = 'epoch'"
            ).fetchone()[0]
        except sqlite3.Error:
            self._db.close()
            self._lock.close()
            raise
        self._checkpointer: sqlite3.Connection | None = None
        self._readers: list[sqlite3.Connection] = []
        self._reader = threading.local()
        self._readers_lock = threading.Lock()
        self._in_transaction = False
        self._uncommitted: set[tuple[str, str]] = set()  # (run_id, msg_id) appended, not committed
        self._last_seq: dict[str, int] = {}
        self._load_last_seq()

    def _load_last_seq(self) -> None:
        rows = self._db.execute("SELECT run_id, MAX(seq) FROM messages GROUP BY run_id")
        self._last_seq = dict(rows.fetchall())

    # ----------------------------------------------------------------------- writes

    def append(self, message: Message) -> tuple[str, int, bytes]:
        """Number ``message`` within its run, store it and return ``(run_id, seq, frame)``.

        Sets ``run_id`` (:data:`DEFAULT_RUN` when absent) and ``seq`` on ``message``; the
        frame is its UTF-8 JSON encoding, the exact bytes to broadcast. The row is visible
        to this store's reads at once and durable after :meth:`commit`.

        Raises:
            fl_stream.monitor.protocol.EncodingError: not encodable (e.g. a NaN float
                in custom data).
            BatchLost: the write failed and took the open transaction with it.
            sqlite3.Error: the database refused this write only.
        """
        run_id = message.setdefault("run_id", DEFAULT_RUN)
        seq = self._last_seq.get(run_id, 0) + 1
        message["seq"] = seq
        try:
            body = encode_message(message)
        except ValueError as exc:
            del message["seq"]
            raise _encoding_error(exc) from None
        msg_id = message.get("msg_id")
        try:
            if not self._in_transaction:
                self._db.execute("BEGIN")
                self._in_transaction = True
            self._db.execute(
                "INSERT INTO messages (run_id, seq, msg_id, type, timestamp, body)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (run_id, seq, msg_id, message["type"], message["timestamp"], body),
            )
        except sqlite3.Error as exc:
            del message["seq"]
            if not self._db.in_transaction:  # SQLite rolled the whole transaction back
                self._forget_transaction()
                raise BatchLost(str(exc)) from None
            raise
        self._last_seq[run_id] = seq
        if msg_id is not None:
            self._uncommitted.add((run_id, msg_id))
        return run_id, seq, body.encode()

    def commit(self) -> None:
        """Make every appended message durable.

        Raises:
            sqlite3.Error: the commit failed; the open transaction is rolled back, so the
                messages appended since the last commit are gone (numbering included).
        """
        if not self._in_transaction:
            return
        try:
            self._db.execute("COMMIT")
        except sqlite3.Error:
            self.rollback()
            raise
        self._in_transaction = False
        self._uncommitted.clear()

    def rollback(self) -> None:
        """Drop the messages appended since the last commit and their numbers."""
        if self._db.in_transaction:
            self._db.execute("ROLLBACK")
        self._forget_transaction()

    def _forget_transaction(self) -> None:
        self._in_transaction = False
        self._uncommitted.clear()
        self._load_last_seq()

    def checkpoint(self) -> None:
        """Copy the write-ahead log into the database file.

        Meant for a worker thread (it has its own connection); PASSIVE: it never blocks the
        writer, and whatever it cannot copy now the next call will.
        """
        if self._checkpointer is None:
            self._checkpointer = sqlite3.connect(self.path, check_same_thread=False)
        self._checkpointer.execute("PRAGMA wal_checkpoint(PASSIVE)")

    def close(self) -> None:
        """Commit what is pending and close the database (no checkpoint may be running)."""
        try:
            self.commit()
        finally:
            for reader in [self._checkpointer, *self._readers]:
                if reader is not None:
                    reader.close()
            self._db.close()
            self._lock.close()

    # ----------------------------------------------------------------------- reads

    def find_seq(self, run_id: str, msg_id: str) -> tuple[int, bool] | None:
        """Return ``(seq, committed)`` for ``(run_id, msg_id)``, or None if it is new.

        ``committed`` is False while the message waits for the next :meth:`commit`.
        """
        row = self._db.execute(
            "SELECT seq FROM messages WHERE run_id = ? AND msg_id = ?", (run_id, msg_id)
        ).fetchone()
        return (row[0], (run_id, msg_id) not in self._uncommitted) if row else None

    def last_seq(self, run_id: str) -> int:
        """Return the highest seq of ``run_id`` (0 for a run with no messages)."""
        return self._last_seq.get(run_id, 0)

    def replay_page(
        self, run_id: str | None, since: int, after: int, until_id: int | None, limit: int
    ) -> list[tuple[int, str]]:
        """Return up to ``limit`` stored messages with ``seq > since`` as ``(cursor, body)``.

        For one run they come in seq order and the cursor is the seq; for all runs
        (``run_id`` None) they come in storage order and the cursor is the row id. Pass the
        last cursor back as ``after`` (0 at first) to read the next page. ``until_id`` (from
        :meth:`last_id`; None: no limit) leaves out the messages stored after that row.
        """
        end = until_id if until_id is not None else -1  # -1: no limit
        if run_id is None:
            query = (
                "SELECT id, body FROM messages WHERE id > ? AND seq > ? AND (? < 0 OR id <= ?)"
                " ORDER BY id LIMIT ?"
            )
            return self._db.execute(query, (after, since, end, end, limit)).fetchall()
        query = (
            "SELECT seq, body FROM messages WHERE run_id = ? AND seq > ? AND (? < 0 OR id <= ?)"
            " ORDER BY seq LIMIT ?"
        )
        return self._db.execute(query, (run_id, max(after, since), end, end, limit)).fetchall()

    def last_id(self) -> int:
        """The row id of the newest stored message (0 when there is none)."""
        return self._db.execute("SELECT COALESCE(MAX(id), 0) FROM messages").fetchone()[0]

    def run_page(self, run_id: str, read: RunRead) -> RunPage:
        """Return the committed messages of ``run_id`` that ``read`` asks for, in seq order.

        Meant for worker threads, so a long read never holds up the event loop: each thread
        reads through a connection of its own.
        """
        db = self._thread_reader()
        (top,) = db.execute("SELECT MAX(seq) FROM messages WHERE run_id = ?", (run_id,)).fetchone()
        # A committed seq implies every lower one is committed: reading up to it is exact.
        end = min(top or 0, read.until if read.until is not None else protocol.INT64_MAX)
        query = "SELECT seq, body FROM messages WHERE run_id = ? AND seq > ? AND seq <= ?"
        arguments: list[object] = [run_id, read.since, end]
        for names, operator in ((read.types, "IN"), (read.exclude, "NOT IN")):
            if names:
                query += f" AND type {operator} ({', '.join('?' * len(names))})"
                arguments.extend(names)
        bodies: list[str] = []
        size, last = 0, read.since
        for seq, body in db.execute(query + " ORDER BY seq", arguments):
            if read.max_bytes is not None and bodies and size + len(body) > read.max_bytes:
                return RunPage(bodies, through_seq=last, more=True)
            bodies.append(body)
            size += len(body)
            last = seq
        return RunPage(bodies, through_seq=max(end, read.since), more=False)

    def _thread_reader(self) -> sqlite3.Connection:
        reader: sqlite3.Connection | None = getattr(self._reader, "db", None)
        if reader is None:
            reader = sqlite3.connect(self.path, check_same_thread=False)
            with self._readers_lock:
                self._readers.append(reader)
            self._reader.db = reader
        return reader

    def run_rows(self) -> list[tuple[str, int, int, int, str, str]]:
        """Every run as ``(run_id, message_count, last_seq, last_id, first_ts, last_ts)``.

        Ordered by ``last_id`` (the row id of its newest message), oldest activity first.
        """
        return self._db.execute(
            "SELECT run_id, COUNT(*), MAX(seq), MAX(id),"
            " (SELECT timestamp FROM messages f WHERE f.run_id = m.run_id ORDER BY seq LIMIT 1),"
            " (SELECT timestamp FROM messages l WHERE l.run_id = m.run_id"
            "  ORDER BY seq DESC LIMIT 1)"
            " FROM messages m GROUP BY run_id ORDER BY MAX(id)"
        ).fetchall()

    def bodies_of_types(self, *types: str) -> Iterator[tuple[str, str]]:
        """``(run_id, body)`` of every stored message of one of ``types``, in storage order."""
        marks = ", ".join("?" * len(types))
        query = f"SELECT run_id, body FROM messages WHERE type IN ({marks}) ORDER BY id"
        yield from self._db.execute(query, types)


def _lock_exclusively(path: Path) -> IO[str]:
    """Hold an exclusive lock on ``path`` while the returned file is open.

    Two relays on one database would give the same seq twice; the second one stops instead.

    Raises:
        OSError: another process holds the lock (or the file cannot be created).
    """
    lock = open(path, "a")  # noqa: SIM115 - kept open: the lock lasts as long as the file
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise OSError(f"another relay is using it (lock {path} is held)") from None
    return lock


def _encoding_error(exc: ValueError) -> EncodingError:
    return EncodingError(
        f"data: cannot encode as JSON ({exc}); "
        'send non-finite numbers as the strings "NaN", "Infinity" or "-Infinity"'
    )
