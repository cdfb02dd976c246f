"""The dashboard on a long federated run with many clients, in a real browser.

Functional, not timed (the timings are ``benchmarks/dashboard_scale.py``'s): a stored run of
200 rounds x 20 clients is drawn completely, the per-client view shows a window of recent
rounds that scrolls back, and live rounds keep arriving after it. Fixtures and run builders
come from ``tests/test_dashboard.py``.
"""

from __future__ import annotations

import csv
import io
import json
import re
from typing import Any

import pytest

from tests.support import RelayProcess
from tests.test_dashboard import (
    METRICS,
    RECOVER_WITHIN_MS,
    Dashboard,
    browser,
    dashboard,
    federated_run,
    publish_all,
)

__all__ = ["browser", "dashboard"]  # fixtures used by the tests below

pytestmark = pytest.mark.browser

ROUNDS, CLIENTS, LIVE = 200, 20, 3
LINES = ("fit", "eval", "central eval")
# The per-client view shows this many rounds at a time (relay/static/clients.js WINDOW).
WINDOW = 30


def _heatmap(dashboard: Dashboard) -> dict:
    return dashboard.page.evaluate(
        "() => { const t = document.getElementById('client-heatmap').data[0];"
        " return {x: Array.from(t.x), y: Array.from(t.y)}; }"
    )


def test_a_200_by_20_run_is_drawn_completely_and_live_rounds_keep_arriving(
    dashboard: Dashboard, relay: RelayProcess
) -> None:
    total = ROUNDS + LIVE
    stored = federated_run("long", ROUNDS, CLIENTS, finished=False, total_rounds=total)
    publish_all(relay, stored)
    reads: list[str] = []
    dashboard.page.on("request", lambda r: reads.append(r.url) if "/metrics?" in r.url else None)
    # Pages of 200 kB instead of 4 MB, so that this run's lists take several.
    dashboard.page.route(
        "**/metrics?*types=client_metrics*",
        lambda route: route.continue_(
            url=re.sub("max_bytes=[0-9]+", "max_bytes=200000", route.request.url)
        ),
    )
    dashboard.open("?run=long")
    dashboard.wait_for_seq(len(stored), 60_000)
    # The charts' read leaves the clients' lists out; those come after, page by page.
    assert "exclude=client_metrics" in reads[0]
    assert len(reads) > 5 and all("types=client_metrics&max_bytes=" in url for url in reads[1:])

    charts = dashboard.charts()
    rounds = list(range(1, ROUNDS + 1))
    for metric in METRICS:
        assert {line: charts[metric][line]["x"] for line in LINES} == dict.fromkeys(LINES, rounds)
    fit = [
        m["data"] for m in stored if m["type"] == "round_metrics" and m["data"]["phase"] == "train"
    ]
    assert charts["loss"]["fit"]["y"] == [data["metrics"]["loss"] for data in fit]

    # The per-client view: every client, the latest rounds, a slider back to the first.
    ids = [str(client) for client in range(CLIENTS)]
    assert _heatmap(dashboard) == {"x": rounds[-WINDOW:], "y": ids}
    assert dashboard.page.locator("#client-table tbody tr").count() == CLIENTS
    assert dashboard.text("#client-table-caption") == f"eval, round {ROUNDS} (latest)"
    assert dashboard.page.is_visible("#client-window")
    dashboard.page.eval_on_selector(
        "#client-window", "s => { s.value = s.min; s.dispatchEvent(new Event('input')); }"
    )
    dashboard.wait(
        "() => document.getElementById('client-heatmap').data[0].x[0] === 1", RECOVER_WITHIN_MS
    )
    assert _heatmap(dashboard)["x"] == rounds[:WINDOW]
    assert dashboard.page.is_visible("#client-latest")
    dashboard.page.click("#client-latest")
    dashboard.wait(
        f"() => document.getElementById('client-heatmap').data[0].x.at(-1) === {ROUNDS}",
        RECOVER_WITHIN_MS,
    )

    # The downloads hold every round of every client.
    table = list(csv.DictReader(io.StringIO(dashboard.download("#download-csv"))))
    assert len([row for row in table if row["type"] == "client_metrics"]) == ROUNDS * 2 * CLIENTS
    downloaded = json.loads(dashboard.download("#download-json"))
    assert [message["seq"] for message in downloaded] == list(range(1, len(stored) + 1))

    # Live rounds, one at a time, reach every line and the client view.
    seq = len(stored)
    for rnd in range(ROUNDS + 1, total + 1):
        batch = federated_run(
            "long", rnd, CLIENTS, first_round=rnd, total_rounds=total, finished=False
        )
        publish_all(relay, batch)
        seq += len(batch)
        dashboard.wait_for_seq(seq)
        charts = dashboard.charts()
        assert all(charts[metric][line]["x"][-1] == rnd for metric in METRICS for line in LINES)
        assert _heatmap(dashboard)["x"][-1] == rnd
        assert dashboard.text("#progress-text") == f"round {rnd} of {total}"
    assert dashboard.errors == []


def test_the_charts_and_live_rounds_come_before_the_clients_lists(
    dashboard: Dashboard, relay: RelayProcess
) -> None:
    rounds, clients = 20, 5
    stored = federated_run("split", rounds, clients, finished=False, total_rounds=rounds + 2)
    publish_all(relay, stored)
    held: list[Any] = []  # the reads of the clients' lists, answered only once released
    released = {"now": False}

    def hold(route: Any) -> None:
        if released["now"]:
            route.continue_()
        else:
            held.append(route)

    dashboard.page.route("**/metrics?*types=client_metrics*", hold)
    dashboard.open("?run=split")
    dashboard.wait(
        f"() => document.querySelector('[data-metric=\"loss\"]')?.data?.[0]?.x.at(-1) === {rounds}",
        RECOVER_WITHIN_MS,
    )
    # Live rounds are drawn while the lists are still held back.
    live = federated_run("split", rounds + 2, clients, first_round=rounds + 1, finished=False)
    publish_all(relay, live)
    dashboard.wait(
        f"() => document.querySelector('[data-metric=\"loss\"]').data[0].x.at(-1) === {rounds + 2}",
        RECOVER_WITHIN_MS,
    )
    for _ in range(100):  # the lists are asked for once the charts are drawn: within 5 s
        if held:
            break
        dashboard.page.wait_for_timeout(50)
    assert held and dashboard.page.is_hidden("#clients")
    assert "lastSeq" not in dashboard.page.evaluate("() => ({...document.body.dataset})")

    released["now"] = True
    for route in held:
        route.continue_()
    total = len(stored) + len(live)
    dashboard.wait_for_seq(total)
    assert _heatmap(dashboard) == {
        "x": list(range(1, rounds + 3)),
        "y": [str(client) for client in range(clients)],
    }
    # The held-back lists sit among the live messages in seq order, each once.
    downloaded = json.loads(dashboard.download("#download-json"))
    assert [message["seq"] for message in downloaded] == list(range(1, total + 1))
    assert dashboard.errors == []
