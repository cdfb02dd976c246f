"""The original design's usage, exactly as it was written, through a real relay.

The original design's example messages are sent verbatim (as JSON text, no ``run_id`` or
``msg_id``: the original format) and every ``send_*`` method is called as its usage examples
call it, positional and keyword arguments alike. A raw websockets client that connected like
the original dashboards (``ws://...``, no query, never subscribes) must receive each message
once, intact and in order.
"""

from __future__ import annotations

import json
import time
from typing import Any

from websockets.sync.client import ClientConnection, connect

from fl_stream.monitor.sender import MetricsWebSocketSender
from scripts.localrun import RelayProcess
from tests.support import get_json

WAIT_S = 10.0
METRICS = {"loss": 0.42, "accuracy": 0.81, "precision": 0.8, "recall": 0.78, "f1": 0.79}

# The original design's examples, one per type, as a client of that design writes them.
ORIGINAL_EXAMPLES = [
    '{"type": "training_mode", "timestamp": "2024-01-15T10:30:00Z",'
    ' "data": {"is_federated": true, "num_rounds": 10, "num_clients": 5}}',
    '{"type": "epoch_end", "timestamp": "2024-01-15T10:31:00Z", "data": {"epoch": 1,'
    ' "phase": "train", "metrics": {"loss": 0.45, "accuracy": 0.82, "precision": 0.8,'
    ' "recall": 0.85, "f1": 0.82, "auroc": 0.88}}}',
    '{"type": "round_metrics", "timestamp": "2024-01-15T10:32:00Z", "data": {"round": 1,'
    ' "total_rounds": 10, "metrics": {"loss": 0.5, "accuracy": 0.78}}}',
    '{"type": "round_end", "timestamp": "2024-01-15T10:33:00Z", "data": {"round": 1,'
    ' "total_rounds": 10, "fit_metrics": {"loss": 0.48}, "eval_metrics": {"loss": 0.5,'
    ' "accuracy": 0.78}}}',
    '{"type": "early_stopping", "timestamp": "2024-01-15T10:34:00Z", "data": {"epoch": 8,'
    ' "best_metric_value": 0.31, "metric_name": "val_loss", "patience": 3,'
    ' "reason": "val_loss did not improve for 3 epochs"}}',
    '{"type": "training_end", "timestamp": "2024-01-15T10:35:00Z", "data": {"run_id": 42,'
    ' "status": "completed", "best_epoch": 5, "final_metrics": {"accuracy": 0.91}}}',
    '{"type": "error", "timestamp": "2024-01-15T10:36:00Z",'
    ' "data": {"error": "CUDA out of memory", "error_type": "RuntimeError"}}',
]


def _receive(dashboard: ClientConnection, count: int) -> list[dict[str, Any]]:
    """The next ``count`` run messages the dashboard receives (control frames skipped)."""
    received: list[dict[str, Any]] = []
    deadline = time.monotonic() + WAIT_S
    while len(received) < count:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"received {len(received)} of {count}: {received}"
        message = json.loads(dashboard.recv(timeout=remaining))
        if "seq" in message:  # run messages carry the relay's number; control frames do not
            received.append(message)
    return received


def test_the_original_examples_arrive_verbatim_once_and_in_order(relay: RelayProcess) -> None:
    with connect(relay.ws_url) as dashboard, connect(relay.ws_url) as publisher:
        for text in ORIGINAL_EXAMPLES:
            publisher.send(text)
        received = _receive(dashboard, len(ORIGINAL_EXAMPLES))
    for text, message in zip(ORIGINAL_EXAMPLES, received, strict=True):
        sent = json.loads(text)
        assert {key: message[key] for key in sent} == sent  # intact: nothing changed or lost
        assert set(message) - set(sent) == {"run_id", "seq"}  # only the relay's additions
    assert [m["seq"] for m in received] == list(range(1, len(ORIGINAL_EXAMPLES) + 1))
    # training_end's run_id stays the integer it was, and finds its run.
    assert received[5]["data"]["run_id"] == 42
    run = get_json(f"{relay.http_url}/api/runs/42/metrics")
    assert [m["seq"] for m in run["messages"]] == [m["seq"] for m in received]
    assert run["messages"][5]["data"]["run_id"] == 42


def test_every_send_method_called_as_the_usage_examples_call_it(relay: RelayProcess) -> None:
    with connect(relay.ws_url) as dashboard:
        sender = MetricsWebSocketSender(relay.ws_url)
        calls = [
            # Centralized usage.
            sender.send_training_mode(is_federated=False, num_rounds=0, num_clients=0),
            sender.send_epoch_end(epoch=1, phase="train", metrics=METRICS),
            sender.send_epoch_end(1, "val", METRICS),
            sender.send_early_stopping_triggered(
                epoch=6, best_metric_value=0.31, metric_name="val_loss", patience=3
            ),
            sender.send_training_end(run_id=42, summary_data={"best_epoch": 3}),
            # Federated usage.
            sender.send_training_mode(True, 10, 5),
            sender.send_round_metrics(1, 10, METRICS),
            sender.send_round_end(
                round_num=1, total_rounds=10, fit_metrics=METRICS, eval_metrics=METRICS
            ),
            sender.send_error("CUDA out of memory", "RuntimeError"),
            sender.send_metrics({"lr": 0.01}, "custom"),
        ]
        assert all(calls)
        assert sender.close(timeout=WAIT_S)
        received = _receive(dashboard, len(calls))
    assert [(m["type"], m["data"]) for m in received] == [
        ("training_mode", {"is_federated": False, "num_rounds": 0, "num_clients": 0}),
        ("epoch_end", {"epoch": 1, "phase": "train", "metrics": METRICS}),
        ("epoch_end", {"epoch": 1, "phase": "val", "metrics": METRICS}),
        (
            "early_stopping",
            {
                "epoch": 6,
                "best_metric_value": 0.31,
                "metric_name": "val_loss",
                "patience": 3,
                "reason": "val_loss did not improve for 3 epochs (best 0.31)",
            },
        ),
        (
            "training_end",
            {"run_id": 42, "status": "completed", "final_metrics": {}, "best_epoch": 3},
        ),
        ("training_mode", {"is_federated": True, "num_rounds": 10, "num_clients": 5}),
        ("round_metrics", {"round": 1, "total_rounds": 10, "metrics": METRICS}),
        (
            "round_end",
            {"round": 1, "total_rounds": 10, "fit_metrics": METRICS, "eval_metrics": METRICS},
        ),
        ("error", {"error": "CUDA out of memory", "error_type": "RuntimeError"}),
        ("custom", {"lr": 0.01}),
    ]
    assert [m["seq"] for m in received] == list(range(1, len(calls) + 1))  # once, in order
