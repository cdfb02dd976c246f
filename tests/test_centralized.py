"""Centralized training against a real relay: what it streams, early stopping, relay down, CLI.

Every run trains a real ResNet-18 on a tiny PneumoniaMNIST-format file (16 x 16 images,
a few dozen examples), so each takes seconds.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from fl_stream.centralized.trainer import CentralizedConfig, CentralizedTrainer
from fl_stream.cli import main
from fl_stream.monitor.protocol import RELAY_TOKEN_ENV, validate_message
from fl_stream.monitor.runlog import read_log
from fl_stream.pneumonia.data import synthetic_splits
from fl_stream.pneumonia.metrics import METRIC_NAMES
from fl_stream.pneumonia.model import build_model
from fl_stream.settings import shareable
from tests.support import ListeningClient, free_port, get_json

IMAGE_SIZE = 16
RUN_TIMEOUT = 60.0  # bound for a whole tiny run to reach the listener on a loaded machine
CONSOLE_SCRIPT = Path(sys.executable).with_name("fl-stream")
FINAL_KEYS = {f"{split}_{name}" for split in ("val", "test") for name in METRIC_NAMES}


def write_npz(path: Path, sizes: dict[str, int]) -> Path:
    """Write a PneumoniaMNIST-format .npz (uint8 images, N x 1 labels) of synthetic images."""
    splits = synthetic_splits(IMAGE_SIZE, seed=0, sizes=sizes)
    arrays = {}
    for name in ("train", "val", "test"):
        images, labels = getattr(splits, name).tensors
        arrays[f"{name}_images"] = (images[:, 0].numpy() * 255).round().astype(np.uint8)
        arrays[f"{name}_labels"] = labels.numpy().reshape(-1, 1)
    np.savez(path, **arrays)
    return path


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("data") / "tiny.npz"
    return str(write_npz(path, {"train": 32, "val": 16, "test": 16}))


def make_trainer(
    tmp_path: Path, data_path: str, relay_url: str, **options: Any
) -> CentralizedTrainer:
    config = dict(
        epochs=3,
        batch_size=16,
        data_path=data_path,
        image_size=IMAGE_SIZE,
        patience=0,
        relay_url=relay_url,
        log_path=str(tmp_path / "run.jsonl"),
        save_path=str(tmp_path / "best.pt"),
    )
    return CentralizedTrainer(CentralizedConfig(**{**config, **options}))


def run_and_listen(trainer: CentralizedTrainer, relay_ws_url: str) -> list[dict]:
    """Run ``trainer`` while a dashboard subscribed to its run id listens; return its messages."""
    with ListeningClient(relay_ws_url, run_id=trainer.run_id, since=0) as listener:
        trainer.run()
        listener.wait_for(
            lambda msgs: any(m["type"] in ("training_end", "error") for m in msgs), RUN_TIMEOUT
        )
        return listener.data_messages()


def kinds(messages: list[dict]) -> list[tuple]:
    """Each message's type, with the phase of an ``epoch_end``."""
    return [
        (m["type"], m["data"]["epoch"], m["data"]["phase"])
        if m["type"] == "epoch_end"
        else (m["type"],)
        for m in messages
    ]


def test_three_epoch_run_streams_the_whole_sequence(relay, tiny_data: str, tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path, tiny_data, relay.ws_url)
    messages = run_and_listen(trainer, relay.ws_url)

    assert kinds(messages) == [
        ("training_mode",),
        ("epoch_end", 1, "train"),
        ("epoch_end", 1, "val"),
        ("epoch_end", 2, "train"),
        ("epoch_end", 2, "val"),
        ("epoch_end", 3, "train"),
        ("epoch_end", 3, "val"),
        ("training_end",),
    ]
    for message in messages:
        validate_message(message)
    assert [m["seq"] for m in messages] == list(range(1, 9))
    assert {m["run_id"] for m in messages} == {trainer.run_id}
    assert messages[0]["data"] == {
        "is_federated": False,
        "num_rounds": 0,
        "num_clients": 0,
        "num_epochs": 3,
        "config": shareable(trainer.config),
    }
    assert "relay-token" not in messages[0]["data"]["config"]  # secrets never travel
    for epoch_end in messages[1:-1]:
        assert set(epoch_end["data"]["metrics"]) == set(METRIC_NAMES)

    end = messages[-1]["data"]
    assert end["run_id"] == trainer.run_id
    assert end["status"] == "completed"
    assert end["best_epoch"] in (1, 2, 3)
    assert set(end["final_metrics"]) == FINAL_KEYS
    # The final validation metrics are the best epoch's, as streamed.
    best_val = next(
        m["data"]["metrics"]
        for m in messages
        if m["type"] == "epoch_end"
        and m["data"]["phase"] == "val"
        and m["data"]["epoch"] == end["best_epoch"]
    )
    assert {k: end["final_metrics"][f"val_{k}"] for k in METRIC_NAMES} == best_val

    history = get_json(f"{relay.http_url}/api/runs/{trainer.run_id}/metrics")
    assert [m["seq"] for m in history["messages"]] == list(range(1, 9))
    assert history["final_metrics"] == end["final_metrics"]

    assert [m["type"] for m in read_log(tmp_path / "run.jsonl")] == [m["type"] for m in messages]
    weights = torch.load(tmp_path / "best.pt")
    build_model("resnet18").load_state_dict(weights)


def test_early_stopping_ends_the_run_when_the_metric_stops_improving(
    relay, tiny_data: str, tmp_path: Path
) -> None:
    # Accuracy cannot rise by more than 1.0, so nothing improves on epoch 1: with patience 1
    # the run stops after epoch 2, whatever the weights do.
    trainer = make_trainer(
        tmp_path,
        tiny_data,
        relay.ws_url,
        epochs=5,
        early_stopping_metric="val_accuracy",
        patience=1,
        min_delta=1.0,
    )
    messages = run_and_listen(trainer, relay.ws_url)

    assert kinds(messages) == [
        ("training_mode",),
        ("epoch_end", 1, "train"),
        ("epoch_end", 1, "val"),
        ("epoch_end", 2, "train"),
        ("epoch_end", 2, "val"),
        ("early_stopping",),
        ("training_end",),
    ]
    stopping, end = messages[-2]["data"], messages[-1]["data"]
    first_val_accuracy = messages[2]["data"]["metrics"]["accuracy"]
    assert stopping["epoch"] == 2
    assert stopping["metric_name"] == "val_accuracy"
    assert stopping["patience"] == 1
    assert stopping["best_metric_value"] == first_val_accuracy
    assert "val_accuracy did not increase by more than 1 for 1 epoch" in stopping["reason"]
    assert (end["status"], end["best_epoch"]) == ("early_stopped", 1)
    assert end["final_metrics"]["val_accuracy"] == first_val_accuracy


def test_training_completes_with_the_relay_down_and_the_log_holds_every_message(
    tiny_data: str, tmp_path: Path
) -> None:
    nothing_listens = f"ws://127.0.0.1:{free_port()}"
    trainer = make_trainer(tmp_path, tiny_data, nothing_listens, epochs=2)
    result = trainer.run()

    assert result.status == "completed"
    logged = list(read_log(tmp_path / "run.jsonl"))
    assert [m["type"] for m in logged] == ["training_mode"] + ["epoch_end"] * 4 + ["training_end"]
    assert {m["run_id"] for m in logged} == {trainer.run_id}
    assert logged[-1]["data"]["final_metrics"] == pytest.approx(result.final_metrics, nan_ok=True)
    assert (tmp_path / "best.pt").is_file()
    with pytest.raises(RuntimeError, match="already ran; build a new trainer"):
        trainer.run()


def test_an_exception_in_training_sends_error_and_failed_end_then_propagates(
    relay, tmp_path: Path
) -> None:
    # One training example: the only batch has one example, which BatchNorm cannot train on.
    one_example = str(write_npz(tmp_path / "one.npz", {"train": 1, "val": 4, "test": 4}))
    trainer = make_trainer(tmp_path, one_example, relay.ws_url)
    with ListeningClient(relay.ws_url, run_id=trainer.run_id, since=0) as listener:
        with pytest.raises(ValueError, match="empty data loader"):
            trainer.run()
        listener.wait_for_type("training_end", timeout=RUN_TIMEOUT)
        messages = listener.data_messages()
    # The same shape of failure as a federated run's (tests/test_strategy.py).
    assert [m["type"] for m in messages] == ["training_mode", "error", "training_end"]
    assert messages[1]["data"]["error_type"] == "ValueError"
    assert messages[1]["data"]["error"].startswith("ValueError: ")
    assert "empty data loader" in messages[1]["data"]["error"]
    assert messages[2]["data"]["status"] == "failed"
    assert messages[2]["data"]["run_id"] == trainer.run_id


def test_cli_runs_a_streamed_training_and_saves_the_best_weights(
    relay_factory, tiny_data: str, tmp_path: Path
) -> None:
    relay = relay_factory(token="s3cret")  # the CLI takes the token from the environment
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "fl_stream.centralized",
            "--data-path",
            tiny_data,
            "--image-size",
            str(IMAGE_SIZE),
            "--epochs",
            "1",
            "--batch-size",
            "16",
            "--relay-url",
            relay.ws_url,
            "--save-path",
            str(tmp_path / "weights.pt"),
            "--log-path",
            str(tmp_path / "log.jsonl"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={**os.environ, RELAY_TOKEN_ENV: "s3cret"},
    )
    assert done.returncode == 0, done.stderr
    run_id = done.stdout.split("run id: ", 1)[1].split()[0]
    history = get_json(f"{relay.http_url}/api/runs/{run_id}/metrics")
    assert history["training_end"]["status"] == "completed"
    assert len(history["messages"]) == 4  # training_mode, 2 x epoch_end, training_end
    assert (tmp_path / "weights.pt").is_file()
    assert "epoch 1/1" in done.stderr  # the progress bar
    assert "epoch 1: train_loss " in done.stdout  # the epoch's summary line


BAD_OPTIONS = [
    (["--epochs", "-2"], "--epochs = -2 is invalid: expected an integer >= 1"),
    (["--epochs", "two"], "argument --epochs: invalid int value: 'two'"),
    (
        ["--batch-size", "1"],
        "--batch-size = 1 is invalid: expected an integer >= 2 (BatchNorm needs two examples)",
    ),
    (["--learning-rate", "-0.1"], "--learning-rate = -0.1 is invalid: expected a finite number"),
    (
        ["--early-stopping-metric", "val_speed"],
        "argument --early-stopping-metric: invalid choice: 'val_speed'",
    ),
    (["--patience", "-1"], "--patience = -1 is invalid: expected an integer >= 0 (0 never stops)"),
    (["--learning-rate", "inf"], "--learning-rate = inf is invalid: expected a finite number >= 0"),
    (["--min-delta", "-1"], "--min-delta = -1.0 is invalid: expected a finite number >= 0"),
    (["--mode", "up"], "argument --mode: invalid choice: 'up'"),
    (["--data-path", "no/such/file.npz"], "data path 'no/such/file.npz' does not exist"),
    (["--image-size", "4"], "--image-size = 4 is invalid: expected an integer >= 8"),
    (
        ["--relay-url", "http://127.0.0.1:8765"],
        "--relay-url = 'http://127.0.0.1:8765' is invalid: expected a ws:// or wss:// URL",
    ),
]


@pytest.mark.parametrize(("args", "error"), BAD_OPTIONS)
def test_cli_refuses_bad_options_with_one_line_and_status_2(
    args: list[str],
    error: str,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(["train-centralized", *args])
    out, err = capsys.readouterr()
    assert exit_info.value.code == 2
    [line] = err.splitlines()
    assert line.startswith("fl-stream train-centralized: error: ")
    assert error in line
    assert out == ""
    assert not (tmp_path / "runs").exists()  # nothing started, nothing written


def test_the_console_script_exits_2_with_one_line_and_no_traceback(tmp_path: Path) -> None:
    # The `python -m fl_stream.centralized.trainer` entry is run by the CLI training test above.
    done = subprocess.run(
        [str(CONSOLE_SCRIPT), "train-centralized", "--epochs", "-2"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "fl-stream train-centralized: error: --epochs = -2 is invalid: expected an integer >= 1 "
        "(see fl-stream train-centralized --help)"
    ]
    assert done.stdout == ""
