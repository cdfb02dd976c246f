"""StreamingStrategy never lets monitoring break training, and never streams a secret."""

from __future__ import annotations

import math

import pytest
from flwr.serverapp.strategy import FedAvg

from fl_stream.flower import StreamingStrategy
from fl_stream.flower.streaming import _count, _never_fails
from fl_stream.monitor.sender import MetricsWebSocketSender


@pytest.fixture
def sender(tmp_path):
    with MetricsWebSocketSender(None, run_id="safety", log_path=tmp_path / "log.jsonl") as made:
        yield made


def test_credentials_in_the_run_config_are_not_streamed(sender) -> None:
    run_config = {"relay-token": "s3cret", "db-password": "x", "learning-rate": 0.1}
    strategy = StreamingStrategy(FedAvg(), sender, run_id="safety", run_config=run_config)
    assert strategy.run_config == {"learning-rate": 0.1}


def test_attributes_of_the_wrapped_strategy_stay_reachable(sender) -> None:
    strategy = StreamingStrategy(FedAvg(fraction_train=0.25), sender, run_id="safety")
    assert strategy.fraction_train == 0.25
    with pytest.raises(AttributeError):
        _ = strategy.no_such_attribute


def test_a_failing_streaming_step_is_logged_not_raised(caplog) -> None:
    def broken(server_round: int) -> None:
        raise RuntimeError(f"monitoring bug in round {server_round}")

    _never_fails(broken, 3)
    assert "monitoring bug in round 3" in caplog.text


@pytest.mark.parametrize(
    ("value", "count"), [(12, 12), (12.0, 12), (math.nan, 0), (math.inf, 0), (-3, 0), ("x", 0)]
)
def test_a_client_example_count_is_always_a_non_negative_int(value, count) -> None:
    assert _count(value) == count
