"""The dashboard in a real browser: Playwright drives Debian's chromium against a real relay.

Every test starts a relay process (the ``relay`` fixture), publishes real messages over
WebSocket (the project's sender, or a plain client speaking the protocol) and reads what the
page drew from Plotly's own chart data (``graphDiv.data``) and the page's ``data-*``
attributes. Waits are bounded; nothing asserts on timing beyond them.

Without a chromium binary these tests skip, unless ``FL_STREAM_REQUIRE_BROWSER=1`` (set by
CI), which turns a missing browser into a failure. ``FL_STREAM_CHROMIUM`` names the binary
when it is not in Debian's place; ``FL_STREAM_ARTIFACTS`` is where screenshots go
(default ``artifacts/``).
"""

from __future__ import annotations

import copy
import csv
import io
import json
import math
import os
import random
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fl_stream.monitor import protocol
from fl_stream.monitor.protocol import EVAL_BY_SERVER, METRIC_NAMES, make_message
from fl_stream.monitor.sender import MetricsWebSocketSender
from tests.support import RelayProcess, get_json, publish

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[1]
METRICS = METRIC_NAMES
# The promise: a published message is on the charts within a second.
LIVE_WITHIN_MS = 1_000
# Reconnecting and replaying after an outage; generous for a loaded 2-core machine.
RECOVER_WITHIN_MS = 10_000
# Counts the page's Plotly draw calls: wraps them as the bundle assigns window.Plotly.
COUNT_DRAWS = """
(() => {
  let plotly;
  window.plotlyDraws = { react: 0, extendTraces: 0 };
  Object.defineProperty(window, "Plotly", {
    configurable: true,
    get: () => plotly,
    set(value) {
      for (const name of Object.keys(window.plotlyDraws)) {
        const draw = value[name];
        value[name] = function (...args) {
          window.plotlyDraws[name] += 1;
          return draw.apply(this, args);
        };
      }
      plotly = value;
    },
  });
})();
"""
Message = dict[str, Any]


# --------------------------------------------------------------------------- the browser


def find_chromium() -> str | None:
    """Debian's chromium binary, not the ``/usr/bin/chromium`` shell wrapper; None if absent.

    Looks at ``$FL_STREAM_CHROMIUM``, then Debian's and Ubuntu's install folders, then what
    ``dpkg -L chromium`` lists.
    """
    candidates = [
        os.environ.get("FL_STREAM_CHROMIUM", ""),
        "/usr/lib/chromium/chromium",
        "/usr/lib/chromium-browser/chromium-browser",
    ]
    if shutil.which("dpkg"):
        listing = subprocess.run(
            ["dpkg", "-L", "chromium"], capture_output=True, text=True, check=False
        ).stdout
        candidates += [line for line in listing.splitlines() if line.endswith("/chromium")]
    return next((path for path in candidates if _is_browser_binary(path)), None)


def _is_browser_binary(path: str) -> bool:
    """An executable file that is not a script (``/usr/bin/chromium`` is a shell wrapper)."""
    if not path or not Path(path).is_file() or not os.access(path, os.X_OK):
        return False
    with open(path, "rb") as file:
        return file.read(2) != b"#!"


def _no_browser(reason: str) -> None:
    if os.environ.get("FL_STREAM_REQUIRE_BROWSER") == "1":
        pytest.fail(f"{reason}, and FL_STREAM_REQUIRE_BROWSER=1 requires the browser tests")
    pytest.skip(f"{reason}: apt-get install chromium (Debian) to run the browser tests")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Chromium, headless, launched once for this module."""
    executable = find_chromium()
    if executable is None:
        _no_browser("no chromium binary found")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _no_browser("the playwright package is not installed (pip install -e '.[dev]')")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=executable,
            headless=True,
            args=[
                "--disable-background-networking",
                "--disable-component-update",
                "--no-first-run",
            ],
        )
        yield browser
        browser.close()


class Dashboard:
    """One browser tab on the relay's dashboard, with what its console reported."""

    def __init__(self, context: Any, relay: RelayProcess) -> None:
        self.context = context
        self.relay = relay
        self.page = context.new_page()
        self.errors: list[str] = []
        self.page.on("console", self._on_console)
        self.page.on("pageerror", lambda error: self.errors.append(f"pageerror: {error}"))

    def _on_console(self, message: Any) -> None:
        if message.type == "error":
            self.errors.append(f"console: {message.text}")

    def open(self, query: str = "") -> Dashboard:
        self.page.goto(f"{self.relay.http_url}/{query}")
        self.wait("document.body.dataset.connection === 'open'", RECOVER_WITHIN_MS)
        return self

    def wait(self, condition: str, timeout_ms: int, arg: Any = None) -> None:
        """Wait until the JavaScript expression (or function of ``arg``) is true."""
        self.page.wait_for_function(condition, arg=arg, timeout=timeout_ms)

    def wait_for_seq(self, seq: int, timeout_ms: int = RECOVER_WITHIN_MS) -> None:
        self.wait("seq => Number(document.body.dataset.lastSeq) >= seq", timeout_ms, seq)

    def charts(self) -> dict[str, dict[str, dict[str, list]]]:
        """What Plotly holds: metric -> series name -> {"x": [...], "y": [...]}."""
        return self.page.evaluate(
            """() => Object.fromEntries([...document.querySelectorAll('[id^="chart-"]')].map(
                 (div) => [div.dataset.metric, Object.fromEntries((div.data || []).map(
                   (trace) => [trace.name, {x: Array.from(trace.x), y: Array.from(trace.y)}]))]))"""
        )

    def text(self, selector: str) -> str:
        return self.page.inner_text(selector)

    def download(self, button: str) -> str:
        with self.page.expect_download() as info:
            self.page.click(button)
        return Path(info.value.path()).read_text()


@pytest.fixture
def dashboard(browser: Any, relay: RelayProcess) -> Iterator[Dashboard]:
    """A fresh browser context (no cache, no storage) on the test's relay."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
    yield Dashboard(context, relay)
    context.close()


# --------------------------------------------------------------------------- runs to publish


def _metrics(step: float, shift: float = 0.0) -> dict[str, float]:
    """One value per metric of the protocol, in METRIC_NAMES order (the loss, then scores)."""
    accuracy = 0.6 + 0.3 * (1 - math.exp(-step / 2)) + shift
    loss = 0.9 * math.exp(-step / 3) + 0.1 - shift
    scores = (
        accuracy,
        accuracy - 0.03,
        accuracy + 0.02,
        accuracy - 0.01,
        min(0.99, accuracy + 0.05),
    )
    return dict(zip(METRIC_NAMES, (loss, *scores), strict=True))


def centralized_epochs(run_id: str, first: int, last: int) -> list[Message]:
    """epoch_end train + val for epochs ``first..last``."""
    return [
        make_message(
            "epoch_end",
            {
                "epoch": epoch,
                "phase": phase,
                "metrics": _metrics(epoch, 0.02 if phase == "train" else 0.0),
            },
            run_id=run_id,
        )
        for epoch in range(first, last + 1)
        for phase in ("train", "val")
    ]


def federated_run(
    run_id: str,
    rounds: int = 5,
    clients: int = 3,
    *,
    config: dict[str, Any] | None = None,
    finished: bool = True,
    first_round: int = 1,
    total_rounds: int | None = None,
    shift: float = 0.0,
) -> list[Message]:
    """A federated run as StreamingStrategy streams it.

    training_mode (with ``config``, if given; not when ``first_round`` > 1), then per round
    ``first_round..rounds``: round_metrics + client_metrics for ``train`` and ``evaluate``,
    round_end (with the server's centralized evaluation), and training_end when
    ``finished``; ``total_rounds`` (default ``rounds``) is the planned number. Client 1 has
    worse metrics (an outlier) and client 2 trains three times slower (a straggler).
    ``shift`` moves every score (to tell runs apart).
    """
    rng = random.Random(first_round)
    total = total_rounds or rounds
    info: dict[str, Any] = {"is_federated": True, "num_rounds": total, "num_clients": clients}
    if config is not None:
        info["config"] = config
    messages = []
    if first_round == 1:
        messages.append(make_message("training_mode", info, run_id=run_id))
    for rnd in range(first_round, rounds + 1):
        for phase, offset in (("train", shift + 0.03), ("evaluate", shift)):
            rows = []
            for client in range(clients):
                noise = rng.uniform(-0.02, 0.02) - (0.15 if client == 1 else 0.0)
                metrics = _metrics(rnd, offset + noise)
                if phase == "train":
                    metrics["train-time"] = rng.uniform(1.0, 1.3) * (3.0 if client == 2 else 1.0)
                rows.append(
                    {
                        "client_id": str(client),
                        "node_id": str(7000 + client),
                        "num_examples": 200 + 50 * client,
                        "metrics": metrics,
                    }
                )
            head = {"round": rnd, "total_rounds": total, "phase": phase}
            messages.append(
                make_message(
                    "round_metrics",
                    {**head, "num_clients": clients, "metrics": _metrics(rnd, offset)},
                    run_id=run_id,
                )
            )
            messages.append(
                make_message("client_metrics", {**head, "clients": rows}, run_id=run_id)
            )
        messages.append(
            make_message(
                "round_end",
                {
                    "round": rnd,
                    "total_rounds": total,
                    "fit_metrics": _metrics(rnd, shift + 0.03),
                    "eval_metrics": _metrics(rnd, shift - 0.02),
                    "eval_source": EVAL_BY_SERVER,
                },
                run_id=run_id,
            )
        )
    if not finished:
        return messages
    summary = {
        "run_id": run_id,
        "status": "completed",
        "best_round": rounds,
        "final_metrics": _metrics(rounds, -0.02),
        "best_metric": "loss",
    }
    messages.append(make_message("training_end", summary, run_id=run_id))
    return messages


def publish_all(relay: RelayProcess, messages: list[Message]) -> list[int]:
    """Publish on a plain WebSocket connection; return the seqs the relay gave them."""
    replies = publish(relay.ws_url, messages)
    assert [reply["type"] for reply in replies] == ["ack"] * len(messages), replies[:3]
    return [reply["data"]["seq"] for reply in replies]


def artifact_path(name: str) -> Path:
    folder = Path(os.environ.get("FL_STREAM_ARTIFACTS", REPO / "artifacts"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder / name


# --------------------------------------------------------------------------- tests


def test_page_loads_with_no_console_errors(dashboard: Dashboard) -> None:
    dashboard.open()
    # Plotly loads async (the page connects meanwhile): the six placeholder charts follow.
    dashboard.wait(
        "n => document.querySelectorAll('.js-plotly-plot').length === n",
        RECOVER_WITHIN_MS,
        len(METRICS),
    )

    assert dashboard.page.evaluate("typeof Plotly") == "object"  # served by the relay, no CDN
    assert dashboard.page.locator(".js-plotly-plot").count() == len(METRICS)
    assert dashboard.text("#connection-text") == "live"
    assert dashboard.page.is_visible("#empty-state")
    assert dashboard.errors == []


def test_published_messages_appear_in_the_charts_within_a_second(
    dashboard: Dashboard, relay: RelayProcess, tmp_path: Path
) -> None:
    dashboard.open()
    with MetricsWebSocketSender(
        relay.ws_url, run_id="live", log_path=tmp_path / "live.jsonl"
    ) as sender:
        sender.send_training_mode(is_federated=False, num_rounds=0, num_clients=0, num_epochs=4)
        sender.send_epoch_end(1, "train", _metrics(1))
        sender.send_epoch_end(1, "val", {**_metrics(1), "auroc": float("nan")})
        assert sender.flush(10)
        dashboard.wait(
            "() => document.getElementById('chart-loss').data?.length === 2", LIVE_WITHIN_MS
        )

        sender.send_epoch_end(2, "train", _metrics(2))
        assert sender.flush(10)
        dashboard.wait(
            "() => document.getElementById('chart-loss').data[0].x.length === 2", LIVE_WITHIN_MS
        )
        dashboard.wait_for_seq(4, LIVE_WITHIN_MS)  # and on every chart

    charts = dashboard.charts()
    assert charts["loss"]["train"] == {"x": [1, 2], "y": [_metrics(1)["loss"], _metrics(2)["loss"]]}
    assert charts["accuracy"]["val"] == {"x": [1], "y": [_metrics(1)["accuracy"]]}
    assert charts["auroc"]["val"] == {"x": [1], "y": [None]}  # "NaN" on the wire: a gap
    assert dashboard.page.get_attribute("body", "data-run-id") == "live"
    assert dashboard.text("#mode") == "centralized"
    assert dashboard.text("#progress-text") == "epoch 2 of 4"
    assert dashboard.text("#eta") != "—"  # an estimate needs the planned number of epochs
    assert dashboard.errors == []


def test_page_opened_after_500_messages_shows_all_500(
    dashboard: Dashboard, relay: RelayProcess
) -> None:
    seqs = publish_all(relay, centralized_epochs("late", 1, 250))
    assert seqs == list(range(1, 501))

    dashboard.open()
    dashboard.wait_for_seq(500)

    charts = dashboard.charts()
    for metric in METRICS:
        for phase in ("train", "val"):
            assert charts[metric][phase]["x"] == list(range(1, 251)), (metric, phase)
    assert dashboard.text("#message-count") == "500"
    assert dashboard.errors == []


def test_page_resumes_from_its_last_seq_after_a_relay_restart(
    dashboard: Dashboard, relay: RelayProcess
) -> None:
    publish_all(relay, centralized_epochs("restart", 1, 5))  # seq 1..10
    dashboard.open()
    dashboard.wait_for_seq(10)

    # Offline emulation blocks the page's new connections (not the open one), so the page
    # cannot reconnect before the outage's messages are stored: it can only get them by
    # resuming from its last seq.
    dashboard.context.set_offline(True)
    relay.restart()
    dashboard.wait("document.body.dataset.connection !== 'open'", RECOVER_WITHIN_MS)
    outage_seqs = publish_all(relay, centralized_epochs("restart", 6, 8))
    assert outage_seqs == list(range(11, 17))
    assert dashboard.page.get_attribute("body", "data-last-seq") == "10"

    dashboard.context.set_offline(False)
    dashboard.wait_for_seq(16)
    publish_all(relay, centralized_epochs("restart", 9, 9))  # and live messages follow
    dashboard.wait_for_seq(18, LIVE_WITHIN_MS)

    assert dashboard.text("#connection-text") == "live"
    charts = dashboard.charts()
    for metric in METRICS:
        assert charts[metric]["train"]["x"] == list(range(1, 10)), metric
        assert charts[metric]["val"]["x"] == list(range(1, 10)), metric
    held = json.loads(dashboard.download("#download-json"))
    assert [message["seq"] for message in held] == list(range(1, 19))  # no gap, no duplicate


def test_a_relay_on_another_database_shows_the_run_anew(
    dashboard: Dashboard, relay: RelayProcess, relay_factory: Any
) -> None:
    publish_all(relay, centralized_epochs("swap", 1, 3))  # seq 1..6
    dashboard.open("?run=swap")
    dashboard.wait_for_seq(6)
    dashboard.context.set_offline(True)
    relay.stop()
    other = relay_factory(port=relay.port)  # same address, a new database: seqs restart
    publish_all(other, centralized_epochs("swap", 1, 1))  # seq 1..2
    dashboard.context.set_offline(False)
    # The page's seqs 1..6 are the old database's: it drops them and reads the run anew.
    dashboard.wait("() => document.body.dataset.lastSeq === '2'", RECOVER_WITHIN_MS)
    assert dashboard.charts()["loss"]["train"]["x"] == [1]
    held = json.loads(dashboard.download("#download-json"))
    assert [message["seq"] for message in held] == [1, 2]
    # (The console notes the connections refused while offline; no script failed.)
    assert not [error for error in dashboard.errors if error.startswith("pageerror")]


def test_heartbeat_replaces_a_link_that_went_silent(
    dashboard: Dashboard, relay: RelayProcess
) -> None:
    publish_all(relay, centralized_epochs("silent", 1, 1))
    dashboard.open("?heartbeat=0.3")  # ping every 0.3 s: silent for 0.75 s means dead
    dashboard.wait_for_seq(2)

    # A frozen relay keeps the TCP connection open: only the heartbeat can tell it is dead.
    assert relay.pid is not None
    os.kill(relay.pid, signal.SIGSTOP)
    try:
        dashboard.wait("document.body.dataset.connection !== 'open'", RECOVER_WITHIN_MS)
    finally:
        os.kill(relay.pid, signal.SIGCONT)
    dashboard.wait("document.body.dataset.connection === 'open'", RECOVER_WITHIN_MS)
    publish_all(relay, centralized_epochs("silent", 2, 2))
    dashboard.wait_for_seq(4, LIVE_WITHIN_MS)
    assert dashboard.charts()["loss"]["train"]["x"] == [1, 2]


def test_10000_points_are_drawn_in_batches_with_spikes_and_zoomable_detail(
    dashboard: Dashboard, relay: RelayProcess
) -> None:
    messages = centralized_epochs("big", 1, 5000)  # 10,000 messages
    spike = next(m for m in messages if m["data"]["epoch"] == 3333 and m["data"]["phase"] == "val")
    spike["data"]["metrics"]["loss"] = 50.0  # one epoch's spike must stay visible
    publish_all(relay, messages)
    dashboard.page.add_init_script(COUNT_DRAWS)
    dashboard.open()
    dashboard.wait_for_seq(10_000, 30_000)
    # The replay is drawn once, when it ends: no chart grows one message at a time.
    assert dashboard.page.evaluate("window.plotlyDraws.extendTraces") == 0

    publish_all(relay, centralized_epochs("big", 5001, 5500))  # 1,000 live messages
    dashboard.wait_for_seq(11_000, RECOVER_WITHIN_MS)
    extends_per_chart = dashboard.page.evaluate("window.plotlyDraws.extendTraces") / len(METRICS)
    assert extends_per_chart <= 100, "expected batches of many messages, not a draw per message"
    # 5,500 points a line are drawn as min/max buckets: far fewer points, every one of them a
    # real one, the first and the newest epoch kept, and the spike drawn at its height.
    charts = dashboard.charts()
    expected = {
        m["data"]["epoch"]: m["data"]["metrics"]["loss"]
        for m in messages
        if m["data"]["phase"] == "val"
    }
    val = charts["loss"]["val"]
    assert len(val["x"]) < 2000
    assert val["x"][0] == 1 and val["x"][-1] == 5500 and val["x"] == sorted(val["x"])
    assert max(val["y"]) == 50.0 and val["x"][val["y"].index(50.0)] == 3333
    assert all(expected[x] == y for x, y in zip(val["x"], val["y"], strict=True) if x <= 5000)
    for metric in METRICS:
        for phase in ("train", "val"):
            assert charts[metric][phase]["x"][-1] == 5500, (metric, phase)

    # Zoomed in, the chart draws every point of the range.
    dashboard.page.evaluate(
        "Plotly.relayout(document.getElementById('chart-loss'), {'xaxis.range': [3300, 3400]})"
    )
    # (Not "holds 3301": a min/max bucket of the whole run may hold it too.)
    dashboard.wait(
        "() => document.getElementById('chart-loss').data[1].x[0] === 3299", LIVE_WITHIN_MS
    )
    zoomed = dashboard.charts()["loss"]["val"]
    assert zoomed["x"] == list(range(3299, 3402))
    assert zoomed["y"] == [expected[x] for x in zoomed["x"]]
    # ... and the downloads hold every message.
    held = json.loads(dashboard.download("#download-json"))
    assert [message["seq"] for message in held] == list(range(1, 11_001))
    assert dashboard.errors == []


def test_a_new_run_is_followed_and_listed(dashboard: Dashboard, relay: RelayProcess) -> None:
    publish_all(relay, centralized_epochs("first", 1, 1))
    dashboard.open()
    dashboard.wait("document.body.dataset.runId === 'first'", RECOVER_WITHIN_MS)

    publish_all(relay, federated_run("second", rounds=1)[:2])
    dashboard.wait("document.body.dataset.runId === 'second'", LIVE_WITHIN_MS)
    dashboard.wait(
        "document.querySelectorAll('#run-picker option').length === 3", RECOVER_WITHIN_MS
    )

    options = dashboard.page.eval_on_selector_all(
        "#run-picker option", "options => options.map((o) => [o.value, o.textContent])"
    )
    assert [value for value, _ in options] == ["", "second", "first"]  # follow, newest first
    assert options[1][1].startswith("● second · federated · running")
    dashboard.page.select_option("#run-picker", "first")
    dashboard.wait("document.body.dataset.runId === 'first'", LIVE_WITHIN_MS)
    assert "run=first" in dashboard.page.url
    assert dashboard.errors == []


def test_early_stopping_and_error_banners(dashboard: Dashboard, relay: RelayProcess) -> None:
    run = "stopped"
    messages = [
        make_message(
            "training_mode", {"is_federated": False, "num_rounds": 0, "num_clients": 0}, run_id=run
        ),
        *centralized_epochs(run, 1, 3),
        make_message(
            "early_stopping",
            {
                "epoch": 3,
                "best_metric_value": 0.42,
                "metric_name": "val_loss",
                "patience": 2,
                "reason": "val_loss did not improve for 2 epochs",
            },
            run_id=run,
        ),
        make_message(
            "error",
            {"error": "disk full while saving the checkpoint", "error_type": "OSError"},
            run_id=run,
        ),
        make_message(
            "training_end",
            {
                "run_id": run,
                "status": "early_stopped",
                "best_epoch": 1,
                "final_metrics": {"val_loss": 0.42, "val_accuracy": "NaN"},
            },
            run_id=run,
        ),
    ]
    publish_all(relay, messages)
    dashboard.open()
    dashboard.wait_for_seq(len(messages))
    dashboard.wait("!document.getElementById('final-results').hidden", RECOVER_WITHIN_MS)

    banners = dashboard.page.locator("#banners .banner")
    assert banners.count() == 2
    assert "val_loss did not improve for 2 epochs" in banners.nth(0).inner_text()
    assert "OSError" in banners.nth(1).inner_text()
    assert dashboard.text("#status") == "early-stopped"
    assert dashboard.text("#progress-text") == "epoch 3"  # original format: no num_epochs
    final = dashboard.text("#final-results")
    assert "0.4200" in final and "NaN" in final and "best epoch 1" in final
    assert dashboard.errors == []


def test_finished_federated_run_screenshot_and_downloads(
    dashboard: Dashboard, relay: RelayProcess
) -> None:
    messages = federated_run("fed-demo", rounds=5, clients=3)
    publish_all(relay, messages)
    dashboard.open()
    dashboard.wait_for_seq(len(messages))
    dashboard.wait("!document.getElementById('final-results').hidden", RECOVER_WITHIN_MS)

    charts = dashboard.charts()
    assert set(charts["accuracy"]) == {"fit", "eval", "central eval"}
    assert all(series["x"] == [1, 2, 3, 4, 5] for series in charts["accuracy"].values())
    assert dashboard.text("#progress-text") == "round 5 of 5"
    assert dashboard.text("#status") == "completed"
    heatmap = dashboard.page.evaluate("document.getElementById('client-heatmap').data[0]")
    assert heatmap["y"] == ["0", "1", "2"] and heatmap["x"] == [1, 2, 3, 4, 5]
    rows = dashboard.page.eval_on_selector_all(
        "#client-table tbody tr", "rows => rows.map((row) => row.innerText)"
    )
    assert len(rows) == 3
    # Flagged clients first (in client order), then the others.
    assert [row.split("\t")[0] for row in rows] == ["1", "2", "0"]
    assert "outlier" in rows[0]
    assert "straggler (train-time)" in rows[1]
    assert "outlier" not in rows[2] and "straggler" not in rows[2]

    table = list(csv.DictReader(io.StringIO(dashboard.download("#download-csv"))))
    client_rows = [row for row in table if row["type"] == "client_metrics"]
    assert len(client_rows) == 5 * 2 * 3  # rounds x phases x clients
    assert {row["client_id"] for row in client_rows} == {"0", "1", "2"}
    assert len(json.loads(dashboard.download("#download-json"))) == len(messages)

    path = artifact_path("dashboard-federated.png")
    dashboard.page.screenshot(path=str(path), full_page=True)
    print(f"dashboard screenshot: {path}")
    assert path.stat().st_size > 10_000
    assert dashboard.errors == []


def _round_end(run_id: str, rnd: int, **extra: Any) -> Message:
    data = {
        "round": rnd,
        "total_rounds": 2,
        "fit_metrics": _metrics(rnd, 0.03),
        "eval_metrics": _metrics(rnd),
        **extra,
    }
    return make_message("round_end", data, run_id=run_id)


def _round_metrics(run_id: str, rnd: int, phase: str, metrics: dict[str, float]) -> Message:
    data = {"round": rnd, "total_rounds": 2, "phase": phase, "metrics": metrics}
    return make_message("round_metrics", data, run_id=run_id)


def test_eval_lines_follow_round_ends_eval_source(
    dashboard: Dashboard, relay: RelayProcess
) -> None:
    # fraction-evaluate=0 with centralized evaluation: no client evaluates, and the server's
    # evaluation is still drawn as the server's.
    server_only = [
        message
        for rnd in (1, 2)
        for message in (
            _round_metrics("server-only", rnd, "train", _metrics(rnd, 0.03)),
            _round_end("server-only", rnd, eval_source=EVAL_BY_SERVER),
        )
    ]
    # The original format has no eval_source: its eval metrics are the clients', even where
    # they differ from the clients' evaluate averages (nothing is guessed from the values).
    original = [
        message
        for rnd in (1, 2)
        for message in (
            _round_metrics("original", rnd, "evaluate", _metrics(rnd, 0.1)),
            _round_end("original", rnd),
        )
    ]
    publish_all(relay, server_only + original)

    dashboard.open("?run=server-only")
    dashboard.wait_for_seq(len(server_only))
    charts = dashboard.charts()
    assert set(charts["loss"]) == {"fit", "central eval"}
    assert charts["loss"]["central eval"]["y"] == [_metrics(1)["loss"], _metrics(2)["loss"]]

    dashboard.page.select_option("#run-picker", "original")
    dashboard.wait(
        "() => document.body.dataset.runId === 'original' && document.body.dataset.lastSeq === '4'",
        RECOVER_WITHIN_MS,
    )
    charts = dashboard.charts()
    assert set(charts["loss"]) == {"fit", "eval"}
    assert charts["loss"]["eval"]["y"] == [_metrics(1)["loss"], _metrics(2)["loss"]]
    assert dashboard.errors == []


def test_the_pages_constants_come_from_the_relay(dashboard: Dashboard, relay: RelayProcess) -> None:
    served = get_json(f"{relay.http_url}/api/protocol")
    assert served == protocol.describe()
    # A relay describing another protocol gets a page that follows it: the page itself
    # declares no metric, label or status.
    changed = copy.deepcopy(served)
    changed["metric_names"] = [*served["metric_names"][:2], "dice"]
    changed["fraction_metrics"].append("dice")
    changed["round_phases"]["train"] = "local fit"
    changed["status_labels"][protocol.COMPLETED] = "all done"
    changed["default_run"] = "unnamed"
    dashboard.page.route("**/api/protocol", lambda route: route.fulfill(json=changed))
    dashboard.open()
    held = dashboard.page.evaluate("import('./static/protocol.js').then((m) => m.PROTOCOL)")
    assert held == changed
    assert dashboard.page.evaluate("import('./static/protocol.js').then((m) => m.DEFAULT_RUN)") == (
        "unnamed"
    )

    run = "relabelled"
    metrics = {**_metrics(1), "dice": 0.5}
    end = {"run_id": run, "status": protocol.COMPLETED, "final_metrics": metrics}
    publish_all(
        relay,
        [
            _round_metrics(run, 1, "train", metrics),
            make_message("training_end", end, run_id=run),
        ],
    )
    dashboard.wait_for_seq(2)
    charts = dashboard.charts()
    # Every metric gets a chart: the served metric_names first, in their order, then the rest.
    others = sorted(set(metrics) - set(changed["metric_names"]))
    assert list(charts) == [*changed["metric_names"], *others]
    assert charts["dice"] == {"local fit": {"x": [1], "y": [0.5]}}
    assert dashboard.text("#status") == "all done"
    assert dashboard.errors == []


def test_a_page_that_cannot_load_the_protocol_says_so(dashboard: Dashboard) -> None:
    dashboard.page.route("**/api/protocol", lambda route: route.fulfill(status=503, body="down"))
    dashboard.page.goto(f"{dashboard.relay.http_url}/")
    dashboard.wait(
        "document.getElementById('empty-state').textContent.includes('protocol')",
        RECOVER_WITHIN_MS,
    )
    assert "could not load the protocol from the relay (HTTP 503)" in dashboard.text("#empty-state")
    assert any("could not load the protocol" in error for error in dashboard.errors)
    assert dashboard.page.locator(".js-plotly-plot").count() == 0


# --------------------------------------------------------------------------- every metric


def _plot_layout(dashboard: Dashboard, metric: str) -> Any:
    return dashboard.page.evaluate(
        'm => document.querySelector(`[data-metric="${m}"]`).layout', metric
    )


def test_a_custom_metric_gets_its_own_chart(dashboard: Dashboard, relay: RelayProcess) -> None:
    run = "custom"
    extra = {"dice": 0.7, "val_throughput": 250.0, "train_error_rate": 0.2}
    publish_all(
        relay,
        [
            _round_metrics(run, 1, "train", {**_metrics(1), **extra}),
            _round_metrics(run, 2, "train", {**_metrics(2), **extra, "dice": 0.8}),
        ],
    )
    dashboard.open(f"?run={run}")
    dashboard.wait_for_seq(2)

    order = dashboard.page.eval_on_selector_all(
        "[data-metric]", "plots => plots.map((plot) => plot.dataset.metric)"
    )
    # The protocol's six first, in their order; then the others, grouped by prefix.
    assert order == [*METRICS, "dice", "val_throughput", "train_error_rate"]
    charts = dashboard.charts()
    assert charts["dice"] == {"fit": {"x": [1, 2], "y": [0.7, 0.8]}}
    assert charts["val_throughput"]["fit"]["y"] == [250.0, 250.0]
    # A rate in [0, 1] keeps the fixed axis of the fraction metrics; other values do not.
    assert _plot_layout(dashboard, "dice")["yaxis"]["range"] == [0, 1.02]
    assert _plot_layout(dashboard, "train_error_rate")["yaxis"]["range"] == [0, 1.02]
    assert _plot_layout(dashboard, "accuracy")["yaxis"]["range"] == [0, 1.02]
    assert _plot_layout(dashboard, "val_throughput")["yaxis"]["autorange"] is True
    assert dashboard.errors == []


def test_many_metrics_get_a_filter_and_folded_groups(
    dashboard: Dashboard, relay: RelayProcess
) -> None:
    run = "many"
    names = [f"{prefix}{metric}" for prefix in ("val_", "train_", "test_") for metric in METRICS]
    names += [f"sys_{name}" for name in ("wall_time", "peak_rss_mb", "examples_per_second")]
    names += ["dice", "iou", "hausdorff"]
    metrics = {**_metrics(1), **{name: 0.5 for name in names}}
    assert len(metrics) >= 30
    publish_all(relay, [_round_metrics(run, 1, "train", metrics)])
    dashboard.open(f"?run={run}")
    dashboard.wait_for_seq(1)

    page = dashboard.page
    assert page.is_visible(".chart-filter")
    groups = page.eval_on_selector_all(
        ".chart-group", "gs => gs.map((g) => [g.dataset.group, g.open])"
    )
    assert groups == [
        ["main", True],
        ["other", False],
        ["val_", False],
        ["train_", False],
        ["test_", False],
        ["sys_", False],
    ]
    drawn = 'm => Boolean(document.querySelector(`[data-metric="${m}"]`).data)'
    assert all(page.evaluate(drawn, metric) for metric in METRICS)
    assert not any(page.evaluate(drawn, name) for name in names)  # folded: no Plotly work

    page.click('.chart-group[data-group="val_"] > summary')  # unfold one group
    dashboard.wait(f"() => ({drawn})('val_loss') && ({drawn})('val_auroc')", LIVE_WITHIN_MS)
    assert not page.evaluate(drawn, "test_loss")

    page.fill(".chart-filter", "dice")  # the filter shows matching charts, wherever they are
    dashboard.wait(f"() => ({drawn})('dice')", LIVE_WITHIN_MS)
    visible = page.eval_on_selector_all(
        "figure.chart",
        "fs => fs.filter((f) => f.offsetParent)"
        ".map((f) => f.querySelector('[data-metric]').dataset.metric)",
    )
    assert visible == ["dice"]
    page.fill(".chart-filter", "")
    assert page.eval_on_selector('.chart-group[data-group="val_"]', "g => g.open")
    assert not page.eval_on_selector('.chart-group[data-group="test_"]', "g => g.open")
    assert dashboard.errors == []


def test_charts_far_out_of_the_window_are_drawn_when_scrolled_near(
    dashboard: Dashboard, relay: RelayProcess
) -> None:
    run = "tall"
    names = [f"{prefix}{metric}" for prefix in ("val_", "train_", "test_") for metric in METRICS]
    metrics = {**_metrics(1), **{name: 0.5 for name in names}}  # 24 charts: under the folding
    publish_all(relay, [_round_metrics(run, 1, "train", metrics)])
    dashboard.open(f"?run={run}")
    dashboard.wait_for_seq(1)
    page = dashboard.page
    drawn = 'm => document.querySelector(`[data-metric="${m}"]`).data?.[0]?.x.at(-1) ?? null'
    assert all(page.evaluate(drawn, metric) == 1 for metric in METRICS)
    assert page.evaluate(drawn, "test_auroc") is None  # 2,000 px down: no Plotly work yet

    page.eval_on_selector('[data-metric="test_auroc"]', "e => e.scrollIntoView()")
    dashboard.wait(f"() => ({drawn})('test_auroc') === 1", LIVE_WITHIN_MS)
    # Live points reach the charts on screen, and those above once scrolled back to.
    publish_all(relay, [_round_metrics(run, 2, "train", {**metrics, "test_auroc": 0.7})])
    dashboard.wait(f"() => ({drawn})('test_auroc') === 2", LIVE_WITHIN_MS)
    page.evaluate("window.scrollTo(0, 0)")
    dashboard.wait(f"() => ({drawn})('loss') === 2", LIVE_WITHIN_MS)
    assert dashboard.errors == []


def _with_list_values(message: Message) -> Message:
    """A message with list- and string-valued metrics added (as a relay might allow)."""
    data = message.get("data", {})
    if message.get("type") == "round_metrics":
        data["metrics"]["confusion"] = [[40, 2], [3, 55]]
        data["metrics"]["note"] = "warming up"
    if message.get("type") == "client_metrics":
        data["clients"][0]["metrics"]["histogram"] = [1, 2, 3]
    return message


def test_a_list_valued_metric_shows_in_details_without_breaking_the_page(
    dashboard: Dashboard, relay: RelayProcess
) -> None:
    messages = federated_run("lists", rounds=2, clients=2)
    stored = [m for m in messages if m["type"] == "training_mode" or m["data"].get("round") == 1]
    publish_all(relay, stored)

    # The relay refuses such values today: the page is handed them, stored (over HTTP) and
    # live (on its WebSocket).
    def history(route: Any) -> None:
        run = route.fetch().json()
        run["messages"] = [_with_list_values(message) for message in run["messages"]]
        route.fulfill(json=run)

    def live(ws: Any) -> None:
        server = ws.connect_to_server()
        server.on_message(lambda text: ws.send(json.dumps(_with_list_values(json.loads(text)))))
        ws.on_message(server.send)

    dashboard.page.route("**/api/runs/lists/metrics*", history)
    dashboard.page.route_web_socket(lambda url: "subscribe" in url, live)
    dashboard.open("?run=lists")
    dashboard.wait_for_seq(len(stored))
    publish_all(relay, messages[len(stored) :])
    dashboard.wait_for_seq(len(messages))
    dashboard.wait(
        "() => document.getElementById('details-rows').textContent.includes('round 2')",
        LIVE_WITHIN_MS,
    )

    rows = dashboard.page.eval_on_selector_all(
        "#details-rows tr", "rows => rows.map((r) => [...r.cells].map((c) => c.textContent))"
    )
    assert ["confusion", "eval, round 2", "[[40,2],[3,55]]"] in rows
    assert ["confusion", "fit, round 2", "[[40,2],[3,55]]"] in rows
    assert ["note", "fit, round 2", "warming up"] in rows
    assert ["histogram", "client 0 · eval, round 2", "[1,2,3]"] in rows
    charts = dashboard.charts()
    assert "confusion" not in charts and "note" not in charts  # never drawn
    assert charts["loss"]["fit"]["x"] == [1, 2]
    assert dashboard.page.locator("#client-table tbody tr").count() == 2
    table = list(csv.DictReader(io.StringIO(dashboard.download("#download-csv"))))
    assert any(row["confusion"] == "[[40,2],[3,55]]" for row in table)
    assert dashboard.errors == []


def test_the_page_does_not_fetch_the_run_list_after_training_end(
    dashboard: Dashboard, relay: RelayProcess
) -> None:
    listed: list[str] = []
    dashboard.page.on(
        "request",
        lambda request: listed.append(request.url) if request.url.endswith("/api/runs") else None,
    )
    dashboard.open()
    messages = federated_run("ends", rounds=2, clients=2)
    publish_all(relay, messages[:-1])
    dashboard.wait("document.body.dataset.runId === 'ends'", RECOVER_WITHIN_MS)
    publish_all(relay, messages[-1:])  # training_end
    dashboard.wait("!document.getElementById('final-results').hidden", RECOVER_WITHIN_MS)
    dashboard.wait(
        "() => document.querySelector('#run-picker option[value=\"ends\"]')?.dataset.status"
        " === 'completed'",
        RECOVER_WITHIN_MS,
    )
    publish_all(relay, federated_run("next", rounds=1, clients=2))  # and a run after it
    dashboard.wait("document.body.dataset.runId === 'next'", RECOVER_WITHIN_MS)

    assert len(listed) == 1, listed  # once, at the start; run_summary frames did the rest
    assert dashboard.errors == []


def test_the_client_view_shows_devices_and_system_figures(
    dashboard: Dashboard, relay: RelayProcess
) -> None:
    messages = federated_run("sys", rounds=3, clients=4)
    for message in messages:
        if message["type"] != "client_metrics":
            continue
        for row in message["data"]["clients"]:
            client = int(row["client_id"])
            row["device"] = "cuda:0" if client == 0 else "cpu"
            row["metrics"].pop("train-time", None)  # only the client mod's figures
            row["metrics"]["sys_wall_time"] = 4.0 if client == 3 else 1.0 + 0.01 * client
            row["metrics"]["sys_peak_rss_mb"] = 900.0 + client
            row["metrics"]["sys_examples_per_second"] = 250.0
    publish_all(relay, messages)
    dashboard.open("?run=sys")
    dashboard.wait_for_seq(len(messages))

    page = dashboard.page
    header = page.eval_on_selector_all(
        "#client-table thead th", "cells => cells.map((c) => c.textContent)"
    )
    assert header[:4] == ["client", "device", "examples", "sys_wall_time"]
    assert {"sys_examples_per_second", "sys_peak_rss_mb"} <= set(header)
    rows = page.eval_on_selector_all(
        "#client-table tbody tr", "rows => rows.map((r) => [...r.cells].map((c) => c.textContent))"
    )
    by_client = {row[0]: row for row in rows}
    assert by_client["0"][1] == "cuda:0" and by_client["2"][1] == "cpu"
    assert "straggler (sys_wall_time)" in by_client["3"][-1]
    assert "straggler" not in by_client["0"][-1]
    # Every system figure can be shown per client and round.
    choices = page.eval_on_selector_all("#client-metric option", "os => os.map((o) => o.value)")
    assert "train|sys_wall_time" in choices
    page.select_option("#client-metric", "train|sys_wall_time")
    dashboard.wait(
        "() => document.getElementById('client-heatmap').data[0].z[3][0] === 4", LIVE_WITHIN_MS
    )
    # A click on the heatmap shows that round in the table.
    page.evaluate(
        "() => document.getElementById('client-heatmap').emit('plotly_click', {points: [{x: 1}]})"
    )
    dashboard.wait(
        "() => document.getElementById('client-table-caption').textContent === 'fit, round 1'",
        LIVE_WITHIN_MS,
    )
    assert dashboard.errors == []
