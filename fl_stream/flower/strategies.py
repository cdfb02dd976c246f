"""The app's choice of Flower strategy: run-config key ``strategy`` and its parameters.

Each name maps to a :mod:`flwr.serverapp.strategy` class and the run-config keys it reads.
QFedAvg is left out: in Flower 1.42 it cannot update integer arrays (BatchNorm's
``num_batches_tracked``), so it fails on the ResNet.
Every strategy samples nodes by ``fraction-train``, ``fraction-evaluate`` and ``min-nodes``
and aggregates metrics with :func:`~fl_stream.flower.aggregation.aggregate_metrics`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from flwr.serverapp.strategy import (
    Bulyan,
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
    Strategy,
)

from fl_stream.flower.aggregation import aggregate_metrics

if TYPE_CHECKING:
    from fl_stream.flower.config import RunConfig

__all__ = ["STRATEGIES", "build_strategy"]

Parameters = Callable[["RunConfig"], dict[str, Any]]


def _none(config: RunConfig) -> dict[str, Any]:
    return {}


def _fedopt(config: RunConfig) -> dict[str, Any]:
    # eta_l is only logged by Flower: say the clients' real learning rate.
    return {"eta": config.eta, "eta_l": config.learning_rate, "tau": config.tau}


def _fedopt_with_moments(config: RunConfig) -> dict[str, Any]:
    return {**_fedopt(config), "beta_1": config.beta_1, "beta_2": config.beta_2}


def _byzantine(config: RunConfig) -> dict[str, Any]:
    return {"num_malicious_nodes": config.num_malicious_nodes}


# name -> (Flower strategy class, its parameters from the run config)
STRATEGIES: dict[str, tuple[type[FedAvg], Parameters]] = {
    "fedavg": (FedAvg, _none),
    "fedavgm": (
        FedAvgM,
        lambda c: {
            "server_learning_rate": c.server_learning_rate,
            "server_momentum": c.server_momentum,
        },
    ),
    "fedprox": (FedProx, lambda c: {"proximal_mu": c.proximal_mu}),
    "fedadagrad": (FedAdagrad, _fedopt),
    "fedadam": (FedAdam, _fedopt_with_moments),
    "fedyogi": (FedYogi, _fedopt_with_moments),
    "fedmedian": (FedMedian, _none),
    "fedtrimmedavg": (FedTrimmedAvg, lambda c: {"beta": c.trim_beta}),
    "krum": (Krum, _byzantine),
    "multikrum": (
        MultiKrum,
        lambda c: {**_byzantine(c), "num_nodes_to_select": c.num_nodes_to_select},
    ),
    "bulyan": (Bulyan, _byzantine),
}


def build_strategy(config: RunConfig) -> Strategy:
    """The Flower strategy that run-config key ``strategy`` names, with its parameters."""
    cls, parameters = STRATEGIES[config.strategy]
    return cls(
        fraction_train=config.fraction_train,
        fraction_evaluate=config.fraction_evaluate,
        min_train_nodes=config.min_nodes,
        min_evaluate_nodes=config.min_nodes,
        min_available_nodes=config.min_nodes,
        train_metrics_aggr_fn=aggregate_metrics,
        evaluate_metrics_aggr_fn=aggregate_metrics,
        **parameters(config),
    )
