"""The federated run's settings: ``[tool.flwr.app.config]`` parsed, defaulted and validated.

The ServerApp and the ClientApp both build a :class:`RunConfig` from ``context.run_config``.
Every key has a default, because ``flwr.simulation.run_simulation`` passes an empty run config;
a bad value stops the run before training with an error naming the key and what it accepts,
e.g. ``run-config batch-size = 1 is invalid: expected an integer >= 2 (BatchNorm needs two
examples)``. The rules are :mod:`fl_stream.settings`', shared with the centralized trainer
and the relay.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fl_stream.flower.strategies import STRATEGIES
from fl_stream.monitor.progress import DEFAULT_INTERVAL
from fl_stream.monitor.protocol import DEFAULT_RELAY_URL, METRIC_NAMES, RELAY_TOKEN_ENV
from fl_stream.monitor.runlog import default_log_path
from fl_stream.pneumonia.data import PARTITIONINGS
from fl_stream.pneumonia.model import MODELS
from fl_stream.settings import (
    BATCH_SIZE,
    FRACTION,
    IMAGE_SIZE,
    NON_NEGATIVE_INT,
    POSITIVE_FRACTION,
    POSITIVE_INT,
    POSITIVE_NUMBER,
    WS_URL,
    Rule,
    SettingError,
    finite_at_least,
    from_mapping,
    one_of,
    setting,
    validate,
)

__all__ = ["ConfigError", "RunConfig"]

ConfigError = SettingError
"""A run-config key is unknown, or its value has the wrong type or range (the old name)."""

SAMPLES_PER_CLIENT = Rule(lambda value: value == 0 or value >= 10, "0 (whole partition) or >= 10")
MOMENT = Rule(lambda value: 0.0 <= value < 1.0, "a number in [0, 1)")
TRIM_FRACTION = Rule(lambda value: 0.0 <= value < 0.5, "a fraction in [0, 0.5) cut at each end")


@dataclass(frozen=True)
class RunConfig:
    """Settings of one federated run; field ``a_b`` is run-config key ``a-b``."""

    num_server_rounds: int = setting(3, check=POSITIVE_INT, help="federated rounds")
    fraction_train: float = setting(
        1.0, check=POSITIVE_FRACTION, help="share of connected nodes sampled for training"
    )
    fraction_evaluate: float = setting(
        1.0, check=FRACTION, help="share sampled for federated evaluation (0: skip it)"
    )
    min_nodes: int = setting(
        2, check=POSITIVE_INT, help="the strategy waits for this many nodes (<= num-supernodes)"
    )
    strategy: str = setting(
        "fedavg", check=one_of(STRATEGIES), help="the Flower strategy that aggregates the rounds"
    )
    proximal_mu: float = setting(
        0.01, check=finite_at_least(0), help="fedprox: weight of the clients' proximal term"
    )
    server_learning_rate: float = setting(
        1.0, check=POSITIVE_NUMBER, help="fedavgm: the server's learning rate"
    )
    server_momentum: float = setting(0.9, check=MOMENT, help="fedavgm: the server's momentum")
    eta: float = setting(
        0.01, check=POSITIVE_NUMBER, help="fedadam, fedyogi, fedadagrad: server learning rate"
    )
    beta_1: float = setting(0.9, check=MOMENT, help="fedadam, fedyogi: first-moment decay")
    beta_2: float = setting(0.99, check=MOMENT, help="fedadam, fedyogi: second-moment decay")
    tau: float = setting(
        0.001, check=POSITIVE_NUMBER, help="fedadam, fedyogi, fedadagrad: adaptivity (epsilon)"
    )
    trim_beta: float = setting(
        0.2, check=TRIM_FRACTION, help="fedtrimmedavg: share of updates cut at each end"
    )
    num_malicious_nodes: int = setting(
        0, check=NON_NEGATIVE_INT, help="krum, multikrum, bulyan: nodes assumed Byzantine"
    )
    num_nodes_to_select: int = setting(
        1, check=POSITIVE_INT, help="multikrum: updates averaged after selection"
    )
    local_epochs: int = setting(1, check=POSITIVE_INT, help="epochs each client trains per round")
    learning_rate: float = setting(
        0.01, check=POSITIVE_NUMBER, help="client SGD learning rate (momentum 0.9)"
    )
    batch_size: int = setting(16, check=BATCH_SIZE, help="client batch size")
    model: str = setting("resnet18", check=one_of(MODELS), help="the ResNet")
    image_size: int = setting(28, check=IMAGE_SIZE, help="images are resized to this square size")
    data_path: str = setting(
        "", help='"": the synthetic set; a PneumoniaMNIST .npz; a chest_xray folder'
    )
    partitioning: str = setting(
        "iid", check=one_of(PARTITIONINGS), help="iid, or dirichlet (label skew)"
    )
    dirichlet_alpha: float = setting(
        0.5, check=POSITIVE_NUMBER, help="Dirichlet concentration; smaller is more skewed"
    )
    seed: int = setting(
        0, check=NON_NEGATIVE_INT, help="data, partitioning, splits, model initialisation"
    )
    samples_per_client: int = setting(
        200, check=SAMPLES_PER_CLIENT, help="cap on each client's partition (0: all of it)"
    )
    centralized_eval: bool = setting(
        True, help="evaluate the global model on the test split after each round"
    )
    best_metric: str = setting(
        "loss", check=one_of(METRIC_NAMES), help="eval metric that picks best_round"
    )
    relay_url: str = setting(DEFAULT_RELAY_URL, check=WS_URL, help='the relay; "": log only')
    relay_token: str = setting(
        "", repr=False, help=f"publisher token (empty: ${RELAY_TOKEN_ENV} when set)"
    )
    metrics_log_dir: str = setting(
        "", help='folder of <run_id>.jsonl ("": $FL_STREAM_LOG_DIR, else runs/)'
    )
    progress_interval: float = setting(
        DEFAULT_INTERVAL,
        check=finite_at_least(0),
        help="seconds between a client's live progress reports (0: none)",
    )

    def __post_init__(self) -> None:
        validate(self)

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, Any]) -> RunConfig:
        """Build the settings from ``context.run_config``; absent keys keep their defaults.

        Raises:
            ConfigError: an unknown key, or a value of the wrong type or out of range.
        """
        return from_mapping(cls, run_config, source="run-config")

    def log_path(self, run_id: str) -> Path:
        """The JSONL log of run ``run_id``, as an absolute path.

        A relative ``metrics-log-dir`` resolves against the ServerApp's working directory,
        which under ``flwr run`` is where the SuperLink was first started.
        """
        directory = Path(self.metrics_log_dir).expanduser() if self.metrics_log_dir else None
        return default_log_path(run_id, sender_id="", directory=directory).absolute()
