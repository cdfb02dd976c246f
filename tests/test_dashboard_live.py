"""Live client progress, the viewer token and safe CSV cells, in a real browser.

- "Round in progress": the clients' ``client_progress`` reports give one row per client
  (progress bar, running loss), flag a straggler while the round runs, open a client's local
  per-epoch curves from its row, and clear at the round's ``round_end``; they are never drawn
  as metric points.
- A relay started with ``--viewer-token``: the page asks for the token with a form (again,
  with the error, after a wrong one), takes it from the URL fragment and removes it from the
  address bar, sends it as a header on /api/* and as the WebSocket's first ``auth`` frame,
  never in a URL, and draws the run.
- CSV cells that start like a spreadsheet formula are neutralised; numbers stay numbers.

Fixtures and run builders come from ``tests/test_dashboard.py``.
"""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from fl_stream.monitor.protocol import make_message
from tests.support import RelayProcess
from tests.test_dashboard import (
    RECOVER_WITHIN_MS,
    Dashboard,
    browser,
    dashboard,
    federated_run,
    publish_all,
)

__all__ = ["browser", "dashboard"]  # fixtures used by the tests below

pytestmark = pytest.mark.browser

TOKEN = "viewer-sekrit-token"
Message = dict[str, Any]
ROWS = "#round-progress-rows tr[data-client]"


def _progress(
    run_id: str,
    client: str,
    sent: datetime,
    epoch: int,
    batch: int,
    batches: int,
    loss: float,
    rnd: int = 1,
) -> Message:
    message = make_message(
        "client_progress",
        {
            "round": rnd,
            "phase": "train",
            "client_id": client,
            "node_id": f"70{client}",
            "epoch": epoch,
            "num_epochs": 2,
            "batch": batch,
            "num_batches": batches,
            "examples_per_second": 320.0,
            "metrics": {"loss": loss},
        },
        run_id=run_id,
    )
    message["timestamp"] = sent.isoformat()
    return message


def _round_one_in_progress(run_id: str) -> list[Message]:
    """Round 1, 10 s in: clients 0-2 are half done (epoch 1 of 2, its last batch), client 3
    has done a tenth of its batches of epoch 1 (projected to take 5x as long)."""
    start = datetime.now(UTC) - timedelta(seconds=10)
    info = {"is_federated": True, "num_rounds": 3, "num_clients": 4}
    messages = [make_message("training_mode", info, run_id=run_id)]
    for k in range(1, 11):
        sent = start + timedelta(seconds=k)
        for client in range(3):
            messages.append(_progress(run_id, str(client), sent, 1, k, 10, 1.0 / k))
        messages.append(_progress(run_id, "3", sent, 1, k, 50, 2.0 / k))
    return messages


def _rows(dashboard: Dashboard) -> dict[str, dict[str, Any]]:
    return dashboard.page.evaluate(
        """(selector) => Object.fromEntries([...document.querySelectorAll(selector)].map((tr) =>
             [tr.dataset.client, {value: tr.querySelector('progress').value,
               cells: [...tr.cells].map((td) => td.textContent), straggler: tr.className}]))""",
        ROWS,
    )


def test_round_progress_rows_flag_a_straggler_open_curves_and_clear_at_round_end(
    dashboard: Dashboard, relay: RelayProcess
) -> None:
    messages = _round_one_in_progress("live")
    publish_all(relay, messages[:1])  # stored first: a run the relay has no 404s
    dashboard.open("?run=live")
    publish_all(relay, messages[1:])
    dashboard.wait(f"document.querySelectorAll('{ROWS}').length === 4", RECOVER_WITHIN_MS)
    dashboard.wait(
        "() => document.querySelector('#round-progress-rows tr.straggler') !== null",
        RECOVER_WITHIN_MS,
    )

    rows = _rows(dashboard)
    assert list(rows) == ["0", "1", "2", "3"]
    assert dashboard.page.is_visible("#round-progress")
    assert "Round 1 in progress" in dashboard.text("#round-progress-title")
    for client in ("0", "1", "2"):
        assert rows[client]["value"] == pytest.approx(0.5)
        assert "1/2" in rows[client]["cells"][3]  # epoch 1 of 2
        assert rows[client]["cells"][4] == "0.1000"  # running loss
        assert rows[client]["cells"][5] == "320.0000" or rows[client]["cells"][5].startswith("320")
        assert rows[client]["cells"][6].endswith("ago")
        assert rows[client]["straggler"] == ""
    assert rows["3"]["value"] == pytest.approx(0.1)
    assert rows["3"]["straggler"] == "straggler"
    assert "projected" in rows["3"]["cells"][7]
    # Progress is no metric point: the charts hold nothing, the run is at no round.
    assert all(
        not any(trace["x"] for trace in series.values()) for series in dashboard.charts().values()
    )

    # A client's local curves: drawn only once opened.
    assert dashboard.page.evaluate(
        "() => document.querySelector('.client-curves[data-client=\"0\"]').data === undefined"
    )
    dashboard.page.click('button[data-curves="0"]')
    dashboard.wait(
        "() => document.querySelector('.client-curves[data-client=\"0\"]').data?.length === 1",
        RECOVER_WITHIN_MS,
    )
    curve = dashboard.page.evaluate(
        """() => { const [t] = document.querySelector('.client-curves[data-client="0"]').data;
                   return {x: Array.from(t.x), y: Array.from(t.y), name: t.name}; }"""
    )
    assert curve["x"] == list(range(1, 11))
    assert curve["y"] == pytest.approx([1.0 / k for k in range(1, 11)])
    assert curve["name"] == "epoch 1"

    # The round ends: the panel clears.
    round_end = make_message(
        "round_end",
        {"round": 1, "total_rounds": 3, "fit_metrics": {"loss": 0.3}, "eval_metrics": {}},
        run_id="live",
    )
    publish_all(relay, [round_end])
    dashboard.wait(
        f"() => document.querySelectorAll('{ROWS}').length === 0 && "
        "document.getElementById('round-progress').hidden",
        RECOVER_WITHIN_MS,
    )
    assert dashboard.errors == []


def test_a_stored_run_reads_only_the_progress_of_the_round_under_way(
    dashboard: Dashboard, relay: RelayProcess
) -> None:
    start = datetime.now(UTC) - timedelta(seconds=30)
    info = {"is_federated": True, "num_rounds": 3, "num_clients": 2}
    stored = [make_message("training_mode", info, run_id="reports")]
    for rnd, batches in ((1, 20), (2, 5)):  # round 1 ended, round 2 under way
        for k in range(1, batches + 1):
            sent = start + timedelta(seconds=10 * rnd + k / 10)
            for client in ("0", "1"):
                stored.append(_progress("reports", client, sent, 1, k, 20, 1.0 / k, rnd))
        if rnd == 1:
            end = {"round": 1, "total_rounds": 3, "fit_metrics": {"loss": 0.3}, "eval_metrics": {}}
            stored.append(make_message("round_end", end, run_id="reports"))
    publish_all(relay, stored)
    end_seq = 1 + 2 * 20 + 1
    reads: list[str] = []
    dashboard.page.on("request", lambda r: reads.append(r.url) if "/metrics?" in r.url else None)
    dashboard.open("?run=reports")
    dashboard.wait_for_seq(len(stored))

    # The first read leaves every report out; then those after round 1's round_end are read.
    assert "exclude=client_metrics,client_progress" in reads[0]
    report_reads = [url for url in reads if "types=client_progress" in url]
    assert report_reads and all(f"since={end_seq}&" in url for url in report_reads)
    assert list(_rows(dashboard)) == ["0", "1"]
    assert all("batch 5/20" in row["cells"][3] for row in _rows(dashboard).values())
    assert dashboard.text("#message-count") == str(len(stored))  # the unread ones count too
    dashboard.page.click('button[data-curves="0"]')
    dashboard.wait(
        "() => document.querySelector('.client-curves[data-client=\"0\"]').data?.length === 1",
        RECOVER_WITHIN_MS,
    )
    curve = dashboard.page.evaluate(
        "() => Array.from(document.querySelector('.client-curves[data-client=\"0\"]').data[0].x)"
    )
    assert curve == [1, 2, 3, 4, 5]  # round 2's batches only

    # A download reads the ended round's reports too, and holds every message once, in order.
    downloaded = json.loads(dashboard.download("#download-json"))
    assert [message["seq"] for message in downloaded] == list(range(1, len(stored) + 1))
    assert any("types=client_progress" in url and "since=0&" in url for url in reads)
    assert dashboard.errors == []


def _request_log(page: Any) -> list[dict[str, Any]]:
    log: list[dict[str, Any]] = []
    page.on(
        "request",
        lambda request: log.append(
            {"url": request.url, "auth": request.headers.get("authorization")}
        ),
    )
    return log


def test_a_viewer_token_relay_asks_for_the_token_and_takes_it_from_the_fragment(
    browser: Any, relay_factory: Any
) -> None:
    relay: RelayProcess = relay_factory(args=["--viewer-token", TOKEN])
    publish_all(relay, federated_run("guarded", rounds=3, clients=2))

    # No token: the page asks; a wrong one is refused with the error, the right one loads.
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    asked = Dashboard(context, relay)
    asked.page.goto(f"{relay.http_url}/?run=guarded")
    asked.wait("() => document.getElementById('token-dialog').open", RECOVER_WITHIN_MS)
    assert "needs a viewer token" in asked.text("#token-error")
    asked.page.fill("#token-input", "wrong-token")
    asked.page.click("#token-submit")
    asked.wait(
        "() => document.getElementById('token-dialog').open && "
        "document.getElementById('token-error').textContent.includes('refused')",
        RECOVER_WITHIN_MS,
    )
    asked.page.fill("#token-input", TOKEN)
    asked.page.click("#token-submit")
    asked.wait_for_seq(len(federated_run("guarded", rounds=3, clients=2)))
    assert asked.page.evaluate("sessionStorage.getItem('fl-stream-viewer-token')") == TOKEN
    context.close()

    # A token in the fragment: the run loads, and the address bar holds no token.
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    linked = Dashboard(context, relay)
    requests = _request_log(linked.page)
    sockets: list[Any] = []
    linked.page.on("websocket", lambda ws: sockets.append(ws))
    frames: list[str] = []
    linked.page.on(
        "websocket", lambda ws: ws.on("framesent", lambda payload: frames.append(str(payload)))
    )
    linked.page.goto(f"{relay.http_url}/?run=guarded#token={TOKEN}")
    linked.wait_for_seq(len(federated_run("guarded", rounds=3, clients=2)))
    charts = linked.charts()
    assert charts["loss"]["fit"]["x"] == [1, 2, 3]  # the data arrived and is drawn
    assert TOKEN not in linked.page.url and "#" not in linked.page.url
    assert linked.page.evaluate("window.location.hash") == ""
    assert not linked.page.is_visible("#token-dialog")
    assert all(TOKEN not in entry["url"] for entry in requests)  # never in a URL
    api = [entry for entry in requests if "/api/" in entry["url"]]
    assert api and all(entry["auth"] == f"Bearer {TOKEN}" for entry in api)
    assert sockets and all(TOKEN not in ws.url for ws in sockets)
    assert '"auth"' in frames[0] and TOKEN in frames[0]  # the first frame authenticates
    assert any('"subscribe"' in frame for frame in frames[1:])
    # Only the 401s of the first page are expected; this page has none.
    assert linked.errors == []
    context.close()


def test_csv_cells_that_start_like_formulas_are_neutralised(
    dashboard: Dashboard, relay: RelayProcess
) -> None:
    hostile = ['=HYPERLINK("http://x","y")', "+1+2", "-3+4", "@SUM(A1)", "\tTAB", "\rCR"]
    clients = [
        {"client_id": name, "num_examples": 10, "metrics": {"loss": -0.5, "=evil": 1}}
        for name in hostile
    ]
    messages = [
        make_message(
            "training_mode", {"is_federated": True, "num_rounds": 1, "num_clients": 6}, run_id="csv"
        ),
        make_message(
            "client_metrics",
            {"round": 1, "total_rounds": 1, "phase": "train", "clients": clients},
            run_id="csv",
        ),
    ]
    publish_all(relay, messages)
    dashboard.open("?run=csv")
    dashboard.wait_for_seq(2)

    with dashboard.page.expect_download() as info:
        dashboard.page.click("#download-csv")
    text = Path(info.value.path()).read_bytes().decode()  # as saved: "\r" kept
    rows = list(csv.DictReader(io.StringIO(text, newline="")))
    assert "'=evil" in rows[0]  # a hostile metric name in the header
    client_rows = [row for row in rows if row["type"] == "client_metrics"]
    assert [row["client_id"] for row in client_rows] == [f"'{name}" for name in hostile]
    assert all(row["loss"] == "-0.5" for row in client_rows)  # numbers stay numbers
    assert ",-0.5," in text  # unquoted, as a number

    # The cell function itself, as the page runs it.
    cells = dashboard.page.evaluate(
        """async () => { const { csvCell } = await import('/static/export.js');
             return ['=1+2', '+1', '-x', '@a', '\\tt', '\\rr', -0.5, 'plain', 'NaN', '-Infinity',
                     'a"b'].map(csvCell); }"""
    )
    assert cells == [
        '"\'=1+2"',
        '"\'+1"',
        '"\'-x"',
        '"\'@a"',
        '"\'\tt"',
        '"\'\rr"',
        "-0.5",
        "plain",
        "NaN",
        "-Infinity",
        '"a""b"',
    ]
    assert dashboard.errors == []


def test_progress_rows_stay_in_place_with_100_clients(
    dashboard: Dashboard, relay: RelayProcess
) -> None:
    """100 clients reporting: rows are updated in place, never rebuilt per message."""
    start = datetime.now(UTC) - timedelta(seconds=5)
    messages = [
        make_message(
            "training_mode",
            {"is_federated": True, "num_rounds": 2, "num_clients": 100},
            run_id="many",
        )
    ]
    publish_all(relay, messages)
    dashboard.open("?run=many")
    first = [_progress("many", str(c), start, 1, 1, 20, 1.0) for c in range(100)]
    publish_all(relay, first)
    dashboard.wait(f"document.querySelectorAll('{ROWS}').length === 100", RECOVER_WITHIN_MS)
    dashboard.page.evaluate(
        "() => { window.firstRow = document.querySelector('#round-progress-rows tr'); }"
    )
    later = [
        _progress("many", str(c), start + timedelta(seconds=k), 1, k, 20, 1.0 / k)
        for k in range(2, 8)
        for c in range(100)
    ]
    publish_all(relay, later)
    dashboard.wait(
        "() => document.querySelector('#round-progress-rows tr[data-client=\"99\"] progress')"
        ".value === 7 / 40",
        RECOVER_WITHIN_MS,
    )
    assert dashboard.page.evaluate(
        "() => window.firstRow === document.querySelector('#round-progress-rows tr')"
        " && window.firstRow.isConnected"
    )
    assert dashboard.errors == []
