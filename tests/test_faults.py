"""End-to-end faults with real processes on 127.0.0.1: the relay killed during a federated run,
the relay down for a whole run (then ``fl-stream replay``), and the Deployment Engine.

Each test runs the real app with ``flwr run`` (2 SuperNodes, small partitions) and checks what
the relay stores and what a dashboard receives against the run's JSONL log, which holds every
message the ServerApp's sender produced, in order. The ClientApps publish their live progress
to the same run with senders of their own (logged in ``<run_id>/progress-<client>.jsonl``):
those messages must be stored at most once too, but may be dropped while the relay is down
(their senders keep a small queue by design). Every wait is bounded; every process a test starts is
stopped by pid at its end. These tests take minutes (each ``flwr run`` starts the SuperLink's
ServerApp and the ClientApps, which import torch); select them with ``-m faults``.
"""

from __future__ import annotations

import math
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from fl_stream.monitor.protocol import validate_message
from fl_stream.monitor.runlog import read_log
from scripts.deployment import DeploymentEngine, is_stopped
from scripts.localrun import (
    PROJECT_DIR,
    flwr_command,
    flwr_environment,
    stop_superlink,
    superlink_pids,
)
from tests.conftest import RelayFactory
from tests.support import ListeningClient, RelayProcess, free_port, get_json

pytestmark = [pytest.mark.faults, pytest.mark.simulation, pytest.mark.timeout(900)]

Message = dict[str, Any]

RUN_TIMEOUT = 600.0  # seconds for one flwr run; 1-3 minutes on a loaded 2-core machine
METRICS = ("loss", "accuracy", "precision", "recall", "f1", "auroc")
ROUNDS = 3
CLIENTS = 2


# --------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def flower_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Environment for ``flwr run`` with this module's own FLWR_HOME; stops its SuperLink."""
    home = tmp_path_factory.mktemp("flwr-home")
    yield flwr_environment(home, http_port=free_port(), control_port=free_port())
    stop_superlink(home)
    assert not superlink_pids(home)


def run_config(relay_url: str, log_dir: Path, rounds: int = ROUNDS) -> dict[str, Any]:
    return {
        "num-server-rounds": rounds,
        "samples-per-client": 40,
        "relay-url": relay_url,
        "metrics-log-dir": str(log_dir),
    }


class FlwrRun:
    """A ``flwr run`` command in the background, its output in a file.

    Args:
        command: the command line (``flwr run . ... --stream``).
        env: its environment.
        output: the file its stdout and stderr go to.
    """

    def __init__(self, command: list[str], env: dict[str, str], output: Path) -> None:
        self.output = output
        with open(output, "wb") as file:
            self.process = subprocess.Popen(
                command,
                cwd=PROJECT_DIR,
                env=env,
                stdout=file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def text(self) -> str:
        return self.output.read_text(errors="replace")

    def run_id(self) -> str | None:
        match = re.search(r"Successfully started run (\d+)", self.text())
        return match.group(1) if match else None

    def wait_until(
        self, condition: Callable[[], bool], what: str, timeout: float = RUN_TIMEOUT
    ) -> None:
        """Wait until ``condition()``; fail, quoting the output, if the run ends first."""
        deadline = time.monotonic() + timeout
        while not condition():
            if self.process.poll() is not None and not condition():
                raise AssertionError(f"flwr run ended before {what}:\n{self.text()[-3000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {what} after {timeout:g} s:\n{self.text()[-3000:]}")
            time.sleep(0.2)

    def finish(self, timeout: float = RUN_TIMEOUT) -> str:
        """Wait for the command to end; return its run id after checking the run succeeded."""
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise AssertionError(f"flwr run still running after {timeout:g} s") from None
        output = self.text()
        assert self.process.returncode == 0, output[-3000:]
        # flwr run exits 0 even when the ServerApp failed: its output says so.
        assert "An unhandled exception occurred in the ServerApp" not in output, output[-3000:]
        run_id = self.run_id()
        assert run_id, output[-3000:]
        return run_id

    def stop(self) -> None:
        """Stop the command (its process group) if it still runs."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(10)


@pytest.fixture
def start_run(tmp_path: Path) -> Iterator[Callable[[list[str], dict[str, str]], FlwrRun]]:
    """Start ``flwr run`` commands in the background; each is stopped at teardown."""
    runs: list[FlwrRun] = []

    def start(command: list[str], env: dict[str, str]) -> FlwrRun:
        runs.append(FlwrRun(command, env, tmp_path / f"flwr-run-{len(runs)}.log"))
        return runs[-1]

    yield start
    for run in runs:
        run.stop()


def log_lines(path: Path) -> int:
    """How many messages the run log holds so far (0 before it exists)."""
    try:
        return sum(1 for line in path.read_bytes().splitlines() if line.strip())
    except FileNotFoundError:
        return 0


def check_federated_run(messages: list[Message], run_id: str, rounds: int = ROUNDS) -> None:
    """A complete federated run of ``rounds`` rounds and :data:`CLIENTS` clients, in order."""
    for message in messages:
        validate_message(message)
        assert message["run_id"] == run_id
    types = [m["type"] for m in messages]
    assert types[0] == "training_mode" and types[-1] == "training_end", types
    mode = messages[0]["data"]
    assert (mode["is_federated"], mode["num_rounds"], mode["num_clients"]) == (
        True,
        rounds,
        CLIENTS,
    )
    round_metrics = [m["data"] for m in messages if m["type"] == "round_metrics"]
    assert sorted((d["round"], d["phase"]) for d in round_metrics) == sorted(
        (rnd, phase) for rnd in range(1, rounds + 1) for phase in ("train", "evaluate")
    )
    for data in round_metrics:
        assert all(math.isfinite(data["metrics"][name]) for name in METRICS)
    client_metrics = [m["data"] for m in messages if m["type"] == "client_metrics"]
    assert len(client_metrics) == 2 * rounds
    for data in client_metrics:
        assert sorted(c["client_id"] for c in data["clients"]) == ["0", "1"]
    assert [m["data"]["round"] for m in messages if m["type"] == "round_end"] == list(
        range(1, rounds + 1)
    )
    end = messages[-1]["data"]
    assert (end["run_id"], end["status"]) == (run_id, "completed")
    assert set(METRICS) <= end["final_metrics"].keys()


def without_seq(messages: list[Message]) -> list[Message]:
    return [{k: v for k, v in m.items() if k != "seq"} for m in messages]


def check_stored(relay: RelayProcess, run_id: str, logged: list[Message]) -> list[Message]:
    """Return the run's stored messages after checking them against the run log ``logged``.

    Stored are seq 1..n, each message at most once (whichever sender published it), and every
    logged message exactly once, in log order.
    """
    run = get_json(f"{relay.http_url}/api/runs/{run_id}/metrics")
    stored: list[Message] = run["messages"]
    assert [m["seq"] for m in stored] == list(range(1, len(stored) + 1))
    msg_ids = [m["msg_id"] for m in stored]
    assert len(set(msg_ids)) == len(msg_ids), "a message is stored twice"
    logged_ids = {m["msg_id"] for m in logged}
    assert without_seq([m for m in stored if m["msg_id"] in logged_ids]) == logged
    assert (run["mode"], run["status"]) == ("federated", "completed")
    return stored


def other_logs(log_dir: Path, log_path: Path) -> list[Path]:
    """The run's other logs under ``log_dir`` (the ClientApps' progress), sorted."""
    return sorted(path for path in log_dir.rglob("*.jsonl") if path != log_path)


def of_run(messages: list[Message], run_id: str) -> list[Message]:
    """The run's stored messages among what a dashboard received (no control messages)."""
    return [m for m in messages if m.get("run_id") == run_id and "seq" in m]


def replay(log: Path, relay_url: str) -> subprocess.CompletedProcess[str]:
    """``fl-stream replay LOG --relay-url URL``, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "fl_stream", "replay", str(log), "--relay-url", relay_url],
        cwd=PROJECT_DIR,
        capture_output=True,
        text=True,
        timeout=120,
    )


def has_type(client: ListeningClient, message_type: str) -> Callable[[], bool]:
    return lambda: bool(client.of_type(message_type))


# --------------------------------------------------------------------------- the relay dies


def test_the_relay_killed_and_restarted_mid_run_loses_and_repeats_nothing(
    flower_env: dict[str, str],
    relay: RelayProcess,
    start_run: Callable[[list[str], dict[str, str]], FlwrRun],
    tmp_path: Path,
) -> None:
    dashboard = ListeningClient(relay.ws_url, subscribe=True)  # all runs, live
    command = flwr_command(num_supernodes=CLIENTS, run_config=run_config(relay.ws_url, tmp_path))
    run = start_run(command, flower_env)
    run.wait_until(has_type(dashboard, "round_end"), "round 1's round_end on the dashboard")
    run_id = dashboard.data_messages()[0]["run_id"]
    log_path = tmp_path / f"{run_id}.jsonl"

    relay.kill()  # SIGKILL: no goodbye to the sender or the dashboard
    dashboard.wait_closed()
    before = dashboard.data_messages()
    logged_at_kill = log_lines(log_path)
    run.wait_until(
        lambda: log_lines(log_path) > logged_at_kill, "a message while the relay is down"
    )
    relay.start()  # same port, same database
    # The dashboard reconnects and asks for what it missed, as the browser dashboard does.
    resumed = ListeningClient(relay.ws_url, run_id=run_id, since=before[-1]["seq"])
    run.wait_until(has_type(resumed, "training_end"), "training_end after the restart")
    assert run.finish() == run_id

    logged = list(read_log(log_path))
    check_federated_run(logged, run_id)
    stored = check_stored(relay, run_id, logged)
    assert before[-1]["seq"] < len(stored)  # the kill came mid-run
    # The dashboard connected before the kill has the whole run: no gap, no duplicate.
    resumed.wait_for(lambda received: len(before) + len(of_run(received, run_id)) >= len(stored))
    resumed.close()
    assert before + resumed.data_messages() == stored


# --------------------------------------------------------------------------- the relay is down


def test_a_run_with_the_relay_down_is_replayed_as_if_it_had_streamed(
    flower_env: dict[str, str], relay_factory: RelayFactory, tmp_path: Path
) -> None:
    nowhere = f"ws://127.0.0.1:{free_port()}"
    command = flwr_command(num_supernodes=CLIENTS, run_config=run_config(nowhere, tmp_path))
    run_id = FlwrRun(command, flower_env, tmp_path / "flwr-run.log").finish()
    log_path = tmp_path / f"{run_id}.jsonl"
    logged = list(read_log(log_path))
    check_federated_run(logged, run_id)

    relay = relay_factory()
    logs = [log_path, *other_logs(tmp_path, log_path)]  # the server's, then the clients'
    every = [message for path in logs for message in read_log(path)]
    with ListeningClient(relay.ws_url, subscribe=True) as dashboard:
        outputs = []
        for path in logs:
            done = replay(path, relay.ws_url)
            assert done.returncode == 0, done.stderr
            outputs.append(done.stdout)
        assert f"{len(logged)} message(s), {len(logged)} acknowledged" in outputs[0]
        dashboard.wait_for(lambda received: len(of_run(received, run_id)) == len(every))
        assert without_seq(dashboard.data_messages()) == every  # as if it had streamed live
    stored = check_stored(relay, run_id, logged)
    assert without_seq(stored) == every

    for path in logs:  # again: acknowledged, nothing stored twice
        assert replay(path, relay.ws_url).returncode == 0
    assert check_stored(relay, run_id, logged) == stored
    stats = get_json(f"{relay.http_url}/stats")
    assert (stats["messages_in"], stats["duplicates"]) == (len(every), len(every))


# --------------------------------------------------------------------------- Deployment Engine


def test_the_deployment_engine_streams_the_same_complete_run(
    relay: RelayProcess, tmp_path: Path
) -> None:
    engine = DeploymentEngine(tmp_path / "flwr-home", num_supernodes=CLIENTS, workdir=tmp_path)
    engine.start()
    try:
        # Two rounds: each ClientApp call starts a process that imports torch (~10 s here).
        command = engine.flwr_command(run_config(relay.ws_url, tmp_path / "runs", rounds=2))
        run = FlwrRun(command, engine.env, tmp_path / "flwr-run.log")
        try:
            run_id = run.finish()
        except AssertionError as failure:
            raise AssertionError(f"{failure}\n{engine.log_text()[-3000:]}") from None
    finally:
        stopped = engine.stop()
    # The SuperLink, the SuperNodes and the flower-superexec each of them started, by pid.
    assert len(stopped) >= 2 * (1 + CLIENTS) and is_stopped(stopped)

    logged = list(read_log(tmp_path / "runs" / f"{run_id}.jsonl"))
    check_federated_run(logged, run_id, rounds=2)
    check_stored(relay, run_id, logged)
