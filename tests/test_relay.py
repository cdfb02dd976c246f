"""The relay, end to end: a real ``python -m relay`` process, real WebSocket and HTTP clients."""

from __future__ import annotations

import json
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from fl_stream.monitor.protocol import make_message, validate_message
from relay.http import STATIC_DIR
from relay.replay import STALL_TIMEOUT
from tests.support import (
    ListeningClient,
    RelayProcess,
    control,
    free_port,
    get_json,
    http_get,
    http_request,
    publish,
    raw_client,
    self_signed_certificate,
)

TIMESTAMP = "2026-01-01T00:00:00+00:00"
# The Plotly bundle the page loads (relay/static/vendor/), as index.html names it.
PLOTLY_PATH = "/" + re.search(
    r'href="(static/vendor/plotly[^"]+)"', (STATIC_DIR / "index.html").read_text()
).group(1)  # type: ignore[union-attr]
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


def nested(levels: int) -> Any:
    """An object nested ``levels`` deep: ``{"a": {"a": ... {}}}``."""
    value: Any = {}
    for _ in range(levels - 1):
        value = {"a": value}
    return value


VAL = {"epoch": 1, "phase": "val"}
MODE = {"is_federated": True, "num_rounds": 2, "num_clients": 3}
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
    ("pong-to-relay", bad("pong"), "sent by the relay"),
    ("binary-frame", bad().encode(), "binary frames"),
    # Each of these crashed the handler (1011 and a traceback) before the validator knew them.
    ("int-5001-digits", bad(data={"n": 1}).replace('"n": 1', '"n": 1' + "0" * 5000), "digits"),
    ("nested-10000", "[" * 10_000 + "]" * 10_000, "nested deeper than 32 levels"),
    ("nested-33", bad(data=nested(32)), "nested deeper than 32 levels"),  # with the envelope
    ("surrogate-run_id", bad(run_id="\ud800"), "run_id: not valid Unicode"),
    ("surrogate-msg_id", bad(msg_id="x\udfff"), "msg_id: not valid Unicode"),
    ("surrogate-type", bad("\ud800"), "type: not valid Unicode"),
    ("surrogate-timestamp", bad(timestamp="2026-01-01\ud80000:00:00"), "timestamp: "),
    ("surrogate-subscribe", bad("subscribe", {"run_id": "\ud800"}), "data.run_id: not valid"),
    ("since-2**63", bad("subscribe", {"since": 2**63}), "data.since: 9223372036854775808 is out"),
    ("since--2**63-1", bad("subscribe", {"since": -(2**63) - 1}), "data.since: -92233720368"),
    ("auth-without-token", bad("auth", {}), "data.token: missing"),
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
    lines_before = len(shared_relay.log_text().splitlines())
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
    new_lines = shared_relay.log_text().splitlines()[lines_before:]
    assert len(new_lines) == 1 and replies[0]["data"]["reason"] in new_lines[0]  # one says why
    assert "Traceback" not in shared_relay.log_text()


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


def stalled_subscriber(port: int, *frames: dict[str, Any]) -> socket.socket:
    """A raw WebSocket client that completes the handshake, sends ``frames``, never reads."""
    return raw_client(port, "/?subscribe" if frames else "/", frames)


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


def test_a_dashboard_that_stops_reading_during_a_replay_is_evicted(relay_factory: Any) -> None:
    # A replay used to write whole pages past the cap and then wait, unbounded, for a
    # socket that never drained: the relay's memory grew and the client was never evicted.
    cap = 256 * 1024
    relay = relay_factory(args=["--max-buffer-bytes", str(cap)])
    pad = "x" * 30_000
    total = 400  # 12 MB: more than the kernel buffers of one socket take
    publish(
        relay.ws_url, [make_message("custom", {"pad": pad}, run_id="big") for _ in range(total)]
    )
    started = time.monotonic()
    with stalled_subscriber(relay.port, control("subscribe", run_id="big", since=0)):
        with ListeningClient(relay.ws_url, run_id="big", since=0, timeout=30) as healthy:
            assert seqs(healthy.messages) == list(range(1, total + 1))
        deadline = started + STALL_TIMEOUT + 10
        while not get_json(f"{relay.http_url}/stats")["evicted"] and time.monotonic() < deadline:
            time.sleep(0.1)
        evicted_after = time.monotonic() - started
    assert get_json(f"{relay.http_url}/stats")["evicted"] == 1
    assert evicted_after < STALL_TIMEOUT + 10
    assert "during a replay (slow consumer)" in relay.log_text()


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
    assert (body["through_seq"], body["more"]) == (3, False)
    assert body["epoch"] == get_json(f"{relay.http_url}/healthz")["epoch"]  # whose seqs
    # The dashboard's two reads: all but some types first, then those types in pages.
    light = get_json(f"{relay.http_url}/api/runs/fed/metrics?exclude=epoch_end,client_metrics")
    assert (seqs(light["messages"]), light["through_seq"]) == ([1, 3], 3)
    first = get_json(
        f"{relay.http_url}/api/runs/fed/metrics?types=epoch_end,training_end&max_bytes=1"
    )
    assert (seqs(first["messages"]), first["through_seq"], first["more"]) == ([2], 2, True)
    rest = get_json(f"{relay.http_url}/api/runs/fed/metrics?types=epoch_end&since=2&until=3")
    assert (seqs(rest["messages"]), rest["through_seq"], rest["more"]) == ([], 3, False)


@pytest.mark.parametrize(
    ("path", "status", "content_type"),
    [
        ("/", 200, "text/html; charset=utf-8"),
        ("/static/index.html", 200, "text/html; charset=utf-8"),
        (PLOTLY_PATH, 200, "text/javascript; charset=utf-8"),
        ("/healthz", 200, "application/json; charset=utf-8"),
        ("/stats", 200, "application/json; charset=utf-8"),
        ("/api/runs", 200, "application/json; charset=utf-8"),
        ("/api/runs/nobody/metrics", 404, "application/json; charset=utf-8"),
        ("/api/runs/nobody/metrics?since=x", 400, "application/json; charset=utf-8"),
        ("/static/missing.js", 404, "application/json; charset=utf-8"),
        ("/static/../store.py", 404, "application/json; charset=utf-8"),
        ("/static/%2e%2e/store.py", 404, "application/json; charset=utf-8"),
        ("/no/such/path", 404, "application/json; charset=utf-8"),
        # Each of these answered 500 with a traceback in the log before.
        ("/static/%00", 404, "application/json; charset=utf-8"),
        ("/static/x%00.js", 404, "application/json; charset=utf-8"),
        ("/static/" + "a" * 300, 404, "application/json; charset=utf-8"),
        (f"/api/runs/nobody/metrics?since={2**63}", 400, "application/json; charset=utf-8"),
        (f"/api/runs/nobody/metrics?since={2**64}", 400, "application/json; charset=utf-8"),
        (f"/api/runs/nobody/metrics?since={-(2**64)}", 400, "application/json; charset=utf-8"),
        ("/api/runs/nobody/metrics?since=" + "9" * 5000, 400, "application/json; charset=utf-8"),
        ("/?token=s3cret", 400, "application/json; charset=utf-8"),
        ("/api/runs/nobody/metrics?until=soon", 400, "application/json; charset=utf-8"),
        ("/api/runs/nobody/metrics?max_bytes=0", 400, "application/json; charset=utf-8"),
        ("/api/runs/nobody/metrics?max_bytes=", 400, "application/json; charset=utf-8"),
        ("/api/runs/nobody/metrics?until=", 400, "application/json; charset=utf-8"),
        ("/api/runs/nobody/metrics?types=", 400, "application/json; charset=utf-8"),
        ("/api/runs/nobody/metrics?types=,", 400, "application/json; charset=utf-8"),
        (
            "/api/runs/nobody/metrics?exclude=" + ",".join("t" * 33),
            400,
            "application/json; charset=utf-8",
        ),
    ],
)
def test_http_endpoint(
    shared_relay: RelayProcess, path: str, status: int, content_type: str
) -> None:
    log_before = len(shared_relay.log_text())
    code, headers, body = http_get(shared_relay.http_url + path)
    assert "Traceback" not in shared_relay.log_text()[log_before:]
    assert code == status
    assert headers.get_all("Content-Type") == [content_type]  # exactly one header
    if content_type.startswith("application/json"):
        payload = json.loads(body)
        assert ("error" in payload) == (status != 200)
    if path == PLOTLY_PATH:
        assert b"plotly" in body[:2000].lower()
    # Only the vendored files, whose names carry their version, may be kept by a browser.
    cached = path.startswith("/static/vendor/")
    assert headers["Cache-Control"] == ("max-age=3600" if cached else "no-store")


def test_repeated_headers_and_malformed_urls_get_a_400_not_a_500(
    shared_relay: RelayProcess,
) -> None:
    upgrade = [
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ("Sec-WebSocket-Version", "13"),
    ]
    twice = [("Authorization", "Bearer a"), ("Authorization", "Bearer b")]
    for path, headers, error in [
        ("/api/runs", twice, "more than one Authorization header"),
        ("/", [*upgrade, *twice], "more than one Authorization header"),
        ("/", [*upgrade, ("Origin", "http://a"), ("Origin", "http://b")], "more than one Origin"),
        ("//[x/healthz", [], "malformed URL"),
        ("//[x/", upgrade, "malformed URL"),
    ]:
        status, _, body = http_request(shared_relay.port, path, headers)
        assert status == 400, body
        assert error in json.loads(body)["error"]
    assert "Traceback" not in shared_relay.log_text()


def test_healthz_stats_and_favicon(relay: RelayProcess) -> None:
    health = get_json(f"{relay.http_url}/healthz")
    assert health == {"status": "ok", "epoch": health["epoch"]}
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


def test_api_runs_lists_1000_runs_from_memory_within_50_ms(relay: RelayProcess) -> None:
    publish(relay.ws_url, [epoch_end(f"run-{i:04}", 1) for i in range(1000)])
    timings = []
    for _ in range(5):
        started = time.perf_counter()
        runs = get_json(f"{relay.http_url}/api/runs")["runs"]
        timings.append(time.perf_counter() - started)
    assert [r["run_id"] for r in runs] == [f"run-{i:04}" for i in reversed(range(1000))]
    assert sorted(timings)[2] <= 0.05, timings  # the median, HTTP round trip included


def test_a_seed_format_run_is_found_by_its_training_end_run_id(relay: RelayProcess) -> None:
    # The original design: no top-level run_id (filed under the default run), and its
    # training_end names the run with an integer.
    seed = [
        {"type": "training_mode", "timestamp": TIMESTAMP, "data": MODE},
        {"type": "epoch_end", "timestamp": TIMESTAMP, "data": {**VAL, "metrics": METRICS}},
        {
            "type": "training_end",
            "timestamp": TIMESTAMP,
            "data": {"run_id": 42, "status": "completed", "final_metrics": METRICS},
        },
    ]
    assert [r["type"] for r in publish(relay.ws_url, seed)] == ["ack"] * 3
    body = get_json(f"{relay.http_url}/api/runs/42/metrics")
    assert (body["run_id"], body["status"], body["mode"]) == ("default", "completed", "federated")
    assert body["training_end"]["run_id"] == 42  # exactly as sent
    assert [m["type"] for m in body["messages"]] == ["training_mode", "epoch_end", "training_end"]
    publish(relay.ws_url, [epoch_end("42", 1)])  # a run really named "42" comes first
    assert get_json(f"{relay.http_url}/api/runs/42/metrics")["run_id"] == "42"


def test_dashboards_are_told_when_a_run_appears_and_when_it_ends(relay: RelayProcess) -> None:
    with (
        ListeningClient(f"{relay.ws_url}/?subscribe") as dashboard,
        ListeningClient(relay.ws_url) as listener,
        ListeningClient(f"{relay.ws_url}/?publish") as publisher,
    ):
        end = {"run_id": "r", "status": "early_stopped", "final_metrics": METRICS}
        publisher.send(make_message("training_mode", MODE, run_id="r"))
        publisher.wait_for_type("ack")  # one summary per run and commit: its latest state
        for message in [epoch_end("r", 1), epoch_end("r", 2)]:
            publisher.send(message)
        publisher.wait_for_type("ack", count=3)
        publisher.send(make_message("training_end", end, run_id="r"))
        publisher.wait_for_type("ack", count=4)
        listener.wait_for(lambda msgs: len(seqs(msgs)) == 4)
        summaries = dashboard.wait_for_type("run_summary", count=2)
        for client in (dashboard, listener, publisher):  # all that was sent has arrived
            client.send(control("ping"))
            client.wait_for_type("pong", count=2)
    assert [s["data"]["status"] for s in dashboard.of_type("run_summary")] == [
        "running",
        "early_stopped",
    ]
    assert summaries[0]["data"]["message_count"] == 1
    assert summaries[-1]["data"] == get_json(f"{relay.http_url}/api/runs")["runs"][0]
    validate_message(summaries[-1])  # as the protocol declares it
    assert listener.of_type("run_summary") == publisher.of_type("run_summary") == []


def test_each_database_has_an_epoch_that_a_resubscribe_can_check(relay_factory: Any) -> None:
    relay = relay_factory()
    publish(relay.ws_url, [epoch_end("run", e) for e in range(1, 4)])
    epoch = get_json(f"{relay.http_url}/healthz")["epoch"]
    assert get_json(f"{relay.http_url}/api/runs")["epoch"] == epoch
    with ListeningClient(relay.ws_url, run_id="run", since=0) as first:
        [end] = first.of_type("replay_end")
    assert end["data"] == {"run_id": "run", "last_seq": 3, "epoch": epoch, "recovered": None}
    relay.restart()  # the same database: the same epoch, and its seqs hold
    assert get_json(f"{relay.http_url}/healthz")["epoch"] == epoch
    with ListeningClient(relay.ws_url, subscribe=True) as again:
        again.subscribe("run", since=2, epoch=epoch)
    assert seqs(again.messages) == [3]
    assert again.of_type("replay_end")[-1]["data"]["recovered"] is True

    other = relay_factory()  # another (empty) database: its seqs are not the old ones
    publish(other.ws_url, [epoch_end("run", 1)])
    with ListeningClient(other.ws_url, subscribe=True) as moved:
        moved.subscribe("run", since=3, epoch=epoch)
    end = moved.of_type("replay_end")[-1]
    assert seqs(moved.messages) == [1]  # replayed from 0, not from 3
    assert end["data"]["recovered"] is False
    assert end["data"]["epoch"] == get_json(f"{other.http_url}/healthz")["epoch"] != epoch


# --------------------------------------------------------------------------- private reads


def test_a_viewer_token_guards_every_read(relay_factory: Any) -> None:
    viewer, publisher_token = "v1ewer-token-value", "publisher-token-value"
    relay = relay_factory(token=publisher_token, env={"FL_STREAM_VIEWER_TOKEN": viewer})
    status, headers, body = http_get(f"{relay.http_url}/api/runs")
    assert (status, headers["WWW-Authenticate"]) == (401, "Bearer")
    assert json.loads(body)["error"].startswith("unauthorised")
    for path in ("/healthz", "/", "/static/index.html"):  # they hold no run data
        assert http_get(relay.http_url + path)[0] == 200
    for token, expected in [(viewer, 200), (publisher_token, 200), ("wrong", 401)]:
        header = [("Authorization", f"Bearer {token}")]
        assert http_request(relay.port, "/api/runs", header)[0] == expected
    with (
        ListeningClient(relay.ws_url) as anonymous,
        ListeningClient(relay.ws_url, token=viewer) as reader,
        ListeningClient(f"{relay.ws_url}/?subscribe") as browser,
        ListeningClient(f"{relay.ws_url}/?subscribe") as locked,  # never authenticates
    ):
        anonymous.send(control("subscribe", run_id=None, since=0))
        refused = anonymous.wait_for_type("rejected")[0]["data"]["reason"]
        browser.send(control("auth", token="wrong"))
        browser.wait_for_type("rejected")
        browser.send(control("auth", token=viewer))
        assert browser.wait_for_type("authenticated")[0]["data"] == {"can_publish": False}
        browser.subscribe(None, since=0)
        assert publish(relay.ws_url, [epoch_end("run", 1)])[0]["type"] == "rejected"
        assert (
            publish(relay.ws_url, [epoch_end("run", 1)], token=publisher_token)[0]["type"] == "ack"
        )
        reader.wait_for(lambda msgs: seqs(msgs) == [1])
        browser.wait_for(lambda msgs: seqs(msgs) == [1])
        browser.wait_for_type("run_summary")
        anonymous.send(control("auth", token=viewer))  # a listener: everything from now on
        anonymous.wait_for_type("authenticated")
        publish(relay.ws_url, [epoch_end("run", 2)], token=publisher_token)
        anonymous.wait_for(lambda msgs: seqs(msgs) == [2])
        locked.send(control("ping"))
        locked.wait_for_type("pong", count=2)
    assert refused.startswith("unauthorised")
    assert [m["type"] for m in locked.messages] == ["pong", "pong"]  # no run data, no summary
    with pytest.raises(InvalidStatus) as in_url:
        ListeningClient(f"{relay.ws_url}/?subscribe&token={viewer}")
    assert in_url.value.response.status_code == 400
    log = relay.log_text()
    assert viewer not in log and publisher_token not in log and "Traceback" not in log


def test_with_a_certificate_the_relay_serves_wss_and_https(tmp_path: Path) -> None:
    cert, key = self_signed_certificate(tmp_path)
    port = free_port()
    command = [sys.executable, "-m", "relay", "--host", "127.0.0.1", "--port", str(port)]
    command += ["--db", str(tmp_path / "relay.db"), "--certfile", str(cert), "--keyfile", str(key)]
    log = tmp_path / "relay.log"
    trusted = ssl.create_default_context(cafile=str(cert))
    with open(log, "wb") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while b"ready" not in log.read_bytes():
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        assert f"wss://127.0.0.1:{port}" in log.read_text()
        with urllib.request.urlopen(f"https://127.0.0.1:{port}/healthz", context=trusted) as reply:
            assert json.loads(reply.read())["status"] == "ok"
        url = f"wss://127.0.0.1:{port}"
        with connect(f"{url}/?subscribe", ssl=trusted) as dashboard:
            dashboard.send(json.dumps(control("subscribe", run_id="run", since=0)))
            assert json.loads(dashboard.recv(10))["type"] == "replay_end"
            with connect(f"{url}/?publish", ssl=trusted) as publisher:
                publisher.send(json.dumps(epoch_end("run", 1)))
                assert json.loads(publisher.recv(10))["type"] == "ack"
            assert json.loads(dashboard.recv(10))["seq"] == 1
        with pytest.raises(ssl.SSLError):  # a client that does not trust it cannot connect
            connect(url, ssl=ssl.create_default_context(), open_timeout=10)
    finally:
        process.terminate()
        process.wait(10)
    assert process.returncode == 0
    assert "Traceback" not in log.read_text()


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


def test_a_certificate_without_its_key_or_one_unreadable_is_a_one_line_error(
    tmp_path: Path,
) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate")
    alone = run_relay_cli("--certfile", str(junk), "--db", str(tmp_path / "r.db"))
    assert alone.returncode == 2 and "--certfile and --keyfile go together" in alone.stderr
    unreadable = run_relay_cli(
        *("--port", str(free_port()), "--db", str(tmp_path / "r.db")),
        *("--certfile", str(junk), "--keyfile", str(junk)),
    )
    assert unreadable.returncode == 1 and "cannot load TLS certificate" in unreadable.stderr
    for result in (alone, unreadable):
        assert result.stderr.strip().count("\n") == 0 and "Traceback" not in result.stderr


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
    assert get_json(f"{relay.http_url}/healthz")["status"] == "ok"  # the first one is fine


def test_closed_connection_mid_send_does_not_disturb_others(relay: RelayProcess) -> None:
    with ListeningClient(relay.ws_url) as dashboard:
        with connect(relay.ws_url) as quitter:
            quitter.send(json.dumps(epoch_end("run", 1)))
        publish(relay.ws_url, [epoch_end("run", 2)])
        received = dashboard.wait_for(lambda msgs: len(seqs(msgs)) == 2)
    assert seqs(received) == [1, 2]


def test_the_page_preloads_every_module_it_has() -> None:
    # index.html lists them so the browser fetches them at once, not import level by level.
    html = (STATIC_DIR / "index.html").read_text()
    preloaded = set(re.findall(r'rel="modulepreload" href="static/([^"]+)"', html))
    assert preloaded == {path.name for path in STATIC_DIR.glob("*.js")} - {"dashboard.js"}
    assert 'type="module" src="static/dashboard.js"' in html
