"""Model, metrics, training/evaluation loops and the federated run config."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from fl_stream.flower.config import ConfigError, RunConfig
from fl_stream.pneumonia.data import synthetic_splits
from fl_stream.pneumonia.metrics import METRIC_NAMES, classification_metrics
from fl_stream.pneumonia.model import build_model
from fl_stream.pneumonia.task import evaluate, pick_device, train_epoch


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_model_takes_one_channel_and_predicts_two_classes(name):
    model = build_model(name).eval()
    with torch.no_grad():
        logits = model(torch.rand(3, 1, 28, 28))
    assert logits.shape == (3, 2)


def test_unknown_model_is_refused():
    with pytest.raises(ValueError, match="model must be one of .*resnet18"):
        build_model("vgg16")


def test_metrics_match_hand_computed_values():
    labels = [0, 0, 1, 1, 1]
    probabilities = [0.1, 0.6, 0.7, 0.4, 0.9]  # predictions 0, 1, 1, 0, 1
    metrics = classification_metrics(labels, probabilities, loss=0.5)
    assert metrics == pytest.approx(
        {
            "loss": 0.5,
            "accuracy": 0.6,
            "precision": 2 / 3,
            "recall": 2 / 3,
            "f1": 2 / 3,
            "auroc": 5 / 6,
        }
    )


def test_metrics_with_one_class_give_nan_auroc_not_an_error():
    metrics = classification_metrics([1, 1], [0.2, 0.3], loss=1.0)
    assert math.isnan(metrics["auroc"])
    assert metrics["precision"] == 0.0 and metrics["recall"] == 0.0


def test_training_lowers_the_loss_on_synthetic_data():
    torch.manual_seed(0)
    splits = synthetic_splits(sizes={"train": 96, "val": 8, "test": 64})
    model = build_model()
    # 3 epochs of 6 batches from scratch: at lr 0.01 with momentum 0.9 (an effective step of
    # 0.1) the weights jump so far per step that BatchNorm's running statistics, used in eval
    # mode, no longer match them, and the eval loss swings to several times ln 2 although the
    # same weights with recomputed statistics fit the data; 0.001 learns it smoothly.
    optimizer = torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9)
    loader = DataLoader(splits.train, batch_size=16, shuffle=True)
    device = pick_device()
    # Scored in eval mode before and after: a training epoch's own loss mixes in BatchNorm's
    # batch statistics and the model's changes within the epoch.
    before = evaluate(model, DataLoader(splits.train, batch_size=96), device)
    assert before["loss"] == pytest.approx(math.log(2), abs=0.05)  # untrained: a coin flip
    epochs = [train_epoch(model, loader, optimizer, device) for _ in range(3)]
    assert set(epochs[0]) == set(METRIC_NAMES)
    after = evaluate(model, DataLoader(splits.train, batch_size=96), device)
    assert after["loss"] < before["loss"] / 2  # ≈ 0.1 over seeds 0-7; ln 2 / 2 ≈ 0.35
    result = evaluate(model, DataLoader(splits.test, batch_size=64), device)
    assert set(result) == set(METRIC_NAMES) and 0.0 <= result["accuracy"] <= 1.0
    assert result["loss"] < before["loss"]  # it generalises: better than chance on unseen data


def test_a_trailing_batch_of_one_is_skipped_in_training():
    data = TensorDataset(torch.rand(17, 1, 28, 28), torch.arange(17) % 2)
    model = build_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    metrics = train_epoch(model, DataLoader(data, batch_size=8), optimizer, torch.device("cpu"))
    assert math.isfinite(metrics["loss"])


def test_pick_device_follows_cuda_availability():
    assert pick_device().type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_run_config_defaults_and_overrides():
    assert RunConfig.from_run_config({}) == RunConfig()
    config = RunConfig.from_run_config({"learning-rate": 1, "partitioning": "dirichlet"})
    assert config.learning_rate == 1.0 and isinstance(config.learning_rate, float)
    assert config.partitioning == "dirichlet"


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("partitioning", "shards", "partitioning = 'shards' is invalid: expected one of iid, "),
        ("model", "vgg", "expected one of resnet18"),
        ("num-server-rounds", 0, "expected an integer >= 1"),
        ("fraction-evaluate", 1.5, r"expected a fraction in \[0, 1\]"),
        ("batch-size", "32", "expected an integer"),
        ("centralized-eval", 1, "expected true or false"),
        ("relay-url", "http://x", "ws:// or wss://"),
        ("learning-rat", 0.1, r"unknown run-config keys \['learning-rat'\]; known keys: .*rate'"),
    ],
)
def test_bad_run_config_names_the_key_and_what_it_accepts(key, value, message):
    with pytest.raises(ConfigError, match=message):
        RunConfig.from_run_config({key: value})


def test_log_path_is_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = RunConfig(metrics_log_dir="runs").log_path("123")
    assert path == tmp_path / "runs" / "123.jsonl"
