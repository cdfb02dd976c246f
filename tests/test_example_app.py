"""A second, different Flower app, monitored through fl-stream's public API only.

``examples/tabular`` (a numpy MLP, FedProx, scikit-learn's balanced accuracy) runs as a user
runs it, ``flwr run`` on its own SuperLink (own ``FLWR_HOME``, free ports, stopped by pid),
streaming to a real relay. The relay must hold the whole run, custom metric and client mod
figures included, and the dashboard must draw a chart of the custom metric.
"""

from __future__ import annotations

import ast
import math
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from fl_stream.monitor.protocol import COMPLETED, EVAL_BY_CLIENTS, validate_message
from scripts.localrun import (
    PROJECT_DIR,
    flwr_command,
    flwr_environment,
    stop_superlink,
    superlink_pids,
)
from tests.support import RelayProcess, free_port, get_json
from tests.test_dashboard import find_chromium

EXAMPLE_DIR = PROJECT_DIR / "examples" / "tabular"
RUN_TIMEOUT = 240  # seconds; a run takes 30-60 s on a loaded 2-core machine
ROUNDS = 2
METRICS = {"loss", "accuracy", "balanced_accuracy"}
SYS_METRICS = {"sys_wall_time", "sys_examples_per_second", "sys_peak_rss_mb", "sys_cuda_peak_mb"}


@dataclass(frozen=True)
class ExampleRun:
    relay: RelayProcess
    run_id: str
    messages: list[dict]  # what the relay stored, in seq order


@pytest.fixture(scope="module")
def example_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ExampleRun]:
    """``flwr run`` of the example (2 nodes, 2 rounds) against a relay; both stopped after."""
    home = tmp_path_factory.mktemp("flwr-home")
    env = flwr_environment(home, http_port=free_port(), control_port=free_port())
    env["FL_STREAM_LOG_DIR"] = str(tmp_path_factory.mktemp("runs"))  # the sender's JSONL log
    relay = RelayProcess(tmp_path_factory.mktemp("relay") / "relay.db").start()
    pyproject = (EXAMPLE_DIR / "pyproject.toml").read_bytes()
    try:
        command = flwr_command(
            num_supernodes=2, run_config={"num-server-rounds": ROUNDS, "relay-url": relay.ws_url}
        )
        done = subprocess.run(
            command, cwd=EXAMPLE_DIR, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT
        )
        output = done.stdout + done.stderr
        assert done.returncode == 0, output[-3000:]
        assert (EXAMPLE_DIR / "pyproject.toml").read_bytes() == pyproject  # flwr left it alone
        match = re.search(r"Successfully started run (\d+)", output)
        assert match, output[-3000:]
        run_id = match.group(1)
        stored = get_json(f"{relay.http_url}/api/runs/{run_id}/metrics")
        yield ExampleRun(relay, run_id, stored["messages"])
    finally:
        stop_superlink(home)
        relay.stop()
    assert not superlink_pids(home)


def test_the_example_uses_only_the_api_the_docs_page_shows():
    page = (PROJECT_DIR / "docs" / "add-to-your-app.md").read_text()
    imports = {
        f"from {node.module} import {alias.name}"
        for path in EXAMPLE_DIR.rglob("*.py")
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("fl_stream")
        for alias in node.names
    }
    assert imports == {
        "from fl_stream.flower import StreamingStrategy",
        "from fl_stream.flower import current_reporter",
        "from fl_stream.flower import progress_mod",
        "from fl_stream.flower import sys_metrics_mod",
        "from fl_stream.monitor.sender import MetricsWebSocketSender",
    }
    assert all(line in page for line in imports)


@pytest.mark.simulation
def test_the_relay_holds_the_whole_run_with_the_custom_metric_and_client_figures(example_run):
    stored, run_id = example_run.messages, example_run.run_id
    assert [m["seq"] for m in stored] == list(range(1, len(stored) + 1))
    for message in stored:
        validate_message(message)
        assert message["run_id"] == run_id
    # The clients' live progress shares the run; the server's messages keep their order.
    progress = [m["data"] for m in stored if m["type"] == "client_progress"]
    assert {(p["client_id"], p["round"]) for p in progress} == {
        (client, rnd) for client in ("0", "1") for rnd in range(1, ROUNDS + 1)
    }
    messages = [m for m in stored if m["type"] != "client_progress"]
    per_round = ["round_metrics", "client_metrics", "round_metrics", "client_metrics", "round_end"]
    assert [m["type"] for m in messages] == ["training_mode", *per_round * ROUNDS, "training_end"]

    mode = messages[0]["data"]
    assert (mode["is_federated"], mode["num_rounds"], mode["num_clients"]) == (True, ROUNDS, 2)
    assert mode["config"]["proximal-mu"] == 0.1  # the example's run config, as sent

    for data in (m["data"] for m in messages if m["type"] == "round_metrics"):
        assert data["metrics"].keys() >= METRICS
        assert 0.0 <= data["metrics"]["balanced_accuracy"] <= 1.0
    for data in (m["data"] for m in messages if m["type"] == "client_metrics"):
        assert sorted(c["client_id"] for c in data["clients"]) == ["0", "1"]  # partition ids
        for client in data["clients"]:
            assert client["device"] == "cpu"  # numpy: the mod found no torch, imported none
            assert client["metrics"].keys() >= METRICS | SYS_METRICS
            assert client["metrics"]["sys_wall_time"] > 0 and client["num_examples"] > 0
            assert math.isclose(
                client["metrics"]["sys_examples_per_second"],
                client["num_examples"] / client["metrics"]["sys_wall_time"],
                rel_tol=1e-6,
            )

    assert [m["data"]["eval_source"] for m in messages if m["type"] == "round_end"] == [
        EVAL_BY_CLIENTS
    ] * ROUNDS
    end = messages[-1]["data"]
    assert (end["status"], end["best_metric"]) == (COMPLETED, "balanced_accuracy")
    assert end["best_round"] in range(1, ROUNDS + 1)


@pytest.mark.simulation
@pytest.mark.browser
def test_the_dashboard_draws_a_chart_of_the_custom_metric(example_run):
    executable = find_chromium()
    if executable is None:
        pytest.skip("no chromium binary found")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, headless=True)
        try:
            page = browser.new_page()
            page.goto(f"{example_run.relay.http_url}/?run={example_run.run_id}")
            try:
                # Scrolled to, as a user would: charts far below the window wait until then.
                page.wait_for_function(
                    """() => {
                         const chart = document.querySelector('[data-metric="balanced_accuracy"]');
                         chart?.scrollIntoView();
                         return (chart?.data || []).some((trace) => trace.x?.length > 0);
                       }""",
                    timeout=15_000,
                )
            except sync_api.TimeoutError:
                charts = page.eval_on_selector_all(
                    "[data-metric]", "(divs) => divs.map((div) => div.dataset.metric)"
                )
                pytest.fail(f"no points on a balanced_accuracy chart; the page charts {charts}")
        finally:
            browser.close()
