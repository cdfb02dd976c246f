"""Run the relay as a child process: start it, wait until it answers, stop it by pid.

The demo, the benchmarks and the tests all start relays through :class:`RelayProcess`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path

from fl_stream.local_flower import free_port

__all__ = ["RelayProcess", "is_healthy"]

# Bounded waits: long enough for a loaded 2-core machine, short enough to fail fast.
START_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0


def is_healthy(http_url: str) -> bool:
    """Whether a relay answers ``GET <http_url>/healthz`` with 200 within a second."""
    try:
        with urllib.request.urlopen(f"{http_url}/healthz", timeout=1.0) as reply:
            return reply.status == 200
    except OSError:
        return False


class RelayProcess:
    """A real relay (``python -m relay``) on 127.0.0.1 in a subprocess.

    Attributes:
        port: its port (fixed for the object's life, so :meth:`restart` keeps it).
        db_path: its SQLite file (kept across :meth:`restart`).
        ws_url: ``ws://127.0.0.1:<port>``.
        http_url: ``http://127.0.0.1:<port>`` (no trailing slash).
        pid: the running process's id (None when stopped).
        log_path: its combined stdout and stderr, kept across restarts.
        returncode: the exit status after :meth:`stop`.

    Args:
        db_path: the database file.
        port: the port; None picks a free one.
        token: the publisher token (``--token``), or None for an open relay.
        args: more command-line options, e.g. ``["--max-buffer-bytes", "65536"]``.
        env: extra environment variables for the process.
        log_path: where its output goes; default: ``db_path`` with the suffix ``.log``.
    """

    def __init__(
        self,
        db_path: str | Path,
        *,
        port: int | None = None,
        token: str | None = None,
        args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        log_path: str | Path | None = None,
    ) -> None:
        self.db_path = Path(db_path)
        self.token = token
        self.args = list(args)
        self.env = {**os.environ, **(env or {})}
        self.port = free_port() if port is None else port
        self.ws_url = f"ws://127.0.0.1:{self.port}"
        self.http_url = f"http://127.0.0.1:{self.port}"
        self.log_path = Path(log_path) if log_path else self.db_path.with_suffix(".log")
        self.returncode: int | None = None
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def command(self) -> list[str]:
        """The command line that starts this relay."""
        command = [sys.executable, "-m", "relay", "--host", "127.0.0.1", "--port", str(self.port)]
        command += ["--db", str(self.db_path), *self.args]
        if self.token is not None:
            command += ["--token", self.token]
        return command

    def start(self, timeout: float = START_TIMEOUT) -> RelayProcess:
        """Start the process and wait until ``/healthz`` answers; return self."""
        if self._process is not None:
            raise RuntimeError("relay already running; stop() it first")
        for folder in {self.db_path.parent, self.log_path.parent}:
            folder.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            log_start = log.tell()  # a failure quotes this start's output, not older runs'
            self._process = subprocess.Popen(
                self.command(), stdout=log, stderr=subprocess.STDOUT, env=self.env
            )
        self.returncode = None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                code = self._process.returncode
                self._process = None
                raise RuntimeError(
                    f"relay exited with {code} while starting:\n{self.log_text(log_start)}"
                )
            if is_healthy(self.http_url):
                return self
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"relay not healthy after {timeout} s:\n{self.log_text(log_start)}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT) -> int | None:
        """Send ``sig`` and wait for the exit (killed after ``timeout``); return the exit status."""
        if self._process is None:
            return self.returncode
        if self._process.poll() is None:
            os.kill(self._process.pid, sig)
            try:
                self._process.wait(timeout)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self.returncode = self._process.returncode
        self._process = None
        return self.returncode

    def kill(self) -> None:
        """Kill the process at once (SIGKILL) if it is running."""
        self.stop(signal.SIGKILL)

    def restart(self) -> RelayProcess:
        """Stop gracefully and start again on the same port with the same database."""
        self.stop()
        return self.start()

    def log_text(self, start: int = 0) -> str:
        """What the process printed (all runs), from byte ``start`` of its log on."""
        if not self.log_path.exists():
            return ""
        with open(self.log_path, "rb") as log:
            log.seek(start)
            return log.read().decode(errors="replace")
