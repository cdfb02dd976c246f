"""The relay's message store: every accepted message, numbered per run, in SQLite (WAL).

The store numbers messages (``seq`` 1, 2, 3, ... per run, continuing after a restart), keeps
the encoded frame exactly as it was broadcast, and answers the reads the relay needs: replay
after a ``since``, duplicate look-ups by ``(run_id, msg_id)`` and run summaries.

Writes are grouped: :meth:`MessageStore.append` inserts inside an open transaction and
:meth:`MessageStore.commit` ends it. The relay commits once per batch, before it broadcasts or
acknowledges anything in that batch (see ``relay/hub.py``).
"""

from __future__ import annotations

import fcntl
import json
import sqlite3
from pathlib import Path
from typing import IO, Any

from fl_stream.monitor.protocol import (
    CENTRALIZED,
    DEFAULT_RUN,
    FEDERATED,
    EncodingError,
    Message,
    encode_message,
    run_status,
)

# DEFAULT_RUN (messages without run_id are filed there) is the protocol's, re-exported.
__all__ = ["DEFAULT_RUN", "MessageStore"]

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
"""

# The message types that decide a run's mode and status in the run summaries.
_MODE_TYPE = "training_mode"
_END_TYPES = ("training_end", "error")


class MessageStore:
    """SQLite storage of the relay's messages.

    Args:
        path: the database file; its folder is created when missing.

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
        self._db.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode: a commit survives a crash of the relay; only a power loss
        # may lose the last transactions, and the database stays consistent either way.
        self._db.execute("PRAGMA synchronous=NORMAL")
        # Checkpoints (which fsync) run in a worker thread, see checkpoint(), so the event
        # loop that commits never waits for the disk.
        self._db.execute("PRAGMA wal_autocheckpoint=0")
        self._checkpointer: sqlite3.Connection | None = None
        self._db.executescript(_SCHEMA)
        self._in_transaction = False
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
            sqlite3.Error: the database refused the write.
        """
        run_id = message.setdefault("run_id", DEFAULT_RUN)
        seq = self._last_seq.get(run_id, 0) + 1
        message["seq"] = seq
        try:
            body = encode_message(message)
        except ValueError as exc:
            del message["seq"]
            raise _encoding_error(exc) from None
        if not self._in_transaction:
            self._db.execute("BEGIN")
            self._in_transaction = True
        self._db.execute(
            "INSERT INTO messages (run_id, seq, msg_id, type, timestamp, body)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (run_id, seq, message.get("msg_id"), message["type"], message["timestamp"], body),
        )
        self._last_seq[run_id] = seq
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

    def rollback(self) -> None:
        """Drop the messages appended since the last commit and their numbers."""
        if self._db.in_transaction:
            self._db.execute("ROLLBACK")
        self._in_transaction = False
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
            if self._checkpointer is not None:
                self._checkpointer.close()
            self._db.close()
            self._lock.close()

    # ----------------------------------------------------------------------- reads

    def find_seq(self, run_id: str, msg_id: str) -> int | None:
        """Return the seq already given to ``(run_id, msg_id)``, or None if it is new."""
        row = self._db.execute(
            "SELECT seq FROM messages WHERE run_id = ? AND msg_id = ?", (run_id, msg_id)
        ).fetchone()
        return row[0] if row else None

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

    def run_bodies(self, run_id: str, since: int = 0) -> list[str]:
        """Return the encoded messages of ``run_id`` with ``seq > since``, in seq order."""
        rows = self._db.execute(
            "SELECT body FROM messages WHERE run_id = ? AND seq > ? ORDER BY seq",
            (run_id, since),
        )
        return [body for (body,) in rows]

    def runs(self) -> list[dict[str, Any]]:
        """Summarise every run, the most recently active first.

        Each summary has ``run_id``, ``mode`` (the protocol's ``FEDERATED``, ``CENTRALIZED``
        or None), ``status`` (:func:`fl_stream.monitor.protocol.run_status`: ``RUNNING``,
        then one of ``RUN_STATUSES``), ``first_timestamp``, ``last_timestamp``,
        ``message_count`` and ``last_seq``.
        """
        return self._summaries("", ())

    def run_summary(self, run_id: str) -> dict[str, Any] | None:
        """Summarise one run as :meth:`runs` does, or return None for an unknown run."""
        found = self._summaries("WHERE run_id = ?", (run_id,))
        return found[0] if found else None

    def _summaries(self, where: str, params: tuple[str, ...]) -> list[dict[str, Any]]:
        rows = self._db.execute(
            f"SELECT run_id, COUNT(*), MIN(seq), MAX(seq) FROM messages {where}"
            " GROUP BY run_id ORDER BY MAX(id) DESC",
            params,
        ).fetchall()
        return [self._summary(*row) for row in rows]

    def run_end(self, run_id: str) -> Message | None:
        """Return the run's last ``training_end`` or ``error`` message, if any."""
        row = self._db.execute(
            "SELECT body FROM messages WHERE run_id = ? AND type IN (?, ?)"
            " ORDER BY seq DESC LIMIT 1",
            (run_id, *_END_TYPES),
        ).fetchone()
        return json.loads(row[0]) if row else None

    def _summary(self, run_id: str, count: int, first: int, last: int) -> dict[str, Any]:
        return {
            "run_id": run_id,
            "mode": self._mode(run_id),
            "status": run_status(self.run_end(run_id)),
            "first_timestamp": self._timestamp(run_id, first),
            "last_timestamp": self._timestamp(run_id, last),
            "message_count": count,
            "last_seq": last,
        }

    def _timestamp(self, run_id: str, seq: int) -> str:
        query = "SELECT timestamp FROM messages WHERE run_id = ? AND seq = ?"
        return self._db.execute(query, (run_id, seq)).fetchone()[0]

    def _mode(self, run_id: str) -> str | None:
        row = self._db.execute(
            # A run declares its mode at its start: the first one is found at once.
            "SELECT body FROM messages WHERE run_id = ? AND type = ? ORDER BY seq LIMIT 1",
            (run_id, _MODE_TYPE),
        ).fetchone()
        if row is None:
            return None
        return FEDERATED if json.loads(row[0])["data"]["is_federated"] else CENTRALIZED


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
