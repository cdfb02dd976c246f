"""Run summaries, kept in memory: ``/api/runs`` and ``run_summary`` never query the database.

:class:`RunIndex` is loaded once from the store at start and then updated by the hub with
every committed message, so listing 1,000 runs costs a JSON encoding (cached until the next
change), not four SQL queries per run on the event loop.

A summary has the fields of the protocol's :data:`~fl_stream.monitor.protocol.RUN_SUMMARY`:
``run_id``, ``mode`` (from the run's first ``training_mode``), ``status`` (from its last
``training_end`` or ``error``, see :func:`~fl_stream.monitor.protocol.run_status`),
``first_timestamp``, ``last_timestamp``, ``message_count`` and ``last_seq``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from fl_stream.monitor.protocol import CENTRALIZED, FEDERATED, Message, run_status
from relay.store import MessageStore

__all__ = ["RunIndex"]

_MODE_TYPE = "training_mode"
_END_TYPES = ("training_end", "error")


@dataclass(slots=True)
class _Run:
    run_id: str
    first_timestamp: str
    last_timestamp: str
    message_count: int = 0
    last_seq: int = 0
    mode: str | None = None
    end: Message | None = None  # its last training_end or error

    def summary(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "mode": self.mode,
            "status": run_status(self.end),
            "first_timestamp": self.first_timestamp,
            "last_timestamp": self.last_timestamp,
            "message_count": self.message_count,
            "last_seq": self.last_seq,
        }


class RunIndex:
    """Every run's summary, the most recently active last in :attr:`_runs`."""

    def __init__(self) -> None:
        self._runs: dict[str, _Run] = {}
        # A training_end's data.run_id (as text) -> the run that sent it: a client of the
        # original format sends no top-level run_id, so its runs are filed under the
        # default run while its training_end names them (e.g. 42).
        self._named: dict[str, str] = {}
        self._encoded: bytes | None = None

    @classmethod
    def load(cls, store: MessageStore) -> RunIndex:
        """Build the index from everything ``store`` holds (once, at start)."""
        index = cls()
        for run_id, count, last_seq, _, first, last in store.run_rows():
            index._runs[run_id] = _Run(run_id, first, last, count, last_seq)
        for run_id, body in store.bodies_of_types(_MODE_TYPE, *_END_TYPES):
            index._note(index._runs[run_id], json.loads(body))
        return index

    def record(self, message: Message) -> bool:
        """Count a committed ``message`` (it carries ``run_id`` and ``seq``).

        Returns True when the run is new, or its mode or status changed: what dashboards
        are told about with a ``run_summary``.
        """
        run_id = message["run_id"]
        run = self._runs.pop(run_id, None)
        appeared = run is None
        if run is None:
            run = _Run(run_id, message["timestamp"], message["timestamp"])
        self._runs[run_id] = run  # re-inserted: now the most recently active
        before = (run.mode, run_status(run.end))
        run.message_count += 1
        run.last_seq = message["seq"]
        run.last_timestamp = message["timestamp"]
        self._note(run, message)
        self._encoded = None
        return appeared or before != (run.mode, run_status(run.end))

    def _note(self, run: _Run, message: Message) -> None:
        kind, data = message["type"], message["data"]
        if kind == _MODE_TYPE and run.mode is None:  # a run declares its mode at its start
            run.mode = FEDERATED if data.get("is_federated") else CENTRALIZED
        elif kind in _END_TYPES:
            run.end = message
            if kind == "training_end" and "run_id" in data:
                self._named[str(data["run_id"])] = run.run_id

    def encoded_list(self, epoch: str) -> bytes:
        """``{"epoch", "runs": [...]}`` as JSON, the most recently active run first."""
        if self._encoded is None:
            runs = [run.summary() for run in reversed(self._runs.values())]
            self._encoded = json.dumps({"epoch": epoch, "runs": runs}).encode()
        return self._encoded

    def resolve(self, name: str) -> str | None:
        """The run called ``name``, else the run whose ``training_end`` names it, else None."""
        if name in self._runs:
            return name
        return self._named.get(name)

    def summary(self, run_id: str) -> dict[str, Any] | None:
        """One run's summary, or None for an unknown run."""
        run = self._runs.get(run_id)
        return run.summary() if run is not None else None

    def end(self, run_id: str) -> Message | None:
        """The run's last ``training_end`` or ``error`` message, if any."""
        run = self._runs.get(run_id)
        return run.end if run is not None else None
