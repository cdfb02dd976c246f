"""Start and stop what a local run needs, by pid: free ports, a relay child process, and
``flwr run`` against a SuperLink of our own.

Development tooling for the demo, the benchmarks and the tests; it is not part of the
installed package.

``flwr run .`` starts a detached local ``flower-superlink`` the first time it is called for a
``FLWR_HOME`` and leaves it running (Flower has no stop command). The demo, the benchmark and
the tests give each session its own ``FLWR_HOME`` (and free ports), so the SuperLink they find
is theirs: it is the ``flower-superlink`` process whose command line names
``$FLWR_HOME/local-superlink/``, the directory Flower keeps its state and log in. They stop it,
and any process it started that is still running, by pid (:func:`descendants`,
:func:`terminate`).

The Deployment Engine (a SuperLink and SuperNodes as processes of their own) is in
:mod:`scripts.deployment`.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "PROJECT_DIR",
    "RelayProcess",
    "descendants",
    "flwr_command",
    "flwr_environment",
    "free_port",
    "is_healthy",
    "is_running",
    "stop_superlink",
    "superlink_pids",
    "terminate",
]

PROJECT_DIR = Path(__file__).resolve().parent.parent


def flwr_environment(
    flwr_home: str | os.PathLike[str],
    *,
    http_port: int | None = None,
    control_port: int | None = None,
    base: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Environment for ``flwr run``: our ``FLWR_HOME``, loopback Ray, no dependency install.

    ``http_port`` / ``control_port`` move the local SuperLink off Flower's defaults
    (39091 / 39093) so it cannot meet another Flower on the machine. The virtual
    environment's ``bin`` goes first on ``PATH``: ``flwr`` starts ``flower-superlink`` by name.
    """
    env = dict(os.environ if base is None else base)
    env["FLWR_HOME"] = str(Path(flwr_home).absolute())
    env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # keep Ray on 127.0.0.1
    env["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] = "1"  # read when the SuperLink starts
    if http_port is not None:
        env["FLWR_LOCAL_SUPERLINK_HTTP_API_PORT"] = str(http_port)
    if control_port is not None:
        env["FLWR_LOCAL_CONTROL_API_PORT"] = str(control_port)
    venv_bin = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([venv_bin, env.get("PATH", "")])
    return env


def flwr_command(
    *,
    num_supernodes: int | None = None,
    run_config: Mapping[str, Any] | None = None,
    stream: bool = True,
    connection: str | None = None,
) -> list[str]:
    """The ``flwr run .`` command line, with federation and run-config overrides.

    ``connection`` names a SuperLink connection of ``$FLWR_HOME/config.toml`` (e.g. the
    Deployment Engine's, :mod:`scripts.deployment`); None: the local simulation SuperLink.
    """
    command = [str(Path(sys.executable).parent / "flwr"), "run", "."]
    if connection is not None:
        command.append(connection)
    if run_config:
        # json.dumps writes TOML-compatible values: "text", 3, 0.5, true.
        pairs = " ".join(f"{key}={json.dumps(value)}" for key, value in run_config.items())
        command += ["--run-config", pairs]
    if num_supernodes is not None:
        command += ["--federation-config", f"num-supernodes={num_supernodes}"]
    if stream:
        command.append("--stream")
    return command


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def superlink_pids(flwr_home: str | os.PathLike[str]) -> list[int]:
    """Pids of the ``flower-superlink`` processes started for ``flwr_home``."""
    marker = str(Path(flwr_home).absolute() / "local-superlink") + os.sep
    found = subprocess.run(
        ["pgrep", "-f", f"flower-superlink.*{marker}"], capture_output=True, text=True, check=False
    )
    return [int(pid) for pid in found.stdout.split() if int(pid) != os.getpid()]


def stop_superlink(flwr_home: str | os.PathLike[str], timeout: float = 10.0) -> list[int]:
    """Stop the SuperLink(s) of ``flwr_home`` and what they started; return the SuperLink pids.

    SIGTERM first, so the SuperLink shuts down cleanly; then whatever it had started and left
    behind (a run stopped midway leaves the simulation process and Ray's workers, found
    beforehand by walking the process tree) gets SIGTERM too; SIGKILL after ``timeout``.
    """
    pids = superlink_pids(flwr_home)
    started = [child for pid in pids for child in descendants(pid)]
    terminate(pids, timeout)
    terminate([pid for pid in started if is_running(pid)], timeout)
    return pids


def descendants(pid: int) -> list[int]:
    """The pids of the processes ``pid`` started, their children, and so on."""
    found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False)
    children = [int(child) for child in found.stdout.split()]
    return children + [grandchild for child in children for grandchild in descendants(child)]


def terminate(pids: Sequence[int], timeout: float = 10.0) -> None:
    """SIGTERM each of ``pids``, wait up to ``timeout`` for all to exit, then SIGKILL the rest."""
    for pid in pids:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(is_running(pid) for pid in pids):
        time.sleep(0.2)
    for pid in pids:
        if is_running(pid):
            _signal(pid, signal.SIGKILL)


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def is_running(pid: int) -> bool:
    """Whether process ``pid`` exists and has not exited (a zombie has)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # Linux: a zombie (exited, not yet reaped) is not running any more
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


# --------------------------------------------------------------------------- the relay

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
