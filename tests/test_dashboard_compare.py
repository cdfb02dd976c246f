"""Comparing runs in a real browser: overlaid lines, the settings that differ, shareable URLs.

A comparison shows 2 to 10 runs (``/?compare=<id1>,<id2>,...``): one line per run on every
metric's chart, each run in its own colour and named in the legend with the settings that
tell it apart, and a table of those settings. Fixtures and run builders come from
``tests/test_dashboard.py``.
"""

from __future__ import annotations

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

BASE = {"strategy": "FedAvg", "learning-rate": 0.1, "num-supernodes": 2, "partitioning": "iid"}
RUNS = {
    "lr-0.1": {**BASE},
    "lr-0.01": {**BASE, "learning-rate": 0.01},
    "prox": {**BASE, "learning-rate": 0.01, "strategy": "FedProx", "proximal-mu": 0.1},
}
COMPARE = "?compare=" + ",".join(RUNS)
# Every line of every chart of the compare view is a run's training (fit) line.
FIT_LINES = """() => [...document.querySelectorAll('#compare-charts [data-metric]')].every(
  (plot) => plot.data?.length && plot.data.every((trace) => trace.name.endsWith('· fit')))"""


def _publish_runs(relay: RelayProcess, rounds: int = 4) -> None:
    for i, (run_id, config) in enumerate(RUNS.items()):
        unfinished = run_id == "prox"  # still training: its line grows in the comparison
        messages = federated_run(
            run_id,
            rounds - 1 if unfinished else rounds,
            clients=2,
            config=config,
            finished=not unfinished,
            total_rounds=rounds + 2 if unfinished else None,
            shift=0.03 * i,
        )
        publish_all(relay, messages)


def _compared(dashboard: Dashboard) -> dict[str, list[dict[str, Any]]]:
    """metric -> the compare view's traces: name, colour, x."""
    return dashboard.page.evaluate(
        """() => Object.fromEntries([...document.querySelectorAll('#compare-charts [data-metric]')]
             .filter((div) => div.data).map((div) => [div.dataset.metric, div.data.map(
               (t) => ({name: t.name, color: t.line.color, x: Array.from(t.x)}))]))"""
    )


def _wait_for_lines(dashboard: Dashboard, count: int) -> None:
    dashboard.wait(
        """n => { const plots = [...document.querySelectorAll('#compare-charts [data-metric]')];
             return plots.length > 0 && plots.every((p) => p.data?.length === n); }""",
        RECOVER_WITHIN_MS,
        count,
    )


def test_three_runs_are_overlaid_with_the_settings_that_differ(
    dashboard: Dashboard, relay: RelayProcess
) -> None:
    _publish_runs(relay)
    dashboard.open(COMPARE)
    _wait_for_lines(dashboard, 3)

    charts = _compared(dashboard)
    assert list(charts)[: len(METRICS)] == list(METRICS)
    for metric, traces in charts.items():
        assert len(traces) == 3, metric
        assert len({trace["color"] for trace in traces}) == 3, metric  # a colour per run
    loss = {trace["name"].split(" ")[0]: trace["x"] for trace in charts["loss"]}
    assert loss == {"lr-0.1": [1, 2, 3, 4], "lr-0.01": [1, 2, 3, 4], "prox": [1, 2, 3]}
    # The server's evaluation is each run's line by default.
    assert all(trace["name"].endswith("· central eval") for trace in charts["loss"])

    page = dashboard.page
    legend = page.eval_on_selector_all(
        "#compare-charts .legend-entry", "es => es.map((e) => e.textContent)"
    )
    assert legend == [
        "lr-0.1 (learning-rate=0.1, strategy=FedAvg)",
        "lr-0.01 (learning-rate=0.01, strategy=FedAvg)",
        "prox (learning-rate=0.01, proximal-mu=0.1, strategy=FedProx)",
    ]
    settings = page.eval_on_selector_all(
        "#compare-settings tr", "rows => rows.map((r) => [...r.cells].map((c) => c.textContent))"
    )
    assert settings == [
        ["setting", "lr-0.1", "lr-0.01", "prox"],
        ["learning-rate", "0.1", "0.01", "0.01"],
        ["proximal-mu", "—", "—", "0.1"],
        ["strategy", "FedAvg", "FedAvg", "FedProx"],
    ]
    assert "num-supernodes, partitioning" in dashboard.text("#compare-same")
    statuses = page.eval_on_selector_all(
        "#compare-runs tbody tr", "rows => rows.map((r) => r.cells[1].textContent)"
    )
    assert statuses == ["completed", "completed", "running"]
    assert dashboard.errors == []


def test_a_compare_url_reopened_restores_the_view(
    dashboard: Dashboard, relay: RelayProcess
) -> None:
    _publish_runs(relay)
    dashboard.open("?run=lr-0.1")
    dashboard.wait_for_seq(1)

    # Picked from the run list: two runs, and their training lines.
    page = dashboard.page
    page.click("#compare-open")
    page.check('#compare-choices input[value="lr-0.01"]')  # lr-0.1, the shown run, is checked
    page.click("#compare-go")
    _wait_for_lines(dashboard, 2)
    page.select_option("#compare-line", "training")
    dashboard.wait(FIT_LINES, RECOVER_WITHIN_MS)
    url = page.url
    assert "?compare=lr-0.01,lr-0.1&" in url and "line=training" in url  # the list's order
    before = _compared(dashboard)

    page.goto(url)  # reopened (or shared): the same view
    _wait_for_lines(dashboard, 2)
    dashboard.wait(FIT_LINES, RECOVER_WITHIN_MS)
    assert _compared(dashboard) == before
    assert page.eval_on_selector("#compare-line", "s => s.value") == "training"
    assert page.get_attribute("body", "data-view") == "compare"

    page.click("#compare-close")  # back to the run it came from
    dashboard.wait("document.body.dataset.view === 'run'", RECOVER_WITHIN_MS)
    assert "compare=" not in page.url
    assert dashboard.errors == []


def test_a_live_run_keeps_updating_in_the_comparison(
    dashboard: Dashboard, relay: RelayProcess
) -> None:
    _publish_runs(relay)
    dashboard.open(COMPARE)
    _wait_for_lines(dashboard, 3)

    for rnd in (4, 5):
        publish_all(
            relay,
            federated_run("prox", rnd, 2, first_round=rnd, total_rounds=6, finished=False),
        )
        dashboard.wait(
            """r => document.getElementById('compare-chart-loss').data
                 .find((t) => t.name.startsWith('prox')).x.at(-1) === r""",
            RECOVER_WITHIN_MS,
            rnd,
        )
    rows = dashboard.page.eval_on_selector_all(
        "#compare-runs tbody tr", "rows => rows.map((r) => r.cells[2].textContent)"
    )
    assert rows[2] == "round 5 of 6"
    assert dashboard.errors == []
