"""The relay, end to end: a real ``python -m relay`` process, real WebSocket and HTTP clients."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from fl_stream.monitor.protocol import make_message
from tests.support import (
    ListeningClient,
    RelayProcess,
    control,
    free_port,
    get_json,
    http_get,
    publish,
)

TIMESTAMP = "2026-01-01T00:00:00+00:00"
METRICS = {
    "loss": 0.5,
    "accuracy": 0.8,
    "precision": 0.7,
    "recall": 0.9,
    "f1": 0.79,
    "auroc": "NaN",
}


def epoch_end(run_id: str, epoch: int, msg_id: str | None = None) -> dict[str, Any]:
    data = {"epoch": epoch, "phase": "val", "metrics": METRICS}
    return make_message("epoch_end", data, run_id=run_id, msg_id=msg_id)


def seqs(messages: list[dict[str, Any]]) -> list[int]:
    """The seq of every data message, in arrival order."""
    return [m["seq"] for m in messages if "seq" in m]


def stored_total(relay: RelayProcess) -> int:
    """How many messages the relay has stored, all runs together."""
    return sum(run["message_count"] for run in get_json(f"{relay.http_url}/api/runs")["runs"])


@pytest.fixture(scope="module")
def shared_relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayProcess]:
    """One relay for the tests that only add their own runs (the bad-input table)."""
    relay = RelayProcess(tmp_path_factory.mktemp("shared") / "relay.db").start()
    yield relay
    relay.stop()


# --------------------------------------------------------------------------- original design


def test_original_design_every_other_client_receives_what_one_sends(relay: RelayProcess) -> None:
    original = {
        "type": "epoch_end",
        "timestamp": TIMESTAMP,
        "data": {"epoch": 1, "phase": "train", "metrics": METRICS},
    }
    with ListeningClient(relay.ws_url) as sender, ListeningClient(relay.ws_url) as listener:
        sender.send(original)
        received = listener.wait_for_type("epoch_end")
        ack = sender.wait_for_type("ack")
    assert received == [{**original, "run_id": "default", "seq": 1}]
    assert ack[0]["data"] == {"run_id": "default", "seq": 1, "msg_id": None}
    assert sender.of_type("epoch_end") == []  # never echoed to its publisher


def test_subscriptions_select_runs_and_deliver_once(relay: RelayProcess) -> None:
    with (
        ListeningClient(relay.ws_url, run_id="a") as only_a,
        ListeningClient(relay.ws_url, run_id="a") as a_and_all,
        ListeningClient(relay.ws_url) as everything,
    ):
        a_and_all.subscribe(None)
        publish(relay.ws_url, [epoch_end("b", 1), epoch_end("a", 1), epoch_end("b", 2)])
        everything.wait_for(lambda msgs: len(seqs(msgs)) == 3)
        a_and_all.wait_for(lambda msgs: len(seqs(msgs)) == 3)
        only_a.send(control("unsubscribe", run_id="a"))
        only_a.send(control("ping"))
        only_a.wait_for_type("pong", count=2)
        publish(relay.ws_url, [epoch_end("a", 2)])
        a_and_all.wait_for(lambda msgs: len(seqs(msgs)) == 4)
    assert [(m["run_id"], m["seq"]) for m in only_a.data_messages()] == [("a", 1)]
    assert [(m["run_id"], m["seq"]) for m in a_and_all.data_messages()] == [
        ("b", 1),
        ("a", 1),
        ("b", 2),
        ("a", 2),
    ]


def test_publishers_get_only_the_replies_to_their_own_frames(relay: RelayProcess) -> None:
    with (
        ListeningClient(f"{relay.ws_url}/?publish") as publisher_a,
        ListeningClient(f"{relay.ws_url}/?x=1&publish") as publisher_b,
        ListeningClient(relay.ws_url) as everything,  # the original design: no query
    ):
        publisher_a.send(epoch_end("a", 1, msg_id="a-1"))
        publisher_a.wait_for_type("ack")
        for frame in (epoch_end("b", 1, msg_id="b-1"), epoch_end("b", 2), "junk"):
            publisher_b.send(frame)
        publisher_b.wait_for(lambda msgs: len(msgs) == 4)  # pong, ack, ack, rejected
        publisher_a.send(epoch_end("a", 2))
        publisher_a.wait_for_type("ack", count=2)
        everything.wait_for(lambda msgs: len(seqs(msgs)) == 4)
        # A broadcast is written before the ack that follows it, and a pong after both:
        # whatever the relay sent a publisher has arrived by its second pong.
        for publisher in (publisher_a, publisher_b):
            publisher.send(control("ping"))
            publisher.wait_for_type("pong", count=2)
    assert [m["type"] for m in publisher_a.messages] == ["pong", "ack", "ack", "pong"]
    assert [m["type"] for m in publisher_b.messages] == ["pong", "ack", "ack", "rejected", "pong"]
    assert [m["data"] for m in publisher_a.of_type("ack")] == [
        {"run_id": "a", "seq": 1, "msg_id": "a-1"},
        {"run_id": "a", "seq": 2, "msg_id": None},
    ]
    assert [m["data"]["seq"] for m in publisher_b.of_type("ack")] == [1, 2]
    assert [(m["run_id"], m["seq"]) for m in everything.data_messages()] == [
        ("a", 1),
        ("b", 1),
        ("b", 2),
        ("a", 2),
    ]


def test_a_publisher_that_subscribes_receives_what_it_subscribed_to(relay: RelayProcess) -> None:
    publish(relay.ws_url, [epoch_end("a", 1), epoch_end("b", 1)])
    with ListeningClient(f"{relay.ws_url}/?publish") as publisher:
        publisher.subscribe("a", since=0)  # a replay, then run a live
        assert [(m["run_id"], m["seq"]) for m in publisher.data_messages()] == [("a", 1)]
        publisher.send(epoch_end("a", 2))  # its own: acknowledged, never echoed
        publisher.wait_for_type("ack")
        publish(relay.ws_url, [epoch_end("b", 2), epoch_end("a", 3)])
        publisher.wait_for(lambda msgs: len(seqs(msgs)) == 2)
        publisher.send(control("ping"))
        publisher.wait_for_type("pong", count=2)
    assert [(m["run_id"], m["seq"]) for m in publisher.data_messages()] == [("a", 1), ("a", 3)]


def test_resent_message_is_acked_again_with_its_seq_and_not_broadcast_again(
    relay: RelayProcess,
) -> None:
    with ListeningClient(relay.ws_url) as listener:
        first = epoch_end("run", 1, msg_id="m-1")
        replies = publish(relay.ws_url, [first, epoch_end("run", 2, msg_id="m-2"), first])
        listener.wait_for(lambda msgs: len(seqs(msgs)) == 2)
        publish(relay.ws_url, [epoch_end("run", 3, msg_id="m-3")])
        listener.wait_for(lambda msgs: len(seqs(msgs)) == 3)
    assert [r["data"]["seq"] for r in replies] == [1, 2, 1]
    assert [m.get("msg_id") for m in listener.data_messages()] == ["m-1", "m-2", "m-3"]
    assert get_json(f"{relay.http_url}/stats")["duplicates"] == 1


# --------------------------------------------------------------------------- bad input


def bad(message_type: Any = "custom", data: Any = None, **fields: Any) -> str:
    """A message with its run_id placeholder, its fields changed; a field set to ... is left out."""
    message = {"type": message_type, "timestamp": TIMESTAMP, "data": data or {}, "run_id": "{run}"}
    message.update(fields)
    return json.dumps({key: value for key, value in message.items() if value is not ...})


VAL = {"epoch": 1, "phase": "val"}
# (case, frame, words of the error). The case name is also the run_id of its messages.
BAD_INPUTS: list[tuple[str, str | bytes, str]] = [
    ("not-json", "{this is not json", "not valid JSON"),
    ("array", "[1, 2, 3]", "expected a JSON object, got an array"),
    ("string", '"epoch_end"', "expected a JSON object, got a string"),
    ("no-type", bad(type=...), "type: missing"),
    ("no-timestamp", bad(timestamp=...), "timestamp: missing"),
    ("no-data", bad(data=...), "data: missing"),
    ("numeric-type", bad(7), "type: expected a non-empty string"),
    ("bad-timestamp", bad(timestamp="yesterday"), "is not ISO-8601"),
    ("data-not-object", bad(data=[1]), "data: expected a JSON object"),
    ("run_id-not-text", bad(run_id=42), "run_id: expected a string"),
    ("metrics-missing", bad("epoch_end", VAL), "data.metrics: missing"),
    ("unknown-phase", bad("epoch_end", {**VAL, "phase": "test", "metrics": {}}), "data.phase"),
    ("metric-is-text", bad("epoch_end", {**VAL, "metrics": {"loss": "low"}}), "data.metrics"),
    (
        "negative-clients",
        bad("training_mode", {"is_federated": True, "num_rounds": 3, "num_clients": -1}),
        "data.num_clients",
    ),
    (
        "bad-run-status",
        bad("training_end", {"run_id": "r", "status": "done", "final_metrics": {}}),
        "data.status",
    ),
    ("NaN-literal", bad(data={"x": 1}).replace('{"x": 1}', '{"x": NaN}'), '"NaN"'),
    ("control-type", bad("ack", {"run_id": "r", "seq": 1}), "sent by the relay"),
    ("binary-frame", bad().encode(), "binary frames"),
]


@pytest.mark.parametrize(
    ("frame", "error"), [c[1:] for c in BAD_INPUTS], ids=[c[0] for c in BAD_INPUTS]
)
def test_bad_input_is_refused_and_changes_nothing(
    shared_relay: RelayProcess, frame: str | bytes, error: str, request: pytest.FixtureRequest
) -> None:
    run = request.node.callspec.id
    bad = (
        frame.replace("{run}", run)
        if isinstance(frame, str)
        else frame.replace(b"{run}", run.encode())
    )
    good = epoch_end(run, 1)
    total = stored_total(shared_relay)
    with ListeningClient(shared_relay.ws_url, run_id=None, since=None, subscribe=True) as dashboard:
        replies = publish(shared_relay.ws_url, [bad, good])
        received = dashboard.wait_for(lambda msgs: any(m.get("run_id") == run for m in msgs))
    assert replies[0]["type"] == "rejected"
    assert error in replies[0]["data"]["reason"]
    assert replies[1]["type"] == "ack"  # the connection stayed open and usable
    assert [m for m in received if "seq" in m] == [{**good, "seq": 1}]  # nothing bad broadcast
    stored = get_json(f"{shared_relay.http_url}/api/runs/{quote(run)}/metrics")["messages"]
    assert stored == [{**good, "seq": 1}]  # nothing bad stored, in this run or any other
    assert stored_total(shared_relay) == total + 1
    assert replies[0]["data"]["reason"] in shared_relay.log_text()  # a log line says why


def test_oversized_frame_closes_only_that_connection_with_1009(relay_factory: Any) -> None:
    relay = relay_factory(args=["--max-message-bytes", "2048"])
    with ListeningClient(relay.ws_url) as dashboard, ListeningClient(relay.ws_url) as big:
        big.send({"type": "custom", "timestamp": TIMESTAMP, "data": {"pad": "x" * 4096}})
        assert big.wait_closed() == 1009
        publish(relay.ws_url, [epoch_end("run", 1)])
        dashboard.wait_for(lambda msgs: seqs(msgs) == [1])
    assert stored_total(relay) == 1


# --------------------------------------------------------------------------- tokens and origins


def test_only_token_holders_publish_and_the_token_is_never_logged(relay_factory: Any) -> None:
    token = "s3cret-token-value"
    relay = relay_factory(token=token)
    with ListeningClient(relay.ws_url) as dashboard:  # no token: read-only, still receives
        refused = publish(relay.ws_url, [epoch_end("run", 1, msg_id="x")])
        with pytest.raises(InvalidStatus) as wrong:
            publish(relay.ws_url, [epoch_end("run", 1)], token="wrong")
        accepted = publish(relay.ws_url, [epoch_end("run", 2)], token=token)
        dashboard.wait_for(lambda msgs: len(seqs(msgs)) == 1)
    assert refused[0]["type"] == "rejected"
    assert refused[0]["data"] == {"reason": refused[0]["data"]["reason"], "msg_id": "x"}
    assert "unauthorised" in refused[0]["data"]["reason"]
    assert wrong.value.response.status_code == 401
    assert accepted[0]["data"]["seq"] == 1
    assert [m["data"]["epoch"] for m in dashboard.data_messages()] == [2]
    assert token not in relay.log_text()


def test_token_can_come_from_the_environment(relay_factory: Any) -> None:
    relay = relay_factory(env={"FL_STREAM_RELAY_TOKEN": "from-env"})
    assert publish(relay.ws_url, [epoch_end("run", 1)])[0]["type"] == "rejected"
    assert publish(relay.ws_url, [epoch_end("run", 1)], token="from-env")[0]["type"] == "ack"


def test_browser_origins_outside_the_allow_list_are_refused(relay_factory: Any) -> None:
    relay = relay_factory(args=["--allowed-origin", "http://dashboards.example:8080"])
    for origin in (
        f"http://127.0.0.1:{relay.port}",
        f"http://localhost:{relay.port}",
        "http://dashboards.example:8080",
    ):
        ListeningClient(relay.ws_url, headers={"Origin": origin}).close()
    with pytest.raises(InvalidStatus) as refused:
        ListeningClient(relay.ws_url, headers={"Origin": "http://evil.example"})
    assert refused.value.response.status_code == 403


# --------------------------------------------------------------------------- replay and persistence


def test_dashboard_reconnecting_with_since_misses_nothing_and_gets_no_duplicate(
    relay: RelayProcess,
) -> None:
    publish(relay.ws_url, [epoch_end("run", e) for e in range(1, 6)])
    with ListeningClient(relay.ws_url, run_id="run", since=0) as first:
        seen = seqs(first.messages)
    assert seen == [1, 2, 3, 4, 5]

    # While it is away, and while it reconnects, the run keeps publishing.
    total = 300
    publisher = threading.Thread(
        target=publish, args=(relay.ws_url, [epoch_end("run", e) for e in range(6, total + 1)])
    )
    publisher.start()
    with ListeningClient(relay.ws_url, run_id="run", since=seen[-1]) as again:
        publisher.join()
        received = again.wait_for(lambda msgs: seqs(msgs)[-1:] == [total])
    assert seqs(received) == list(range(6, total + 1))


def test_replay_to_a_connection_already_live_on_all_runs_sends_nothing_twice(
    relay: RelayProcess,
) -> None:
    # The dashboard's pattern: all runs live (to notice new runs), then the shown run's history.
    stored, total = 1000, 4000
    publish(relay.ws_url, [epoch_end("run", e) for e in range(1, stored + 1)])
    with ListeningClient(relay.ws_url, run_id=None, subscribe=True) as dashboard:
        messages = [epoch_end("run", e) for e in range(stored + 1, total + 1)]
        publisher = threading.Thread(target=publish, args=(relay.ws_url, messages))
        publisher.start()
        # Subscribe while the run is publishing, so live messages arrive during the replay.
        dashboard.wait_for(lambda msgs: len(seqs(msgs)) >= 100)
        dashboard.subscribe("run", since=0)
        publisher.join()
        received = dashboard.wait_for(lambda msgs: len(seqs(msgs)) >= total)
    assert sorted(seqs(received)) == list(range(1, total + 1))  # each exactly once


def test_subscribing_to_all_runs_since_replays_in_storage_order(relay: RelayProcess) -> None:
    publish(
        relay.ws_url, [epoch_end("a", 1), epoch_end("b", 1), epoch_end("a", 2), epoch_end("b", 2)]
    )
    with ListeningClient(relay.ws_url, run_id=None, since=1) as late:
        messages = late.messages
    assert [(m["run_id"], m["seq"]) for m in messages if "seq" in m] == [("a", 2), ("b", 2)]
    assert messages[-1]["type"] == "replay_end"


def test_numbering_and_messages_survive_a_restart(relay: RelayProcess) -> None:
    first = epoch_end("run", 1, msg_id="one")
    assert [r["data"]["seq"] for r in publish(relay.ws_url, [first, epoch_end("run", 2)])] == [1, 2]
    relay.restart()
    replies = publish(relay.ws_url, [epoch_end("run", 3), first])
    assert [r["data"]["seq"] for r in replies] == [3, 1]  # numbering continues; dedupe too
    with ListeningClient(relay.ws_url, run_id="run", since=0) as late:
        assert seqs(late.messages) == [1, 2, 3]


def test_killed_relay_keeps_every_acknowledged_message(relay: RelayProcess) -> None:
    replies = publish(relay.ws_url, [epoch_end("run", e) for e in range(1, 51)])
    relay.kill()  # SIGKILL: no shutdown code runs
    relay.start()
    acknowledged = [r["data"]["seq"] for r in replies]
    stored = get_json(f"{relay.http_url}/api/runs/run/metrics")["messages"]
    assert [m["seq"] for m in stored] == acknowledged == list(range(1, 51))


# --------------------------------------------------------------------------- slow consumers


def stalled_subscriber(port: int) -> socket.socket:
    """A raw WebSocket client that completes the handshake and then never reads."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window fills fast
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    assert sock.recv(12) == b"HTTP/1.1 101"
    return sock


def test_stalled_subscriber_is_evicted_while_a_healthy_one_keeps_receiving(
    relay: RelayProcess,
) -> None:
    pad = "x" * 30_000
    sent = 0
    with stalled_subscriber(relay.port), ListeningClient(relay.ws_url) as healthy:
        for _ in range(100):  # bounded: eviction comes after ~5 MB at the 1 MiB default cap
            publish(
                relay.ws_url,
                [make_message("custom", {"pad": pad}, run_id="big") for _ in range(10)],
            )
            sent += 10
            if get_json(f"{relay.http_url}/stats")["evicted"]:
                break
        publish(relay.ws_url, [epoch_end("run", 1)])
        healthy.wait_for(lambda msgs: len(seqs(msgs)) == sent + 1)
        stats = get_json(f"{relay.http_url}/stats")
    assert stats["evicted"] == 1
    assert "slow consumer" in relay.log_text()


# --------------------------------------------------------------------------- HTTP


def run_of(run_id: str, mode: str | None, end: dict[str, Any] | None) -> list[dict[str, Any]]:
    messages = []
    if mode is not None:
        data = {"is_federated": mode == "federated", "num_rounds": 2, "num_clients": 3}
        messages.append(make_message("training_mode", data, run_id=run_id))
    messages.append(epoch_end(run_id, 1))
    if end is not None:
        messages.append(make_message(end.pop("type"), end, run_id=run_id))
    return messages


def test_api_runs_summarises_each_run_newest_first(relay: RelayProcess) -> None:
    final = {"loss": 0.2, "accuracy": 0.9}
    publish(
        relay.ws_url,
        run_of(
            "fed",
            "federated",
            {
                "type": "training_end",
                "run_id": "fed",
                "status": "completed",
                "final_metrics": final,
                "best_round": 2,
            },
        ),
    )
    publish(
        relay.ws_url,
        run_of(
            "central",
            "centralized",
            {
                "type": "training_end",
                "run_id": "central",
                "status": "early_stopped",
                "final_metrics": final,
            },
        ),
    )
    publish(
        relay.ws_url,
        run_of(
            "broken",
            "centralized",
            {"type": "error", "error": "CUDA out of memory", "error_type": "RuntimeError"},
        ),
    )
    publish(relay.ws_url, run_of("live", None, None))
    runs = get_json(f"{relay.http_url}/api/runs")["runs"]
    assert [(r["run_id"], r["mode"], r["status"], r["message_count"]) for r in runs] == [
        ("live", None, "running", 1),
        ("broken", "centralized", "failed", 3),
        ("central", "centralized", "early_stopped", 3),
        ("fed", "federated", "completed", 3),
    ]
    assert all(r["first_timestamp"] <= r["last_timestamp"] for r in runs)

    body = get_json(f"{relay.http_url}/api/runs/fed/metrics")
    assert body["final_metrics"] == final
    assert body["training_end"]["best_round"] == 2
    assert [(m["type"], m["seq"]) for m in body["messages"]] == [
        ("training_mode", 1),
        ("epoch_end", 2),
        ("training_end", 3),
    ]
    later = get_json(f"{relay.http_url}/api/runs/fed/metrics?since=2")["messages"]
    assert [m["seq"] for m in later] == [3]


@pytest.mark.parametrize(
    ("path", "status", "content_type"),
    [
        ("/", 200, "text/html; charset=utf-8"),
        ("/static/index.html", 200, "text/html; charset=utf-8"),
        ("/static/plotly.min.js", 200, "text/javascript; charset=utf-8"),
        ("/healthz", 200, "application/json; charset=utf-8"),
        ("/stats", 200, "application/json; charset=utf-8"),
        ("/api/runs", 200, "application/json; charset=utf-8"),
        ("/api/runs/nobody/metrics", 404, "application/json; charset=utf-8"),
        ("/api/runs/nobody/metrics?since=x", 400, "application/json; charset=utf-8"),
        ("/static/missing.js", 404, "application/json; charset=utf-8"),
        ("/static/../store.py", 404, "application/json; charset=utf-8"),
        ("/static/%2e%2e/store.py", 404, "application/json; charset=utf-8"),
        ("/no/such/path", 404, "application/json; charset=utf-8"),
    ],
)
def test_http_endpoint(
    shared_relay: RelayProcess, path: str, status: int, content_type: str
) -> None:
    code, headers, body = http_get(shared_relay.http_url + path)
    assert code == status
    assert headers.get_all("Content-Type") == [content_type]  # exactly one header
    if content_type.startswith("application/json"):
        payload = json.loads(body)
        assert ("error" in payload) == (status != 200)
    if path == "/static/plotly.min.js":
        assert b"plotly" in body[:2000].lower()


def test_healthz_stats_and_favicon(relay: RelayProcess) -> None:
    assert get_json(f"{relay.http_url}/healthz") == {"status": "ok"}
    assert http_get(f"{relay.http_url}/favicon.ico")[0] in (200, 204)
    with ListeningClient(relay.ws_url):
        publish(relay.ws_url, [epoch_end("run", 1), "junk"])
        stats = get_json(f"{relay.http_url}/stats")
    assert stats["connections"] == 1  # the listener; the publisher has gone
    assert (stats["messages_in"], stats["messages_out"], stats["rejected"], stats["evicted"]) == (
        1,
        1,
        1,
        0,
    )


def test_stats_count_publishers_and_send_them_nothing(relay: RelayProcess) -> None:
    with (
        ListeningClient(relay.ws_url) as listener,
        ListeningClient(f"{relay.ws_url}/?publish") as publisher,
        ListeningClient(f"{relay.ws_url}/?subscribe"),  # subscribes to nothing: gets nothing
    ):
        publisher.send(epoch_end("run", 1))
        publisher.send("junk")
        publisher.wait_for_type("rejected")
        listener.wait_for(lambda msgs: len(seqs(msgs)) == 1)
        during = get_json(f"{relay.http_url}/stats")
    deadline = time.monotonic() + 10
    while (after := get_json(f"{relay.http_url}/stats"))["connections"] and (
        time.monotonic() < deadline
    ):
        time.sleep(0.05)
    assert (during["connections"], during["publishers"]) == (3, 1)
    assert (during["messages_in"], during["messages_out"], during["rejected"]) == (1, 1, 1)
    assert (after["connections"], after["publishers"], after["connections_total"]) == (0, 0, 3)


# --------------------------------------------------------------------------- process life


def test_sigterm_closes_clients_with_1001_and_keeps_the_data(relay: RelayProcess) -> None:
    publish(relay.ws_url, [epoch_end("run", e) for e in range(1, 4)])
    dashboard = ListeningClient(relay.ws_url, run_id="run", since=0)
    assert relay.stop(signal.SIGTERM) == 0  # stop() waits a bounded time, then kills
    assert dashboard.wait_closed() == 1001
    dashboard.close()
    relay.start()
    assert [m["seq"] for m in get_json(f"{relay.http_url}/api/runs/run/metrics")["messages"]] == [
        1,
        2,
        3,
    ]


def test_sigterm_does_not_wait_for_a_stalled_client(relay: RelayProcess) -> None:
    with stalled_subscriber(relay.port):
        pad = "x" * 30_000  # ~600 KB waiting for it: stuck, yet under the eviction cap
        publish(relay.ws_url, [make_message("custom", {"pad": pad}) for _ in range(20)])
        assert get_json(f"{relay.http_url}/stats")["evicted"] == 0
        assert relay.stop(signal.SIGTERM) == 0  # not killed after stop()'s bounded wait


def run_relay_cli(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "relay", "--host", "127.0.0.1", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=30)


def test_port_in_use_is_a_one_line_error(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        result = run_relay_cli("--port", str(busy.getsockname()[1]), "--db", str(tmp_path / "r.db"))
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0
    assert "cannot listen" in result.stderr


def test_unwritable_database_is_a_one_line_error(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = run_relay_cli("--port", str(free_port()), "--db", str(blocker / "relay.db"))
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0
    assert "cannot open database" in result.stderr


def test_a_second_relay_on_the_same_database_is_a_one_line_error(relay: RelayProcess) -> None:
    result = run_relay_cli("--port", str(free_port()), "--db", str(relay.db_path))
    assert result.returncode != 0
    assert result.stderr.strip().count("\n") == 0
    assert "another relay is using it" in result.stderr
    assert get_json(f"{relay.http_url}/healthz") == {"status": "ok"}  # the first one is fine


def test_closed_connection_mid_send_does_not_disturb_others(relay: RelayProcess) -> None:
    with ListeningClient(relay.ws_url) as dashboard:
        with connect(relay.ws_url) as quitter:
            quitter.send(json.dumps(epoch_end("run", 1)))
        publish(relay.ws_url, [epoch_end("run", 2)])
        received = dashboard.wait_for(lambda msgs: len(seqs(msgs)) == 2)
    assert seqs(received) == [1, 2]
