"""The federated run's settings: ``[tool.flwr.app.config]`` parsed, defaulted and validated.

The ServerApp and the ClientApp both build a :class:`RunConfig` from ``context.run_config``.
Every key has a default, because ``flwr.simulation.run_simulation`` passes an empty run config;
a bad value stops the run before training with an error naming the key and what it accepts.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fl_stream.monitor.protocol import DEFAULT_RELAY_URL, METRIC_NAMES
from fl_stream.monitor.runlog import DEFAULT_LOG_DIR, default_log_path
from fl_stream.pneumonia.data import PARTITIONINGS
from fl_stream.pneumonia.model import MODELS

__all__ = ["ConfigError", "RunConfig"]


class ConfigError(ValueError):
    """A run-config value is missing its expected type or range; the text names the key."""


@dataclass(frozen=True)
class RunConfig:
    """Settings of one federated run; field ``a_b`` is run-config key ``a-b``."""

    num_server_rounds: int = 3
    fraction_train: float = 1.0
    fraction_evaluate: float = 1.0
    min_nodes: int = 2
    local_epochs: int = 1
    learning_rate: float = 0.01
    batch_size: int = 16
    model: str = "resnet18"
    image_size: int = 28
    data_path: str = ""
    partitioning: str = "iid"
    dirichlet_alpha: float = 0.5
    seed: int = 0
    samples_per_client: int = 200
    centralized_eval: bool = True
    best_metric: str = "loss"
    relay_url: str = DEFAULT_RELAY_URL
    relay_token: str = ""
    metrics_log_dir: str = DEFAULT_LOG_DIR

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, Any]) -> RunConfig:
        """Build the settings from ``context.run_config``; absent keys keep their defaults.

        Raises:
            ConfigError: an unknown key, or a value of the wrong type or out of range.
        """
        fields = {f.name.replace("_", "-"): f for f in dataclasses.fields(cls)}
        unknown = sorted(set(run_config) - set(fields))
        if unknown:
            raise ConfigError(f"unknown run-config keys {unknown}; known keys: {sorted(fields)}")
        values = {}
        for key, value in run_config.items():
            field = fields[key]
            values[field.name] = _coerce(key, value, type(field.default))
            allowed = _RULES.get(field.name)
            if allowed is not None and not allowed[0](values[field.name]):
                raise ConfigError(f"run-config {key} = {value!r} is invalid: expected {allowed[1]}")
        return cls(**values)

    def log_path(self, run_id: str) -> Path:
        """The JSONL log of run ``run_id``, as an absolute path.

        A relative ``metrics-log-dir`` resolves against the ServerApp's working directory,
        which under ``flwr run`` is where the SuperLink was first started.
        """
        directory = Path(self.metrics_log_dir).expanduser()
        return default_log_path(run_id, sender_id="", directory=directory).absolute()


def _coerce(key: str, value: Any, expected: type) -> Any:
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)  # `--run-config 'learning-rate=1'` arrives as an int
    if isinstance(value, expected) and not (expected is int and isinstance(value, bool)):
        return value
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}
    raise ConfigError(f"run-config {key} = {value!r} is invalid: expected {names[expected]}")


def _positive(value: float) -> bool:
    return value > 0 and math.isfinite(value)


def _fraction(value: float) -> bool:
    return 0.0 <= value <= 1.0


def _one_of(options: tuple[str, ...]) -> tuple[Callable[[Any], bool], str]:
    return (lambda value: value in options), f"one of {', '.join(options)}"


_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "num_server_rounds": (_positive, "an integer >= 1"),
    "fraction_train": (lambda v: 0.0 < v <= 1.0, "a fraction in (0, 1]"),
    "fraction_evaluate": (_fraction, "a fraction in [0, 1]"),
    "min_nodes": (_positive, "an integer >= 1"),
    "local_epochs": (_positive, "an integer >= 1"),
    "learning_rate": (_positive, "a number > 0"),
    "batch_size": (lambda v: v >= 2, "an integer >= 2 (BatchNorm needs two examples)"),
    "model": _one_of(MODELS),
    "image_size": (lambda v: v >= 8, "an integer >= 8"),
    "partitioning": _one_of(PARTITIONINGS),
    "dirichlet_alpha": (_positive, "a number > 0"),
    "seed": (lambda v: v >= 0, "an integer >= 0"),
    "samples_per_client": (lambda v: v == 0 or v >= 10, "0 (whole partition) or >= 10"),
    "best_metric": _one_of(METRIC_NAMES),
    "relay_url": (
        lambda v: v == "" or v.startswith(("ws://", "wss://")),
        'a ws:// or wss:// URL, or "" to stream to the log file only',
    ),
}
