"""MetricsWebSocketSender against a real WebSocket server started in the test on 127.0.0.1.

:class:`AckServer` speaks the relay's publisher protocol (store each new ``(run_id, msg_id)``
once, reply ``ack {run_id, seq, msg_id}``, re-ack a resent duplicate) and can drop a
connection mid-stream, refuse messages, never ack (a relay of the original design), or mix
other frames among its replies (a relay that predates publisher connections).
One test also publishes to the real relay process. The delivery rules themselves are tested
without a socket in ``tests/test_window.py``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from fl_stream.monitor.connection import publisher_uri
from fl_stream.monitor.protocol import MESSAGE_TYPES, utc_timestamp, validate_message
from fl_stream.monitor.runlog import read_log
from fl_stream.monitor.sender import MetricsWebSocketSender
from tests.support import free_port, get_json

Message = dict[str, Any]

WAIT = 10.0  # bounded waits, generous for a loaded 2-core machine
METRICS = {
    "loss": 0.25,
    "accuracy": 0.9,
    "precision": 0.8,
    "recall": 0.7,
    "f1": 0.75,
    "auroc": 0.88,
}


class AckServer:
    """A relay stand-in in a background thread with its own event loop.

    Args:
        port: where to listen (a free port when None).
        ack: reply ``ack`` to each message (False: a relay of the original design).
        drop_at: after storing the message with this number (1-based, counting stored
            messages), abort the connection before acking it, once.
        reject: returns a reason to refuse a message, or None to accept it.
        store_fails_at: refuse the frame with this number (1-based) once, as the relay does
            when its store fails ("send it again"): without naming it, or, with
            ``retry_named``, naming its msg_id with ``retry: true``.
        chatter: before each reply, also send what an older relay sends every connection:
            another publisher's live message, a pong and a frame that is not JSON.
        tls: serve ``wss://`` with this server context (its certificate and key loaded).
    """

    def __init__(
        self,
        port: int | None = None,
        *,
        ack: bool = True,
        drop_at: int | None = None,
        reject: Callable[[Message], str | None] = lambda message: None,
        store_fails_at: int | None = None,
        retry_named: bool = False,
        chatter: bool = False,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.port = port or free_port()
        self.url = f"{'wss' if tls else 'ws'}://127.0.0.1:{self.port}"
        self._tls = tls
        self.stored: list[Message] = []  # each (run_id, msg_id) once, in arrival order
        self.frames = 0  # every frame received, duplicates included
        self.authorizations: list[str | None] = []
        self.paths: list[str] = []  # each connection's request path and query
        self.connections = 0
        self._ack = ack
        self._drop_at = drop_at
        self._reject = reject
        self._store_fails_at = store_fails_at
        self._retry_named = retry_named
        self._chatter = chatter
        self._seen: dict[tuple[str, str], int] = {}
        self._ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._stop = asyncio.Event()
        self._thread = threading.Thread(target=self._loop.run_until_complete, args=(self._serve(),))

    def __enter__(self) -> AckServer:
        self._thread.start()
        assert self._ready.wait(WAIT), "test server did not start"
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(WAIT)
        self._loop.close()

    async def _serve(self) -> None:
        async with serve(self._handle, "127.0.0.1", self.port, compression=None, ssl=self._tls):
            self._ready.set()
            await self._stop.wait()

    async def _handle(self, websocket: ServerConnection) -> None:
        self.connections += 1
        self.authorizations.append(websocket.request.headers.get("Authorization"))
        self.paths.append(websocket.request.path)
        try:
            async for text in websocket:
                self.frames += 1
                await self._take(websocket, json.loads(text))
        except ConnectionClosed:
            pass

    async def _take(self, websocket: ServerConnection, message: Message) -> None:
        msg_id = message.get("msg_id")
        if self._chatter:
            other = {**message, "run_id": "someone-else", "msg_id": "other-1", "seq": 1}
            for frame in (json.dumps(other), _reply("pong", {}), "not json"):
                await websocket.send(frame)
        if self.frames == self._store_fails_at:
            refusal: dict[str, Any] = {"reason": "store failed; send it again"}
            if self._retry_named:
                refusal.update(msg_id=msg_id, retry=True)
            await websocket.send(_reply("rejected", refusal))
            return
        reason = self._reject(message)
        if reason is not None:
            await websocket.send(_reply("rejected", {"reason": reason, "msg_id": msg_id}))
            return
        run_id = message.get("run_id", "default")
        key = (run_id, msg_id)
        if key not in self._seen:
            self.stored.append(message)
            self._seen[key] = len(self.stored)
            if len(self.stored) == self._drop_at:
                self._drop_at = None
                websocket.transport.abort()  # like a network failure: no closing handshake
                return
        if self._ack:
            await websocket.send(
                _reply("ack", {"run_id": run_id, "seq": self._seen[key], "msg_id": msg_id})
            )


def _reply(kind: str, data: dict[str, Any]) -> str:
    return json.dumps({"type": kind, "timestamp": utc_timestamp(), "data": data})


def wait_until(condition: Callable[[], bool], timeout: float = WAIT) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


@pytest.fixture
def server() -> Iterator[AckServer]:
    with AckServer() as running:
        yield running


def epochs(messages: list[Message]) -> list[int]:
    return [message["data"]["epoch"] for message in messages]


# --------------------------------------------------------------------------- envelopes


def test_every_message_type_has_the_designed_envelope(server: AckServer, make_sender) -> None:
    sender = make_sender(server.url, run_id="run-7")
    client = {"client_id": "3", "num_examples": 120, "metrics": {"loss": 0.3}}
    calls = [
        sender.send_training_mode(True, 3, 2),
        sender.send_epoch_end(1, "val", METRICS),
        sender.send_round_metrics(1, 3, METRICS),
        sender.send_round_end(1, 3, {"loss": 0.4}, {"loss": 0.5}),
        sender.send_client_metrics(1, 3, "train", [client]),
        sender.send_early_stopping_triggered(4, 0.91, "val_auroc", 3),
        sender.send_error("CUDA out of memory", "RuntimeError"),
        sender.send_training_end(
            "run-7", {"status": "completed", "best_round": 2, "final_metrics": METRICS}
        ),
        # client_progress comes from fl_stream.monitor.progress, through send_metrics.
        sender.send_metrics(
            {"round": 1, "phase": "train", "client_id": "3", "epoch": 1, "num_epochs": 2}
            | {"batch": 5, "num_batches": 10},
            "client_progress",
        ),
        sender.send_metrics({"lr": 0.01}, "custom_metrics"),
    ]
    assert all(calls)
    assert sender.flush(WAIT)

    by_type = {message["type"]: message for message in server.stored}
    assert sorted(by_type) == sorted([*MESSAGE_TYPES, "custom_metrics"])
    for message in server.stored:
        validate_message(message)
        assert set(message) == {"type", "timestamp", "data", "run_id", "msg_id"}
        assert message["run_id"] == "run-7"
        assert message["msg_id"].startswith(sender.sender_id)
    assert len({message["msg_id"] for message in server.stored}) == len(calls)
    assert by_type["training_mode"]["data"] == {
        "is_federated": True,
        "num_rounds": 3,
        "num_clients": 2,
    }
    assert by_type["epoch_end"]["data"] == {"epoch": 1, "phase": "val", "metrics": METRICS}
    assert by_type["round_metrics"]["data"] == {"round": 1, "total_rounds": 3, "metrics": METRICS}
    assert by_type["round_end"]["data"] == {
        "round": 1,
        "total_rounds": 3,
        "fit_metrics": {"loss": 0.4},
        "eval_metrics": {"loss": 0.5},
    }
    assert by_type["client_metrics"]["data"] == {
        "round": 1,
        "total_rounds": 3,
        "phase": "train",
        "clients": [client],
    }
    stopping = by_type["early_stopping"]["data"]
    assert stopping["epoch"] == 4 and stopping["patience"] == 3
    assert stopping["metric_name"] == "val_auroc" and stopping["best_metric_value"] == 0.91
    assert "val_auroc" in stopping["reason"] and "3" in stopping["reason"]
    assert by_type["error"]["data"] == {"error": "CUDA out of memory", "error_type": "RuntimeError"}
    assert by_type["training_end"]["data"] == {
        "run_id": "run-7",
        "status": "completed",
        "best_round": 2,
        "final_metrics": METRICS,
    }
    assert by_type["custom_metrics"]["data"] == {"lr": 0.01}


def test_a_thousand_messages_arrive_in_order_on_one_connection(
    server: AckServer, make_sender
) -> None:
    sender = make_sender(server.url)
    for epoch in range(1000):
        assert sender.send_epoch_end(epoch, "train", METRICS)
    assert sender.flush(WAIT)
    assert epochs(server.stored) == list(range(1000))
    assert server.frames == 1000 and server.connections == 1
    stats = sender.stats()
    assert (stats.acked, stats.pending, stats.dropped, stats.resent) == (1000, 0, 0, 0)


def test_numpy_and_torch_values_are_encoded(server: AckServer, make_sender) -> None:
    sender = make_sender(server.url)
    metrics = {
        "loss": torch.tensor(0.5),
        "accuracy": np.float32(0.75),
        "f1": np.array(0.25),
        "auroc": float("nan"),
        "precision": np.float64("inf"),
        "recall": torch.tensor([-math.inf]),
    }
    assert sender.send_epoch_end(np.int64(2), "train", metrics)
    assert sender.send_training_mode(np.bool_(False), 0, 0, num_epochs=torch.tensor(5))
    assert sender.flush(WAIT)
    epoch_end, mode = server.stored
    assert epoch_end["data"] == {
        "epoch": 2,
        "phase": "train",
        "metrics": {
            "loss": 0.5,
            "accuracy": 0.75,
            "f1": 0.25,
            "auroc": "NaN",
            "precision": "Infinity",
            "recall": "-Infinity",
        },
    }
    assert mode["data"] == {
        "is_federated": False,
        "num_rounds": 0,
        "num_clients": 0,
        "num_epochs": 5,
    }


def test_a_bad_value_logs_a_clear_error_and_raises_nothing(
    server: AckServer, make_sender, caplog: pytest.LogCaptureFixture
) -> None:
    sender = make_sender(server.url)
    with caplog.at_level(logging.ERROR, logger="fl_stream.monitor.sender"):
        assert sender.send_epoch_end(1, "train", {"loss": object()}) is False
        assert sender.send_epoch_end(1, "train", {"loss": np.zeros(3)}) is False
        assert sender.send_epoch_end(1, "test", METRICS) is False
        assert sender.send_training_end("r", ["not", "a", "dict"]) is False
        assert sender.send_client_metrics(1, 2, "train", [{"client_id": 5}]) is False
        assert sender.send_epoch_end(2, "train", METRICS)
    errors = [record.getMessage() for record in caplog.records if record.levelno == logging.ERROR]
    assert len(errors) == 5
    assert "data.metrics.loss" in errors[0] and "object" in errors[0]
    assert "data.metrics.loss" in errors[1] and "3 elements" in errors[1]
    assert "data.phase" in errors[2] and "'test'" in errors[2]
    assert "summary_data" in errors[3]
    assert "data.clients[0].client_id" in errors[4]
    assert sender.flush(WAIT)
    assert epochs(server.stored) == [2]
    assert sender.stats().invalid == 5


# --------------------------------------------------------------------------- outages


def test_nothing_listening_then_the_server_comes_up(make_sender, tmp_path: Path) -> None:
    port = free_port()
    log_path = tmp_path / "down.jsonl"
    sender = make_sender(f"ws://127.0.0.1:{port}", run_id="late", log_path=log_path)
    for epoch in range(200):
        assert sender.send_epoch_end(epoch, "train", METRICS)
    assert wait_until(lambda: len(list(read_log(log_path))) == 200)
    assert epochs(list(read_log(log_path))) == list(range(200))
    assert sender.stats().pending == 200

    with AckServer(port) as server:
        assert sender.flush(WAIT)
        assert epochs(server.stored) == list(range(200))
        assert server.frames == 200  # each queued message went out exactly once
    assert sender.stats().acked == 200


def test_a_dropped_connection_resends_without_loss_or_duplicate(make_sender) -> None:
    with AckServer(drop_at=300) as server:
        sender = make_sender(server.url, run_id="r")
        for epoch in range(1000):
            sender.send_epoch_end(epoch, "train", METRICS)
        assert sender.flush(WAIT)
        assert epochs(server.stored) == list(range(1000))
        assert server.connections == 2
        # Message 300 was stored but not acked: it was resent, and the server saw it twice.
        assert server.frames > 1000 and sender.stats().resent >= 1


@pytest.mark.parametrize("retry_named", [False, True], ids=["no-msg-id", "retry-true"])
def test_a_store_failure_resends_on_a_new_connection(make_sender, retry_named: bool) -> None:
    with AckServer(store_fails_at=50, retry_named=retry_named) as server:
        sender = make_sender(server.url)
        for epoch in range(100):
            sender.send_epoch_end(epoch, "train", METRICS)
        assert sender.flush(WAIT)
        # Each message stored once; the refused one lands after those the relay took after it.
        assert sorted(epochs(server.stored)) == list(range(100))
        assert server.connections == 2 and sender.stats().rejected == 0


def test_a_full_queue_drops_the_oldest_counts_and_logs_them(
    make_sender, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()
    log_path = tmp_path / "full.jsonl"
    with caplog.at_level(logging.INFO, logger="fl_stream.monitor.sender"):
        sender = make_sender(f"ws://127.0.0.1:{port}", max_queue=10, log_path=log_path)
        for epoch in range(25):
            assert sender.send_epoch_end(epoch, "train", METRICS)
        # The relay comes up only once the sender has seen it down: under load the calls can
        # overflow the callers' hand-off (15 dropped) before the sender's thread first dials.
        assert wait_until(lambda: any("unreachable" in r.getMessage() for r in caplog.records))
        assert wait_until(lambda: sender.stats().dropped == 15)
        with AckServer(port) as server:
            assert sender.flush(WAIT)
            assert epochs(server.stored) == list(range(15, 25))
            lines = [record.getMessage() for record in caplog.records]
    assert sorted(epochs(list(read_log(log_path)))) == list(range(25))  # dropped ones too
    assert len([line for line in lines if "unreachable" in line]) == 1  # one per outage
    assert len([line for line in lines if "dropping the oldest" in line]) == 1
    back = [line for line in lines if "reachable again" in line]
    assert len(back) == 1 and "15 dropped" in back[0] and "10 queued" in back[0]


def test_a_relay_without_acks_gets_each_message_once(make_sender) -> None:
    with AckServer(ack=False) as server:
        sender = make_sender(server.url, ack_timeout=0.3)
        for epoch in range(50):
            sender.send_epoch_end(epoch, "train", METRICS)
        assert sender.flush(WAIT)
        assert epochs(server.stored) == list(range(50))
        assert server.frames == 50
        assert sender.stats().unconfirmed == 50


def test_a_rejected_message_is_dropped_and_its_reason_logged_once(
    make_sender, caplog: pytest.LogCaptureFixture
) -> None:
    def refuse_errors(message: Message) -> str | None:
        return "errors are not allowed here" if message["type"] == "error" else None

    with AckServer(reject=refuse_errors) as server, caplog.at_level(logging.ERROR):
        sender = make_sender(server.url)
        for _ in range(3):
            sender.send_error("boom", "ValueError")
        sender.send_epoch_end(1, "train", METRICS)
        assert sender.flush(WAIT)
        assert [m["type"] for m in server.stored] == ["epoch_end"]
        assert server.frames == 4  # nothing resent
    reasons = [
        r.getMessage() for r in caplog.records if "errors are not allowed here" in r.getMessage()
    ]
    assert len(reasons) == 1
    assert sender.stats().rejected == 3


# --------------------------------------------------------------------------- callers


def test_several_threads_at_once_lose_nothing(server: AckServer, make_sender) -> None:
    sender = make_sender(server.url)
    threads = [
        threading.Thread(
            target=lambda t=t: [
                sender.send_round_metrics(i, 250, {"thread": t}) for i in range(250)
            ]
        )
        for t in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)
    assert sender.flush(WAIT)
    assert len(server.stored) == 2000
    for t in range(8):
        rounds = [m["data"]["round"] for m in server.stored if m["data"]["metrics"]["thread"] == t]
        assert rounds == list(range(250))  # each thread's messages in its own order


def test_calls_from_inside_a_running_event_loop(server: AckServer, make_sender) -> None:
    sender = make_sender(server.url)

    async def training_step() -> bool:
        loop = asyncio.get_running_loop()
        for epoch in range(20):
            assert sender.send_epoch_end(epoch, "train", METRICS)
            await asyncio.sleep(0)
        assert asyncio.get_running_loop() is loop
        return await asyncio.to_thread(sender.flush, WAIT)

    assert asyncio.run(training_step())
    assert epochs(server.stored) == list(range(20))


def test_close_flushes_and_later_calls_are_refused(server: AckServer, make_sender) -> None:
    sender = make_sender(server.url)
    for epoch in range(500):
        sender.send_epoch_end(epoch, "train", METRICS)
    assert sender.close(timeout=WAIT)
    assert epochs(server.stored) == list(range(500))
    assert sender.send_epoch_end(500, "train", METRICS) is False
    assert sender.close() is True  # twice is fine


def test_close_with_the_relay_down_returns_after_its_timeout(make_sender, tmp_path: Path) -> None:
    sender = make_sender(f"ws://127.0.0.1:{free_port()}", log_path=tmp_path / "x.jsonl")
    sender.send_epoch_end(1, "train", METRICS)
    assert sender.close(timeout=0.2) is False
    assert epochs(list(read_log(tmp_path / "x.jsonl"))) == [1]


def test_an_unclosed_sender_delivers_at_interpreter_exit(server: AckServer, tmp_path: Path) -> None:
    script = (
        "import sys\n"
        "from fl_stream.monitor.sender import MetricsWebSocketSender\n"
        "sender = MetricsWebSocketSender(sys.argv[1], log_path=sys.argv[2], exit_timeout=5)\n"
        "for epoch in range(50):\n"
        "    sender.send_epoch_end(epoch, 'train', {'loss': 0.5})\n"
    )
    log_path = tmp_path / "exit.jsonl"
    subprocess.run(
        [sys.executable, "-c", script, server.url, str(log_path)], check=True, timeout=60
    )
    assert epochs(server.stored) == list(range(50))
    assert epochs(list(read_log(log_path))) == list(range(50))


def test_the_publisher_token_is_sent_as_a_bearer_header(server: AckServer, make_sender) -> None:
    sender = make_sender(server.url, token="s3cret")
    sender.send_error("x", "y")
    assert sender.flush(WAIT)
    assert server.authorizations == ["Bearer s3cret"]


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("ws://127.0.0.1:8765", "ws://127.0.0.1:8765/?publish"),
        ("ws://127.0.0.1:8765/", "ws://127.0.0.1:8765/?publish"),
        ("wss://relay.example/fl/ws?x=1", "wss://relay.example/fl/ws?x=1&publish"),
        ("ws://h/?publish", "ws://h/?publish"),
        ("ws://h/?x=1&publish=yes", "ws://h/?x=1&publish=yes"),
        ("ws://h/?publisher=1", "ws://h/?publisher=1&publish"),
    ],
)
def test_the_publisher_uri_adds_publish_to_the_query(uri: str, expected: str) -> None:
    assert publisher_uri(uri) == expected


def test_the_sender_connects_as_a_publisher_keeping_path_and_query(
    server: AckServer, make_sender
) -> None:
    sender = make_sender(f"{server.url}/runs/feed?x=1")
    sender.send_error("x", "y")
    assert sender.flush(WAIT)
    assert server.paths == ["/runs/feed?x=1&publish"]
    assert sender.websocket_uri == f"{server.url}/runs/feed?x=1"  # as given


def test_frames_other_than_replies_are_ignored(
    make_sender, caplog: pytest.LogCaptureFixture
) -> None:
    with AckServer(chatter=True) as server, caplog.at_level(logging.WARNING):
        sender = make_sender(server.url, run_id="r")
        for epoch in range(20):
            sender.send_epoch_end(epoch, "train", METRICS)
        assert sender.flush(WAIT)
        assert epochs(server.stored) == list(range(20)) and server.frames == 20
    stats = sender.stats()
    assert (stats.acked, stats.pending, stats.resent) == (20, 0, 0)
    invalid = [r.getMessage() for r in caplog.records if "invalid reply" in r.getMessage()]
    assert len(invalid) == 1  # the frame that is not JSON, reported once


def test_without_a_relay_uri_messages_go_to_the_log_only(make_sender, tmp_path: Path) -> None:
    sender = make_sender(None, log_path=tmp_path / "only.jsonl")
    for epoch in range(5):
        sender.send_epoch_end(epoch, "val", METRICS)
    assert sender.flush(WAIT)
    assert epochs(list(read_log(tmp_path / "only.jsonl"))) == list(range(5))


def test_the_default_log_path_follows_the_run_id(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FL_STREAM_LOG_DIR", str(tmp_path / "logs"))
    with MetricsWebSocketSender(None, run_id="exp/1 a") as sender:
        sender.send_error("x", "y")
    assert sender.log_path == tmp_path / "logs" / "exp_1_a.jsonl"
    assert [m["type"] for m in read_log(sender.log_path)] == ["error"]


# --------------------------------------------------------------------------- the real relay


def test_the_real_relay_stores_each_message_once(
    relay_factory, make_sender, caplog: pytest.LogCaptureFixture
) -> None:
    relay = relay_factory(token="tok")
    sender = make_sender(relay.ws_url, run_id="real", token="tok")
    for epoch in range(20):
        sender.send_epoch_end(epoch, "train", METRICS)
    assert sender.flush(WAIT)
    relay.restart()  # same port and database; the sender reconnects by itself
    for epoch in range(20, 30):
        sender.send_epoch_end(epoch, "train", METRICS)
    assert sender.flush(WAIT)
    stored = get_json(f"{relay.http_url}/api/runs/real/metrics")["messages"]
    assert epochs(stored) == list(range(30))
    assert [message["seq"] for message in stored] == list(range(1, 31))

    with caplog.at_level(logging.WARNING, logger="fl_stream.monitor.sender"):
        intruder = make_sender(relay.ws_url, run_id="real", token="wrong")
        intruder.send_epoch_end(99, "train", METRICS)
        assert wait_until(lambda: any("HTTP 401" in r.getMessage() for r in caplog.records))
        assert intruder.stats().pending == 1
        assert intruder.close(timeout=0.1) is False
    stored = get_json(f"{relay.http_url}/api/runs/real/metrics")["messages"]
    assert 99 not in epochs(stored)
