"""StreamingStrategy's hooks without Ray: a Grid that hands each message to the real ClientApp.

The strategy (FedAvg, wrapped) streams through a real sender to a real relay; a real listening
client and the run's JSONL log are checked. Other Flower strategies are in
``test_strategies.py``, a full Flower simulation in ``test_simulation.py``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import pytest
import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, Result, Strategy
from flwr.supercore.task_identity import TaskIdentity

from client_app import app as client_app
from fl_stream.flower import EvaluateFn, StreamingStrategy, aggregate_metrics
from fl_stream.flower.config import RunConfig
from fl_stream.monitor.protocol import (
    COMPLETED,
    EVAL_BY_CLIENTS,
    EVAL_BY_SERVER,
    FAILED,
    METRIC_NAMES,
    validate_message,
)
from fl_stream.monitor.runlog import read_log
from fl_stream.monitor.sender import MetricsWebSocketSender
from fl_stream.pneumonia.model import build_model
from fl_stream.settings import shareable
from server_app import centralized_evaluation
from tests.support import ListeningClient, free_port

RUN_ID = 4242
# No live progress here (tests/test_progress.py covers it): nothing else reaches the relay.
SMALL = {"samples-per-client": 20, "batch-size": 8, "progress-interval": 0.0}
METRICS = set(METRIC_NAMES)
DEVICE = "cuda:0" if torch.cuda.is_available() else "cpu"  # where pick_device() trains
SYS_METRICS = {"sys_wall_time", "sys_examples_per_second", "sys_peak_rss_mb", "sys_cuda_peak_mb"}


class DirectGrid(Grid):
    """Delivers each message straight to ``app`` (our ClientApp) in this process, node by node."""

    def __init__(self, num_nodes: int, run_config: dict, app: ClientApp = client_app) -> None:
        self.app = app
        # Messages take their run and sender ids from the task identity a SuperLink would set.
        TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, RUN_ID, 0
        self.contexts = {
            1000 + i: Context(
                run_id=RUN_ID,
                node_id=1000 + i,
                node_config={"partition-id": i, "num-partitions": num_nodes},
                state=RecordDict(),
                run_config=run_config,
            )
            for i in range(num_nodes)
        }

    def set_run(self, run) -> None:
        raise NotImplementedError

    @property
    def run(self):
        raise NotImplementedError

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None) -> Message:
        return Message(
            content, dst_node_id=dst_node_id, message_type=message_type, group_id=group_id
        )

    def get_node_ids(self) -> list[int]:
        return list(self.contexts)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        raise NotImplementedError

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        raise NotImplementedError

    def send_and_receive(self, messages: Iterable[Message], *, timeout=None) -> list[Message]:
        return [self.app(m, self.contexts[m.metadata.dst_node_id]) for m in messages]


def start(
    strategy: Strategy,
    num_rounds: int = 2,
    evaluate_fn: EvaluateFn | None = None,
    run_config: dict = SMALL,
    grid: DirectGrid | None = None,
    initial_arrays: ArrayRecord | None = None,
) -> Result:
    """Run ``strategy`` (a StreamingStrategy) on ``grid``: default, our ClientApp on 2 nodes."""
    torch.manual_seed(0)
    if initial_arrays is None:
        initial_arrays = ArrayRecord(build_model().state_dict())
    return strategy.start(
        grid=grid if grid is not None else DirectGrid(2, run_config),
        initial_arrays=initial_arrays,
        num_rounds=num_rounds,
        evaluate_fn=evaluate_fn,
    )


def _run(sender, num_rounds: int = 2, evaluate_fn=None, settings=None, **fedavg_args):
    """FedAvg, streamed; ``settings`` go out with training_mode."""
    fedavg = FedAvg(
        train_metrics_aggr_fn=aggregate_metrics,
        evaluate_metrics_aggr_fn=aggregate_metrics,
        **fedavg_args,
    )
    streaming = StreamingStrategy(fedavg, sender, run_id=str(RUN_ID), run_config=settings)
    return start(streaming, num_rounds, evaluate_fn)


def test_hooks_stream_the_whole_run_to_a_listening_dashboard(relay, tmp_path):
    log_path = tmp_path / "run.jsonl"
    with ListeningClient(relay.ws_url) as dashboard:
        with MetricsWebSocketSender(relay.ws_url, run_id=str(RUN_ID), log_path=log_path) as sender:
            settings = shareable(RunConfig(relay_token="s3cret"))
            result = _run(
                sender, evaluate_fn=centralized_evaluation(RunConfig()), settings=settings
            )
            assert sender.flush(10.0)
        dashboard.wait_for_type("training_end")
        received = dashboard.data_messages()

    phase = ["round_metrics", "client_metrics"]
    per_round = [*phase, *phase, "round_end"]
    expected = ["training_mode", *per_round, *per_round, "training_end"]
    assert [m["type"] for m in received] == expected
    assert [m["seq"] for m in received] == list(range(1, len(received) + 1))
    for message in received:
        validate_message(message)
        assert message["run_id"] == str(RUN_ID)
    assert received[0]["data"] == {
        "is_federated": True,
        "num_rounds": 2,
        "num_clients": 2,
        "config": settings,
    }
    assert settings["strategy"] == "fedavg" and "relay-token" not in settings

    rounds = [m["data"] for m in received if m["type"] == "round_metrics"]
    assert [(r["round"], r["phase"], r["num_clients"]) for r in rounds] == [
        (1, "train", 2),
        (1, "evaluate", 2),
        (2, "train", 2),
        (2, "evaluate", 2),
    ]
    for data in rounds:
        assert data["metrics"].keys() >= METRICS
        assert all(isinstance(v, float) and math.isfinite(v) for v in data["metrics"].values())
    clients = [m["data"] for m in received if m["type"] == "client_metrics"]
    for data in clients:
        assert sorted(c["client_id"] for c in data["clients"]) == ["0", "1"]
        for client in data["clients"]:
            assert client["metrics"].keys() >= METRICS | SYS_METRICS and client["num_examples"] > 0
            assert isinstance(client["node_id"], str) and "error" not in client
            assert client["device"] == DEVICE and client["metrics"]["sys_wall_time"] > 0
    train_clients = clients[0]["clients"]
    assert {c["num_examples"] for c in train_clients} == {16}  # 20 capped, 20 % held out

    # Centralized evaluation is on: round_end carries the global model's test-set metrics,
    # and says so.
    round_end = [m["data"] for m in received if m["type"] == "round_end"]
    for rnd, data in enumerate(round_end, start=1):
        assert data["eval_source"] == EVAL_BY_SERVER
        assert data["eval_metrics"] == pytest.approx(dict(result.evaluate_metrics_serverapp[rnd]))
        assert data["fit_metrics"] == pytest.approx(dict(result.train_metrics_clientapp[rnd]))
    end = received[-1]["data"]
    assert end["run_id"] == str(RUN_ID) and end["status"] == COMPLETED
    assert end["best_metric"] == "loss"
    losses = {rnd: data["eval_metrics"]["loss"] for rnd, data in enumerate(round_end, start=1)}
    assert end["best_round"] == min(losses, key=losses.get)
    assert end["final_metrics"] == round_end[-1]["eval_metrics"]

    logged = list(read_log(log_path))
    assert [(m["msg_id"], m["type"], m["data"]) for m in logged] == [
        (m["msg_id"], m["type"], m["data"]) for m in received
    ]


def test_failure_streams_error_and_failed_end_then_raises_with_relay_down(tmp_path):
    log_path = tmp_path / "failed.jsonl"

    def broken_evaluation(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        if server_round == 1:
            raise RuntimeError("test set unreadable")
        return MetricRecord({"loss": 1.0})

    down = f"ws://127.0.0.1:{free_port()}"  # nothing listens there
    sender = MetricsWebSocketSender(down, run_id=str(RUN_ID), log_path=log_path)
    try:
        with pytest.raises(RuntimeError, match="test set unreadable"):
            _run(sender, num_rounds=2, evaluate_fn=broken_evaluation)
    finally:
        assert not sender.close(timeout=0.5)  # nothing was delivered; everything is logged

    logged = list(read_log(log_path))
    assert [m["type"] for m in logged] == [
        "training_mode",
        "round_metrics",
        "client_metrics",
        "round_metrics",
        "client_metrics",
        "error",
        "training_end",
    ]
    assert logged[-2]["data"] == {
        "error": "RuntimeError: test set unreadable",
        "error_type": "RuntimeError",
    }
    assert logged[-1]["data"]["status"] == FAILED and logged[-1]["data"]["best_round"] is None


def test_without_centralized_eval_round_end_carries_federated_eval(tmp_path):
    log_path = tmp_path / "log-only.jsonl"
    with MetricsWebSocketSender(None, run_id=str(RUN_ID), log_path=log_path) as sender:
        result = _run(sender, num_rounds=1)
    (round_end,) = [m["data"] for m in read_log(log_path) if m["type"] == "round_end"]
    assert round_end["eval_source"] == EVAL_BY_CLIENTS
    assert round_end["eval_metrics"] == pytest.approx(dict(result.evaluate_metrics_clientapp[1]))
    assert round_end["fit_metrics"] == pytest.approx(dict(result.train_metrics_clientapp[1]))


def test_server_only_evaluation_is_sent_as_the_servers(tmp_path):
    """fraction-evaluate=0: no client evaluates, so round_end's eval metrics are the server's."""

    def server_evaluation(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        return MetricRecord({"loss": 0.5, "accuracy": 0.75})

    log_path = tmp_path / "server-only.jsonl"
    with MetricsWebSocketSender(None, run_id=str(RUN_ID), log_path=log_path) as sender:
        _run(sender, num_rounds=1, evaluate_fn=server_evaluation, fraction_evaluate=0.0)
    logged = list(read_log(log_path))
    per_phase = [m for m in logged if m["type"] in ("round_metrics", "client_metrics")]
    assert [m["data"]["phase"] for m in per_phase] == ["train", "train"]
    (round_end,) = [m["data"] for m in logged if m["type"] == "round_end"]
    assert round_end["eval_source"] == EVAL_BY_SERVER
    assert round_end["eval_metrics"] == {"loss": 0.5, "accuracy": 0.75}


def _reply_record(num_examples: int, **metrics: float) -> RecordDict:
    return RecordDict({"metrics": MetricRecord({"num-examples": num_examples, **metrics})})


def test_aggregate_metrics_weights_by_examples_and_skips_nan():
    records = [
        _reply_record(30, loss=1.0, auroc=float("nan")),
        _reply_record(10, loss=3.0, auroc=0.8),
    ]
    aggregated = aggregate_metrics(records, "num-examples")
    assert aggregated["loss"] == pytest.approx(1.5)
    assert aggregated["auroc"] == pytest.approx(0.8)  # the one-class client does not poison it
    assert "num-examples" not in aggregated
    only_nan = aggregate_metrics([_reply_record(5, auroc=float("nan"))], "num-examples")
    assert math.isnan(only_nan["auroc"])
