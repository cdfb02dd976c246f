"""Webhook alerts (``--alert-webhook``): real relay processes POST to webhooks run by the test.

Each webhook is an ``http.server`` on 127.0.0.1 in a thread that records every request; one
answers 500 to its first attempts (the retries), one never answers (the relay stays
responsive, and its shutdown stays bounded). Waits are bounded; stalls use
``--stall-factor 2 --stall-floor 1`` so they take seconds.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from fl_stream.monitor.protocol import make_message
from relay.webhooks import QUEUE_SIZE, WORKERS_PER_WEBHOOK
from tests.support import ListeningClient, RelayProcess, control, free_port, get_json, publish

RelayFactory = Callable[..., RelayProcess]
METRICS = {"loss": 0.5, "accuracy": 0.8}
SECRET_PATH = "/hooks/T000/B000/webhook-secret-1234"  # like a Slack URL: never in the log
STALL_ARGS = ["--stall-factor", "2", "--stall-floor", "1"]
PACE_ORIGIN = datetime(2026, 1, 1, tzinfo=UTC)


class Webhook:
    """A webhook receiver: records every POST; the first ``failures`` get ``status``, then 200."""

    def __init__(self, failures: int = 0, status: int = 500) -> None:
        self.requests: list[dict[str, Any]] = []
        self._changed = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with receiver._changed:
                    fails = len(receiver.requests) < failures
                    receiver.requests.append(
                        {
                            "at": time.monotonic(),
                            "path": self.path,
                            "headers": {k.lower(): v for k, v in self.headers.items()},
                            "raw": body,
                            "status": status if fails else 200,
                        }
                    )
                    receiver._changed.notify_all()
                self.send_response(status if fails else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}{SECRET_PATH}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def alerts(self, event: str | None = None, run_id: str | None = None) -> list[dict[str, Any]]:
        """The payloads answered 200, optionally of one event and run only."""
        return [json.loads(r["raw"]) for r in self._delivered(event, run_id)]

    def _delivered(self, event: str | None, run_id: str | None) -> list[dict[str, Any]]:
        with self._changed:
            delivered = [r for r in self.requests if r["status"] == 200]
        return [
            r
            for r in delivered
            if event in (None, json.loads(r["raw"])["event"])
            and run_id in (None, json.loads(r["raw"])["run_id"])
        ]

    def wait_for(self, event: str, run_id: str, count: int = 1, timeout: float = 10.0) -> float:
        """Wait for the ``count``-th delivered alert of ``event`` for ``run_id``; return when."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while len(found := self._delivered(event, run_id)) < count:
                if time.monotonic() > deadline:
                    raise AssertionError(f"no {event} alert for {run_id}: {self.alerts()}")
                self._changed.wait(0.1)
        return float(found[count - 1]["at"])

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    receiver = Webhook()
    yield receiver
    receiver.close()


def at(seconds: float) -> str:
    """A timestamp ``seconds`` after a fixed moment: a run's pace, whatever the clock says."""
    return (PACE_ORIGIN + timedelta(seconds=seconds)).isoformat()


def message(kind: str, run_id: str, data: dict[str, Any], **options: Any) -> dict[str, Any]:
    return make_message(kind, data, run_id=run_id, **options)


def epoch_end(
    run_id: str, epoch: int, phase: str = "val", seconds: float | None = None
) -> dict[str, Any]:
    data = {"epoch": epoch, "phase": phase, "metrics": METRICS}
    return message("epoch_end", run_id, data, timestamp=None if seconds is None else at(seconds))


def round_end(run_id: str, round_num: int) -> dict[str, Any]:
    data = {"round": round_num, "total_rounds": 5, "fit_metrics": METRICS, "eval_metrics": METRICS}
    return message("round_end", run_id, data)


def training_end(run_id: str, status: str, **data: Any) -> dict[str, Any]:
    return message(
        "training_end",
        run_id,
        {"run_id": run_id, "status": status, "final_metrics": METRICS, **data},
    )


def training_mode(run_id: str, federated: bool) -> dict[str, Any]:
    data = {"is_federated": federated, "num_rounds": 5 if federated else 0, "num_clients": 2}
    return message("training_mode", run_id, data)


def settled_stats(relay: RelayProcess, timeout: float = 15.0) -> dict[str, Any]:
    """``/stats`` once no alert delivery is pending."""
    deadline = time.monotonic() + timeout
    while (stats := get_json(f"{relay.http_url}/stats"))["alerts_pending"]:
        assert time.monotonic() < deadline, f"alerts still pending: {stats}"
        time.sleep(0.05)
    return stats


def counts(stats: dict[str, Any]) -> tuple[int, ...]:
    keys = ("alerts_sent", "alerts_failed", "alerts_retried", "alerts_dropped", "alerts_pending")
    return tuple(stats[key] for key in keys)


def check_accepted(replies: list[dict[str, Any]]) -> None:
    assert all(reply["type"] == "ack" for reply in replies), replies


# --------------------------------------------------------------------------- the events


def test_a_completed_run_alerts_once_with_a_link_and_no_token(
    relay_factory: RelayFactory, webhook: Webhook
) -> None:
    relay = relay_factory(
        token="publisher-secret",
        env={"FL_STREAM_VIEWER_TOKEN": "viewer-secret"},
        args=["--alert-webhook", webhook.url],
    )
    run_id = "cnn 1/a"  # quoted in the link
    end = training_end(run_id, "completed", best_epoch=2)
    messages = [training_mode(run_id, federated=False)]
    messages += [epoch_end(run_id, e, phase) for e in (1, 2) for phase in ("train", "val")]
    replies = publish(relay.ws_url, [*messages, {**end, "msg_id": "end"}], token="publisher-secret")
    check_accepted(replies)
    # A resend with the same msg_id, a copy without one: stored or not, no second alert.
    check_accepted(publish(relay.ws_url, [{**end, "msg_id": "end"}, end], token="publisher-secret"))
    stats = settled_stats(relay)
    assert counts(stats) == (1, 0, 0, 0, 0)
    [request] = webhook.requests
    alert = json.loads(request["raw"])
    assert alert["event"] == "completed" and alert["run_id"] == run_id
    assert alert["link"] == f"{relay.http_url}/?run={quote(run_id, safe='')}"
    assert alert["reason"] == "training_end reported status completed (best epoch 2)"
    assert (alert["mode"], alert["status"]) == ("centralized", "completed")
    assert (alert["last_epoch"], alert["last_round"]) == (2, None)
    assert alert["details"]["final_metrics"] == METRICS
    assert abs(datetime.fromisoformat(alert["timestamp"]) - datetime.now(UTC)) < timedelta(
        minutes=1
    )
    assert alert["link"] in alert["text"] and "completed" in alert["text"]
    assert request["path"] == SECRET_PATH
    assert request["headers"]["content-type"] == "application/json"
    assert request["headers"]["x-fl-stream-alert-id"] == alert["alert_id"]
    everything = request["raw"] + json.dumps(request["headers"]).encode()
    assert b"publisher-secret" not in everything and b"viewer-secret" not in everything
    assert "webhook-secret" not in relay.log_text()


def test_a_failed_run_alerts_once_also_after_a_restart(
    relay_factory: RelayFactory, webhook: Webhook
) -> None:
    relay = relay_factory(
        args=["--alert-webhook", webhook.url, "--public-url", "https://dash.example.com/fl/"]
    )
    run_id = "fed-1"
    error = message("error", run_id, {"error": "RuntimeError: boom", "error_type": "RuntimeError"})
    failed = training_end(run_id, "failed", best_round=1)
    messages = [training_mode(run_id, federated=True), round_end(run_id, 1), round_end(run_id, 2)]
    check_accepted(publish(relay.ws_url, [*messages, error, failed]))  # send_failure's pair
    assert counts(settled_stats(relay)) == (1, 0, 0, 0, 0)
    [alert] = webhook.alerts()
    assert (alert["event"], alert["reason"]) == ("failed", "RuntimeError: boom")
    assert alert["link"] == "https://dash.example.com/fl/?run=fed-1"
    assert (alert["mode"], alert["status"], alert["last_round"]) == ("federated", "failed", 2)
    assert alert["details"] == error["data"]

    relay.restart()  # reads the store: this run has failed already
    check_accepted(publish(relay.ws_url, [failed, error, training_end("other", "completed")]))
    webhook.wait_for("completed", "other")
    assert counts(settled_stats(relay)) == (1, 0, 0, 0, 0)  # the other run's, and no more
    assert [a["event"] for a in webhook.alerts(run_id=run_id)] == ["failed"]


def test_an_early_stopped_run_alerts_once(relay_factory: RelayFactory, webhook: Webhook) -> None:
    relay = relay_factory(args=["--alert-webhook", webhook.url])
    run_id = "early"
    stop = {
        "epoch": 4,
        "best_metric_value": 0.31,
        "metric_name": "val_loss",
        "patience": 2,
        "reason": "val_loss did not improve for 2 epochs (best 0.31)",
    }
    messages = [epoch_end(run_id, e) for e in range(1, 5)]
    messages += [message("early_stopping", run_id, stop), training_end(run_id, "early_stopped")]
    check_accepted(publish(relay.ws_url, messages))
    assert counts(settled_stats(relay)) == (1, 0, 0, 0, 0)
    [alert] = webhook.alerts()
    assert (alert["event"], alert["reason"], alert["last_epoch"]) == (
        "early_stopped",
        stop["reason"],
        4,
    )
    assert alert["status"] == "running"  # the training_end came after, with the same news


def test_a_silent_run_alerts_stalled_once_per_stall(
    relay_factory: RelayFactory, webhook: Webhook
) -> None:
    relay = relay_factory(args=["--alert-webhook", webhook.url, *STALL_ARGS])

    def epochs(run_id: str, numbers: range, pace: float) -> list[dict[str, Any]]:
        # train and val a moment apart, epochs `pace` s apart: the median interval is `pace`
        return [
            epoch_end(run_id, e, phase, seconds=e * pace + offset)
            for e in numbers
            for phase, offset in (("train", 0.0), ("val", 0.01))
        ]

    before = time.monotonic()
    messages = epochs("slow", range(3), 1.0)  # 2 x 1 s: stalled after 2 s
    messages += epochs("fast", range(3), 0.1)  # 2 x 0.1 s is under the floor: after 1 s
    messages += [*epochs("done", range(3), 0.1), training_end("done", "completed")]
    messages += epochs("one-epoch", range(1), 1.0)  # no interval yet: never stalls
    check_accepted(publish(relay.ws_url, messages))

    arrived = webhook.wait_for("stalled", "slow")
    assert arrived - before >= 2.0  # 2 of its 1 s intervals, not the 1 s floor
    [alert] = webhook.alerts("stalled", "slow")
    assert alert["details"]["threshold_s"] == 2.0 and alert["details"]["median_interval_s"] == 1.0
    assert (alert["status"], alert["last_epoch"], alert["details"]["interval"]) == (
        "running",
        2,
        "epoch",
    )
    assert alert["reason"].startswith("nothing received for 2.")
    [fast] = webhook.alerts("stalled", "fast")
    assert fast["details"]["threshold_s"] == 1.0  # the floor
    time.sleep(1.5)  # many checks later: still one alert per stall
    assert len(webhook.alerts("stalled")) == 2

    before = time.monotonic()
    check_accepted(publish(relay.ws_url, epochs("slow", range(3, 4), 1.0)))  # it resumes...
    assert webhook.wait_for("stalled", "slow", count=2) - before >= 2.0  # ...and stalls again
    check_accepted(publish(relay.ws_url, [training_end("slow", "completed")]))
    webhook.wait_for("completed", "slow")
    time.sleep(2.5)  # past its threshold: a finished run never stalls
    events = sorted((a["run_id"], a["event"]) for a in webhook.alerts())
    assert events == [
        ("done", "completed"),
        ("fast", "stalled"),
        ("slow", "completed"),
        ("slow", "stalled"),
        ("slow", "stalled"),
    ]
    assert counts(settled_stats(relay)) == (5, 0, 0, 0, 0)


# --------------------------------------------------------------------------- delivery


def test_deliveries_are_retried_with_backoff_and_counted(relay_factory: RelayFactory) -> None:
    flaky, refusing = Webhook(failures=2, status=500), Webhook(failures=100, status=404)
    try:
        relay = relay_factory(args=["--alert-webhook", flaky.url, "--alert-webhook", refusing.url])
        check_accepted(publish(relay.ws_url, [training_end("run", "completed")]))
        flaky.wait_for("completed", "run")
        stats = settled_stats(relay)
        # One alert, two webhooks: the flaky one took 3 attempts, the refusing one gave up at once.
        assert counts(stats) == (1, 1, 2, 0, 0)
        assert [r["status"] for r in flaky.requests] == [500, 500, 200]
        assert [r["status"] for r in refusing.requests] == [404]
        assert len({r["raw"] for r in flaky.requests + refusing.requests}) == 1  # the same alert
        first, second, third = (r["at"] for r in flaky.requests)
        assert 0.5 <= second - first < 2.0 and 1.0 <= third - second < 3.0  # 0.5 s, then 1 s
        log = relay.log_text()
        assert "HTTP 404" in log and f"127.0.0.1:{refusing.server.server_address[1]}" in log
        assert "webhook-secret" not in log  # the URL's path never
    finally:
        flaky.close()
        refusing.close()


def test_a_webhook_that_never_answers_never_holds_up_the_relay(
    relay_factory: RelayFactory,
) -> None:
    with socket.socket() as silent:  # accepts connections (the kernel does), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)
        hook = f"http://127.0.0.1:{silent.getsockname()[1]}/hook"
        relay = relay_factory(args=["--alert-webhook", hook, "--alert-timeout", "30"])
        ends = [training_end(f"run-{i}", "completed") for i in range(QUEUE_SIZE + 44)]
        check_accepted(publish(relay.ws_url, ends))
        with ListeningClient(relay.ws_url) as dashboard:
            for pongs in range(2, 7):  # the client's own first ping had its pong
                started = time.monotonic()
                dashboard.send(control("ping"))
                dashboard.wait_for_type("pong", count=pongs)
                assert time.monotonic() - started < 0.5
            started = time.monotonic()
            check_accepted(publish(relay.ws_url, [epoch_end("live", 1)]))
            dashboard.wait_for(lambda msgs: any(m.get("run_id") == "live" for m in msgs))
            assert time.monotonic() - started < 1.0
        stats = get_json(f"{relay.http_url}/stats")
        assert stats["alerts_sent"] == stats["alerts_failed"] == 0
        assert stats["alerts_pending"] + stats["alerts_dropped"] == len(ends)
        assert stats["alerts_pending"] <= QUEUE_SIZE + WORKERS_PER_WEBHOOK
        assert "dropped the completed alert" in relay.log_text()
        started = time.monotonic()
        assert relay.stop() == 0  # graceful, not killed: the pending deliveries are given up
        assert time.monotonic() - started < 8.0
        assert "alert deliveries pending: they are lost" in relay.log_text()


# --------------------------------------------------------------------------- settings


def run_relay_cli(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "relay", "--host", "127.0.0.1", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize(
    ("option", "value", "expected"),
    [
        ("--alert-webhook", "ftp://hooks.example.com/webhook-secret", "an http:// or https:// URL"),
        ("--alert-webhook", "hooks.example.com/webhook-secret", "an http:// or https:// URL"),
        ("--public-url", "https://dash.example.com/?token=abc", "no query"),
        ("--public-url", "ws://dash.example.com", "an http:// or https:// URL"),
        ("--stall-factor", "0.5", "a finite number >= 1"),
        ("--stall-floor", "0", "a number > 0"),
        ("--alert-timeout", "nan", "a number > 0"),
    ],
)
def test_bad_alert_settings_are_refused_at_start(
    tmp_path: Path, option: str, value: str, expected: str
) -> None:
    result = run_relay_cli(
        "--port", str(free_port()), "--db", str(tmp_path / "r.db"), option, value
    )
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "Traceback" not in result.stderr
    assert option in result.stderr and expected in result.stderr
    assert "webhook-secret" not in result.stderr  # a webhook URL may be a secret
    assert not (tmp_path / "r.db").exists()


def test_without_a_webhook_stats_count_no_alerts(relay: RelayProcess) -> None:
    check_accepted(publish(relay.ws_url, [training_end("run", "failed")]))
    assert counts(get_json(f"{relay.http_url}/stats")) == (0, 0, 0, 0, 0)
