"""The whole app as a user runs it: ``flwr run . --stream`` (a real Flower simulation on Ray).

Both tests share one SuperLink (its own ``FLWR_HOME`` and free ports), stopped by pid at the
end. The first streams a FedProx run (run-config key ``strategy``) to a real relay watched by a
real listening client; the second runs FedAvg with no relay at all and must still complete
with a complete JSONL log.
"""

from __future__ import annotations

import math
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from fl_stream.monitor.protocol import validate_message
from fl_stream.monitor.runlog import read_log
from scripts.localrun import (
    PROJECT_DIR,
    flwr_command,
    flwr_environment,
    stop_superlink,
    superlink_pids,
)
from tests.support import ListeningClient, free_port

pytestmark = pytest.mark.simulation

RUN_TIMEOUT = 240  # seconds; a run takes 30-60 s on a loaded 2-core machine
METRICS = ("loss", "accuracy", "precision", "recall", "f1", "auroc")
SYS_METRICS = {"sys_wall_time", "sys_examples_per_second", "sys_peak_rss_mb", "sys_cuda_peak_mb"}


@pytest.fixture(scope="module")
def flower_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Environment for ``flwr run`` with this module's own FLWR_HOME; stops its SuperLink."""
    home = tmp_path_factory.mktemp("flwr-home")
    yield flwr_environment(home, http_port=free_port(), control_port=free_port())
    stop_superlink(home)
    assert not superlink_pids(home)


def _flwr_run(env: dict[str, str], run_config: dict) -> tuple[str, str]:
    """Run the app with 2 nodes for 2 rounds; return (run id, output)."""
    pyproject = (PROJECT_DIR / "pyproject.toml").read_bytes()
    command = flwr_command(num_supernodes=2, run_config={"num-server-rounds": 2, **run_config})
    done = subprocess.run(
        command, cwd=PROJECT_DIR, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    assert (PROJECT_DIR / "pyproject.toml").read_bytes() == pyproject  # flwr left it alone
    match = re.search(r"Successfully started run (\d+)", output)
    assert match, output[-3000:]
    return match.group(1), output


def _check_run(messages: list[dict], run_id: str, strategy: str) -> None:
    """What issues 4 and 12 ask of a 2-round, 2-client run's messages."""
    for message in messages:
        validate_message(message)
        assert message["run_id"] == run_id
    types = [m["type"] for m in messages]
    assert types[0] == "training_mode" and types[-1] == "training_end"
    mode = messages[0]["data"]
    assert (mode["is_federated"], mode["num_rounds"], mode["num_clients"]) == (True, 2, 2)
    assert mode["config"]["strategy"] == strategy and "relay-token" not in mode["config"]

    round_metrics = [m["data"] for m in messages if m["type"] == "round_metrics"]
    assert sorted((d["round"], d["phase"]) for d in round_metrics) == [
        (1, "evaluate"),
        (1, "train"),
        (2, "evaluate"),
        (2, "train"),
    ]
    for data in round_metrics:
        values = data["metrics"]
        assert all(isinstance(values[k], float) and math.isfinite(values[k]) for k in METRICS)
        assert values["loss"] >= 0
        assert all(0.0 <= values[k] <= 1.0 for k in METRICS[1:])

    client_metrics = [m["data"] for m in messages if m["type"] == "client_metrics"]
    assert len(client_metrics) == 4
    for data in client_metrics:
        assert sorted(c["client_id"] for c in data["clients"]) == ["0", "1"]
        for client in data["clients"]:
            assert client["metrics"].keys() >= set(METRICS) | SYS_METRICS
            assert client["device"] in ("cpu", "cuda:0")

    assert [m["data"]["round"] for m in messages if m["type"] == "round_end"] == [1, 2]
    end = messages[-1]["data"]
    assert end["run_id"] == run_id and end["status"] == "completed"
    assert end["best_round"] in (1, 2) and set(METRICS) <= end["final_metrics"].keys()


def test_flwr_run_streams_to_a_live_dashboard(flower_env, relay, tmp_path):
    with ListeningClient(relay.ws_url) as dashboard:
        run_id, _ = _flwr_run(
            flower_env,
            {
                "relay-url": relay.ws_url,
                "metrics-log-dir": str(tmp_path),
                "samples-per-client": 40,
                "strategy": "fedprox",
            },
        )
        dashboard.wait_for_type("training_end", timeout=30)
        received = dashboard.data_messages()

    assert [m["seq"] for m in received] == list(range(1, len(received) + 1))
    # Each client streamed its own progress while it trained, under the run's id.
    progress = [m for m in received if m["type"] == "client_progress"]
    assert {(m["data"]["client_id"], m["data"]["round"]) for m in progress} >= {
        (client, rnd) for client in ("0", "1") for rnd in (1, 2)
    }
    from_server = [m for m in received if m["type"] != "client_progress"]
    _check_run(from_server, run_id, "fedprox")
    logged = list(read_log(tmp_path / f"{run_id}.jsonl"))
    assert [(m["msg_id"], m["type"], m["data"]) for m in logged] == [
        (m["msg_id"], m["type"], m["data"]) for m in from_server
    ]


def test_flwr_run_completes_with_the_relay_down(flower_env, tmp_path):
    nowhere = f"ws://127.0.0.1:{free_port()}"
    run_id, _ = _flwr_run(
        flower_env,
        {"relay-url": nowhere, "metrics-log-dir": str(tmp_path), "samples-per-client": 40},
    )
    log_path: Path = tmp_path / f"{run_id}.jsonl"
    _check_run(list(read_log(log_path)), run_id, "fedavg")
