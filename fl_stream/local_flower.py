"""Run this Flower app with ``flwr run`` on a SuperLink of our own, and stop it afterwards.

``flwr run .`` starts a detached local ``flower-superlink`` the first time it is called for a
``FLWR_HOME`` and leaves it running (Flower has no stop command). The demo, the benchmark and
the tests give each session its own ``FLWR_HOME`` (and free ports), so the SuperLink they find
is theirs: it is the ``flower-superlink`` process whose command line names
``$FLWR_HOME/local-superlink/``, the directory Flower keeps its state and log in. They stop it,
and any process it started that is still running, by pid.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "PROJECT_DIR",
    "flwr_command",
    "flwr_environment",
    "free_port",
    "stop_superlink",
    "superlink_pids",
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
) -> list[str]:
    """The ``flwr run .`` command line, with federation and run-config overrides."""
    command = [str(Path(sys.executable).parent / "flwr"), "run", "."]
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
    started = [child for pid in pids for child in _descendants(pid)]
    _terminate(pids, timeout)
    _terminate([pid for pid in started if _alive(pid)], timeout)
    return pids


def _descendants(pid: int) -> list[int]:
    found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False)
    children = [int(child) for child in found.stdout.split()]
    return children + [grandchild for child in children for grandchild in _descendants(child)]


def _terminate(pids: list[int], timeout: float) -> None:
    for pid in pids:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(_alive(pid) for pid in pids):
        time.sleep(0.2)
    for pid in pids:
        if _alive(pid):
            _signal(pid, signal.SIGKILL)


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # Linux: a zombie (exited, not yet reaped) is not running any more
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True
