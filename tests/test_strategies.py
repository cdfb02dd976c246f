"""Every Flower strategy streams: StreamingStrategy around FedAvg, FedProx, FedAdam, Krum, ...

Without Ray, on the in-process Grid of ``test_strategy.py``:

- the app's own strategies (run-config key ``strategy``) over our real ClientApp, each a full
  2-round run through a real relay to a real listening client;
- every strategy class of ``flwr.serverapp.strategy`` (and two DP wrappers, and a user's own
  subclass) over a tiny numpy ClientApp, into the run log;
- FedProx's proximal term reaching the client's training, and the run-config keys.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp.strategy import (
    Bulyan,
    DifferentialPrivacyServerSideAdaptiveClipping,
    DifferentialPrivacyServerSideFixedClipping,
    FedAdagrad,
    FedAdam,
    FedAvg,
    FedAvgM,
    FedMedian,
    FedProx,
    FedTrimmedAvg,
    FedYogi,
    Krum,
    MultiKrum,
    QFedAvg,
    Strategy,
)

import client_app
from fl_stream.flower import StreamingStrategy, sys_metrics_mod
from fl_stream.flower.config import ConfigError, RunConfig
from fl_stream.flower.strategies import STRATEGIES, build_strategy
from fl_stream.monitor.protocol import COMPLETED, EVAL_BY_CLIENTS, METRIC_NAMES, validate_message
from fl_stream.monitor.runlog import read_log
from fl_stream.monitor.sender import MetricsWebSocketSender
from fl_stream.pneumonia.task import proximal_term
from fl_stream.settings import shareable
from tests.support import ListeningClient
from tests.test_strategy import DEVICE, RUN_ID, SMALL, SYS_METRICS, DirectGrid, start

PER_ROUND = ["round_metrics", "client_metrics", "round_metrics", "client_metrics", "round_end"]


def _check_complete_run(messages: list[dict], rounds: int, clients: list[str]) -> None:
    """The sequence, validity and content every streamed run must have."""
    assert [m["type"] for m in messages] == [
        "training_mode",
        *PER_ROUND * rounds,
        "training_end",
    ]
    for message in messages:
        validate_message(message)
        assert message["run_id"] == str(RUN_ID)
    assert messages[0]["data"]["num_clients"] == len(clients)
    for data in (m["data"] for m in messages if m["type"] == "client_metrics"):
        assert sorted(c["client_id"] for c in data["clients"]) == clients
        for client in data["clients"]:
            assert client["device"] in (DEVICE, "cpu") and client["num_examples"] > 0
            assert client["metrics"].keys() >= SYS_METRICS
    for data in (m["data"] for m in messages if m["type"] == "round_metrics"):
        assert data["metrics"] and data["num_clients"] == len(clients)
    assert messages[-1]["data"]["status"] == COMPLETED


# --------------------------------------------------------------------------- our app's strategies


@pytest.mark.parametrize("name", ["fedavg", "fedprox", "fedadam", "krum"])
def test_the_apps_strategies_stream_a_complete_run_through_the_relay(name, relay, tmp_path):
    config = RunConfig.from_run_config({"strategy": name, "centralized-eval": False, **SMALL})
    with ListeningClient(relay.ws_url) as dashboard:
        with MetricsWebSocketSender(
            relay.ws_url, run_id=str(RUN_ID), log_path=tmp_path / "run.jsonl"
        ) as sender:
            strategy = StreamingStrategy(
                build_strategy(config), sender, run_config=shareable(config)
            )
            result = start(strategy)
            assert sender.flush(10.0)
        dashboard.wait_for_type("training_end")
        received = dashboard.data_messages()

    _check_complete_run(received, rounds=2, clients=["0", "1"])
    assert received[0]["data"]["config"]["strategy"] == name
    assert [m["seq"] for m in received] == list(range(1, len(received) + 1))
    for data in (m["data"] for m in received if m["type"] == "round_metrics"):
        assert data["metrics"].keys() >= set(METRIC_NAMES)
        assert all(math.isfinite(v) for v in data["metrics"].values())
    round_end = [m["data"] for m in received if m["type"] == "round_end"]
    assert [r["eval_source"] for r in round_end] == [EVAL_BY_CLIENTS] * 2
    for rnd, data in enumerate(round_end, start=1):
        assert data["fit_metrics"] == pytest.approx(dict(result.train_metrics_clientapp[rnd]))
        assert data["eval_metrics"] == pytest.approx(dict(result.evaluate_metrics_clientapp[rnd]))


def test_fedprox_sends_its_mu_and_the_client_trains_with_the_proximal_term(monkeypatch, tmp_path):
    used: list[float] = []

    def spy(model: torch.nn.Module, mu: float):
        used.append(mu)
        return proximal_term(model, mu)

    monkeypatch.setattr(client_app, "proximal_term", spy)
    for name in ("fedprox", "fedavg"):
        config = RunConfig(strategy=name, proximal_mu=0.5, centralized_eval=False)
        with MetricsWebSocketSender(None, log_path=tmp_path / f"{name}.jsonl") as sender:
            start(StreamingStrategy(build_strategy(config), sender, run_id=str(RUN_ID)), 1)
    assert used == [0.5, 0.5]  # both fedprox clients; fedavg sends no proximal-mu


def test_the_proximal_term_is_mu_half_the_squared_distance_to_the_global_weights():
    model = torch.nn.Linear(3, 1)
    penalty = proximal_term(model, mu=0.5)
    assert penalty().item() == 0.0
    with torch.no_grad():
        model.weight += 2.0  # 3 weights, each 2 away
    assert penalty().item() == pytest.approx(0.5 / 2 * 3 * 2.0**2)
    penalty().backward()
    assert torch.allclose(model.weight.grad, torch.full((1, 3), 0.5 * 2.0))  # mu * (w - w_g)


# --------------------------------------------------------------------------- every Flower strategy

toy_app = ClientApp(mods=[sys_metrics_mod])
NUM_TOY_NODES = 4  # Krum and Bulyan need a few


def _toy_reply(msg: Message, context: Context, with_arrays: bool) -> Message:
    node = int(context.node_config["partition-id"])
    metrics = MetricRecord({"loss": 1.0 + node, "accuracy": 0.5, "num-examples": 10 + node})
    content = RecordDict({"metrics": metrics})
    if with_arrays:
        rng = np.random.default_rng(node)
        arrays = msg.content["arrays"].to_numpy_ndarrays()
        content["arrays"] = ArrayRecord([a + rng.normal(0, 0.1, a.shape) for a in arrays])
    return Message(content, reply_to=msg)


@toy_app.train()
def toy_train(msg: Message, context: Context) -> Message:
    return _toy_reply(msg, context, with_arrays=True)


@toy_app.evaluate()
def toy_evaluate(msg: Message, context: Context) -> Message:
    return _toy_reply(msg, context, with_arrays=False)


class MyFedAvg(FedAvg):
    """A user's own strategy: adds a metric of its own to the aggregate."""

    def aggregate_train(self, server_round, replies):
        arrays, metrics = super().aggregate_train(server_round, replies)
        metrics["my_metric"] = float(server_round)
        return arrays, metrics


FLOWER_STRATEGIES: dict[str, Callable[[], Strategy]] = {
    "FedAvg": FedAvg,
    "FedAvgM": lambda: FedAvgM(server_momentum=0.9),
    "FedProx": lambda: FedProx(proximal_mu=0.1),
    "FedAdagrad": FedAdagrad,
    "FedAdam": FedAdam,
    "FedYogi": FedYogi,
    "FedMedian": FedMedian,
    "FedTrimmedAvg": lambda: FedTrimmedAvg(beta=0.25),
    "Krum": lambda: Krum(num_malicious_nodes=1),
    "MultiKrum": lambda: MultiKrum(num_malicious_nodes=1, num_nodes_to_select=2),
    "Bulyan": Bulyan,
    "QFedAvg": lambda: QFedAvg(client_learning_rate=0.1, train_loss_key="loss"),
    "DP server-side fixed clipping": lambda: DifferentialPrivacyServerSideFixedClipping(
        FedAvg(), noise_multiplier=0.1, clipping_norm=10.0, num_sampled_clients=NUM_TOY_NODES
    ),
    "DP server-side adaptive clipping": lambda: DifferentialPrivacyServerSideAdaptiveClipping(
        FedAvg(), noise_multiplier=0.1, num_sampled_clients=NUM_TOY_NODES
    ),
    "a user's subclass": MyFedAvg,
}


@pytest.mark.parametrize("make", FLOWER_STRATEGIES.values(), ids=FLOWER_STRATEGIES.keys())
def test_every_flower_strategy_streams_the_same_messages(make, tmp_path):
    log_path = tmp_path / "run.jsonl"
    initial = ArrayRecord([np.zeros((4, 3)), np.ones(3)])
    grid = DirectGrid(NUM_TOY_NODES, {}, app=toy_app)
    with MetricsWebSocketSender(None, run_id=str(RUN_ID), log_path=log_path) as sender:
        result = start(StreamingStrategy(make(), sender), grid=grid, initial_arrays=initial)
    logged = list(read_log(log_path))

    _check_complete_run(logged, rounds=2, clients=["0", "1", "2", "3"])
    fit = [
        m["data"] for m in logged if m["type"] == "round_metrics" and m["data"]["phase"] == "train"
    ]
    assert [d["metrics"] for d in fit] == [dict(result.train_metrics_clientapp[r]) for r in (1, 2)]
    if make is MyFedAvg:
        assert [d["metrics"]["my_metric"] for d in fit] == [1.0, 2.0]
    assert result.arrays.to_numpy_ndarrays()[0].any()  # the strategy did update the model


# --------------------------------------------------------------------------- run config


def test_build_strategy_gives_each_strategy_its_run_config_parameters():
    config = RunConfig(
        proximal_mu=0.3,
        server_momentum=0.5,
        eta=0.02,
        beta_1=0.8,
        tau=1e-4,
        trim_beta=0.1,
        num_malicious_nodes=1,
        num_nodes_to_select=2,
        min_nodes=3,
        fraction_evaluate=0.5,
    )
    built = {name: build_strategy(replace(config, strategy=name)) for name in STRATEGIES}
    assert {name: type(strategy) for name, strategy in built.items()} == {
        name: cls for name, (cls, _) in STRATEGIES.items()
    }
    for strategy in built.values():
        assert (strategy.min_available_nodes, strategy.fraction_evaluate) == (3, 0.5)
    assert built["fedprox"].proximal_mu == 0.3
    assert built["fedavgm"].server_momentum == 0.5
    assert (built["fedadam"].eta, built["fedadam"].beta_1, built["fedadam"].tau) == (
        0.02,
        0.8,
        1e-4,
    )
    assert built["fedyogi"].eta_l == config.learning_rate  # Flower only logs it
    assert built["fedtrimmedavg"].beta == 0.1
    assert (built["multikrum"].num_malicious_nodes, built["multikrum"].num_nodes_to_select) == (
        1,
        2,
    )


@pytest.mark.parametrize(
    ("run_config", "message"),
    [
        (
            {"strategy": "fedsgd"},
            "run-config strategy = 'fedsgd' is invalid: expected one of fedavg, fedavgm, "
            "fedprox, fedadagrad, fedadam, fedyogi, fedmedian, fedtrimmedavg, krum, "
            "multikrum, bulyan",
        ),
        ({"proximal-mu": -0.1}, "run-config proximal-mu = -0.1 is invalid: expected a finite"),
        ({"eta": 0}, "run-config eta = 0 is invalid: expected a number > 0"),
        ({"beta-1": 1.0}, "run-config beta-1 = 1.0 is invalid: expected a number in [0, 1)"),
        ({"server-momentum": -1}, "run-config server-momentum = -1 is invalid: expected a"),
        ({"trim-beta": 0.5}, "run-config trim-beta = 0.5 is invalid: expected a fraction in [0"),
        ({"num-malicious-nodes": -1}, "run-config num-malicious-nodes = -1 is invalid"),
        ({"num-nodes-to-select": 0}, "run-config num-nodes-to-select = 0 is invalid"),
        ({"tau": "small"}, "run-config tau = 'small' is invalid: expected a number"),
    ],
)
def test_strategy_keys_are_validated_by_name(run_config, message):
    with pytest.raises(ConfigError) as error:
        RunConfig.from_run_config(run_config)
    assert str(error.value).startswith(message)


def test_the_reported_settings_leave_the_token_out():
    reported = shareable(RunConfig(relay_token="s3cret", strategy="fedadam"))
    assert reported["strategy"] == "fedadam" and reported["eta"] == RunConfig().eta
    assert "relay-token" not in reported and "s3cret" not in reported.values()
    assert RunConfig.from_run_config(reported) == RunConfig(strategy="fedadam")
