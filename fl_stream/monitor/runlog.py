"""The local JSONL run log: one message per line, so a run's metrics survive without a relay.

The sender appends every message it accepts, whether or not a relay is reachable. Lines are
the exact JSON text sent to the relay (``run_id``, ``msg_id`` included). Each batch of lines
is written with one ``write`` on a file opened for appending, so lines from several senders
of one run never interleave mid-line.
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

__all__ = ["DEFAULT_LOG_DIR", "LOG_DIR_ENV", "JsonlLog", "default_log_path", "read_log", "run_dir"]

LOG_DIR_ENV = "FL_STREAM_LOG_DIR"
DEFAULT_LOG_DIR = "runs"  # relative to the working directory

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def run_dir(run_id: str, directory: str | os.PathLike[str] | None = None) -> Path:
    """Return ``<directory>/<run_id>/``, the folder for a run's other files (e.g. weights).

    ``directory`` defaults as in :func:`default_log_path`.
    """
    return _log_dir(directory) / _safe_name(run_id)


def _log_dir(directory: str | os.PathLike[str] | None) -> Path:
    return Path(
        directory if directory is not None else os.environ.get(LOG_DIR_ENV) or DEFAULT_LOG_DIR
    )


def _safe_name(run_id: str) -> str:
    return _UNSAFE.sub("_", run_id).strip("._") or "run"


def default_log_path(
    run_id: str | None, sender_id: str, directory: str | os.PathLike[str] | None = None
) -> Path:
    """Return ``<directory>/<run_id>.jsonl``.

    ``directory`` defaults to ``$FL_STREAM_LOG_DIR``, or ``runs`` when that is unset. Without
    a run id the name is ``unnamed-<UTC time>-<sender id>.jsonl``, one file per sender.
    """
    if run_id:
        name = _safe_name(run_id)
    else:
        name = f"unnamed-{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{sender_id[:8]}"
    return _log_dir(directory) / f"{name}.jsonl"


class JsonlLog:
    """Append-only JSONL file; safe to call from several threads."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        # Unbuffered: each write() call below is one system call with whole lines.
        self._file = open(self.path, "ab", buffering=0)  # noqa: SIM115 (closed in close())

    def write(self, lines: Iterable[str]) -> None:
        """Append ``lines`` (JSON texts without newlines).

        Raises:
            OSError: the disk refused the write (full, read-only, ...).
            ValueError: the log is closed.
        """
        chunk = memoryview("".join(f"{line}\n" for line in lines).encode())
        with self._lock:
            while chunk:  # a raw write may be short (e.g. interrupted); finish the lines
                chunk = chunk[self._file.write(chunk) :]

    def close(self) -> None:
        with self._lock:
            self._file.close()


def read_log(path: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    """Yield the messages of a run log in the order they were written."""
    with open(path, encoding="utf-8") as file:
        for line in file:
            if line.strip():
                yield json.loads(line)
