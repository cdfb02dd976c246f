"""Flower's Deployment Engine on 127.0.0.1: a ``flower-superlink`` and N ``flower-supernode``
processes, each SuperNode with its data partition, started and stopped by pid.

Development tooling for the tests and the demo, like :mod:`scripts.localrun`. The same
ServerApp and ClientApp that ``flwr run .`` simulates run here unchanged, as they would across
machines::

    with DeploymentEngine(tmp / "flwr-home", num_supernodes=2, workdir=tmp) as engine:
        subprocess.run(engine.flwr_command({"num-server-rounds": 3}), cwd=PROJECT_DIR,
                       env=engine.env, timeout=600)

:meth:`DeploymentEngine.start` writes a ``deployment`` connection to ``$FLWR_HOME/config.toml``
(the one ``flwr run . deployment`` uses), starts the SuperLink with its APIs on one free port,
waits until it accepts connections, then starts the SuperNodes (each with its own free port
for its ClientApp runtime) and waits until each listens. A run submitted before the nodes
have registered simply waits for them (the strategy waits for ``min-nodes``).

Every process starts in its own process group. The SuperLink starts a ``flower-superexec``
in a session of its own, and each SuperNode leaves a ``flower-superexec`` child in its group;
:meth:`DeploymentEngine.stop` finds all of them (process tree and groups) before stopping any,
then stops them by pid: SIGTERM, SIGKILL after a timeout.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from scripts.localrun import (
    descendants,
    flwr_command,
    flwr_environment,
    free_port,
    is_running,
    terminate,
)

__all__ = ["CONNECTION", "DeploymentEngine", "is_stopped"]

CONNECTION = "deployment"  # the SuperLink connection's name in config.toml
START_TIMEOUT = 60.0  # seconds; a SuperLink starts in 2-5 s on a loaded 2-core machine
STOP_TIMEOUT = 10.0


class DeploymentEngine:
    """One SuperLink and ``num_supernodes`` SuperNodes on 127.0.0.1, insecure (loopback only).

    Args:
        flwr_home: the ``FLWR_HOME`` of the processes and of ``flwr run`` (its config.toml is
            written here).
        num_supernodes: SuperNodes to start; node ``k`` gets ``--node-config
            'partition-id=k num-partitions=<num_supernodes>'``.
        workdir: the processes' working directory (the ServerApp's too) and where their logs
            go: ``superlink.log``, ``supernode-<k>.log``.

    Attributes:
        port: the SuperLink's port (Fleet, Control and runtime APIs).
        env: the environment of the processes; give it to ``flwr run`` too.
        pids: the pids of every process started (not their children), in start order.
    """

    def __init__(
        self, flwr_home: str | os.PathLike[str], *, num_supernodes: int, workdir: str | Path
    ) -> None:
        self.flwr_home = Path(flwr_home).absolute()
        self.num_supernodes = num_supernodes
        self.workdir = Path(workdir)
        self.port = free_port()
        self.env = flwr_environment(self.flwr_home)
        self._processes: list[tuple[subprocess.Popen[bytes], Path]] = []

    @property
    def pids(self) -> list[int]:
        return [process.pid for process, _ in self._processes]

    def start(self, timeout: float = START_TIMEOUT) -> DeploymentEngine:
        """Write the connection, start the SuperLink, then the SuperNodes; return self.

        Raises:
            RuntimeError: a process exited, or did not listen within ``timeout`` seconds;
                the text quotes its log. Whatever was started is stopped first.
        """
        self.flwr_home.mkdir(parents=True, exist_ok=True)
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.flwr_home / "config.toml").write_text(self._config_toml())
        try:
            self._start_listening("superlink", self._superlink_command(), self.port, timeout)
            for node in range(self.num_supernodes):
                port = free_port()
                self._start_listening(
                    f"supernode-{node}", self._supernode_command(node, port), port, timeout
                )
        except BaseException:
            self.stop()
            raise
        return self

    def flwr_command(self, run_config: Mapping[str, Any] | None = None) -> list[str]:
        """``flwr run . deployment --stream`` with run-config overrides; run it from the app."""
        return flwr_command(run_config=run_config, connection=CONNECTION)

    def stop(self, timeout: float = STOP_TIMEOUT) -> list[int]:
        """Stop every process started and what they started; return the pids stopped.

        SuperNodes go first, so that none is left polling a SuperLink that is gone.
        """
        processes = [process for process, _ in reversed(self._processes)]
        tree = [pid for process in processes for pid in [process.pid, *descendants(process.pid)]]
        for process in processes:
            _signal_group(process.pid, signal.SIGTERM)
        terminate(tree, timeout)
        for process in processes:
            _signal_group(process.pid, signal.SIGKILL)  # anything left in its group
            process.wait(timeout)
        self._processes.clear()
        return tree

    def log_text(self) -> str:
        """The output of every process started, one section each."""
        return "\n".join(
            f"--- {log.name}\n{log.read_text(errors='replace')}" for _, log in self._processes
        )

    def __enter__(self) -> DeploymentEngine:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    # ------------------------------------------------------------------ internals

    def _config_toml(self) -> str:
        return (
            f'[superlink]\ndefault = "{CONNECTION}"\n\n'
            f'[superlink.{CONNECTION}]\naddress = "127.0.0.1:{self.port}"\ninsecure = true\n'
        )

    def _superlink_command(self) -> list[str]:
        return [
            self._bin("flower-superlink"),
            "--insecure",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--disable-runtime-dependency-installation",
        ]

    def _supernode_command(self, node: int, port: int) -> list[str]:
        return [
            self._bin("flower-supernode"),
            "--insecure",
            "--superlink",
            f"127.0.0.1:{self.port}",
            "--node-config",
            f"partition-id={node} num-partitions={self.num_supernodes}",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ]

    def _bin(self, name: str) -> str:
        return str(Path(self.env["PATH"].split(os.pathsep)[0]) / name)

    def _start_listening(self, name: str, command: list[str], port: int, timeout: float) -> None:
        log_path = self.workdir / f"{name}.log"
        with open(log_path, "ab") as log:
            process = subprocess.Popen(
                command,
                cwd=self.workdir,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, stopped as one
            )
        self._processes.append((process, log_path))
        deadline = time.monotonic() + timeout
        while not _accepts(port):
            if process.poll() is not None or time.monotonic() > deadline:
                if process.returncode is not None:
                    state = f"exited with {process.returncode}"
                else:
                    state = f"not listening on 127.0.0.1:{port} after {timeout:g} s"
                raise RuntimeError(f"{name} {state}:\n{log_path.read_text(errors='replace')}")
            time.sleep(0.1)


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def is_stopped(pids: list[int]) -> bool:
    """Whether none of ``pids`` is running any more."""
    return not any(is_running(pid) for pid in pids)
