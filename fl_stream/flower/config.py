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

from fl_stream.monitor.protocol import DEFAULT_RELAY_URL, METRIC_NAMES, RELAY_TOKEN_ENV
from fl_stream.monitor.runlog import DEFAULT_LOG_DIR, default_log_path
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
    from_mapping,
    one_of,
    setting,
    validate,
)

__all__ = ["ConfigError", "RunConfig"]

ConfigError = SettingError
"""A run-config key is unknown, or its value has the wrong type or range (the old name)."""

SAMPLES_PER_CLIENT = Rule(lambda value: value == 0 or value >= 10, "0 (whole partition) or >= 10")


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
        2, check=POSITIVE_INT, help="FedAvg waits for this many nodes (<= num-supernodes)"
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
    metrics_log_dir: str = setting(DEFAULT_LOG_DIR, help="folder of <run_id>.jsonl")

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
        directory = Path(self.metrics_log_dir).expanduser()
        return default_log_path(run_id, sender_id="", directory=directory).absolute()
