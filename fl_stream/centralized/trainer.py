"""Centralized (non-federated) training that streams per-epoch metrics to the relay.

One model trains on the whole training split and is validated on the validation split after
every epoch, with the same data, model and training loops as the federated app. Each run
sends, under its own run id: ``training_mode`` at the start, ``epoch_end`` for phase
``train`` and ``val`` after every epoch, ``early_stopping`` when the early-stopping callback
stops training, and ``training_end`` (or ``error``, after which the exception propagates).

Run it with ``fl-stream train-centralized`` or ``python -m fl_stream.centralized``.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from fl_stream.centralized.early_stopping import MODES, EarlyStopping, monitorable_metrics
from fl_stream.monitor.protocol import DEFAULT_RELAY_URL, RELAY_TOKEN_ENV
from fl_stream.monitor.runlog import LOG_DIR_ENV, default_log_path, run_dir
from fl_stream.monitor.sender import MetricsWebSocketSender
from fl_stream.pneumonia.data import load_splits
from fl_stream.pneumonia.model import MODELS, build_model
from fl_stream.pneumonia.task import evaluate, pick_device, train_epoch
from fl_stream.settings import (
    BATCH_SIZE,
    IMAGE_SIZE,
    NON_NEGATIVE_INT,
    POSITIVE_INT,
    WS_URL,
    at_least,
    finite_at_least,
    one_of,
    setting,
    shareable,
    validate,
)

__all__ = ["CentralizedConfig", "CentralizedResult", "CentralizedTrainer", "new_run_id"]

EVAL_BATCH_SIZE = 256  # evaluation keeps no gradients, so larger batches are cheap

# The sections of `fl-stream train-centralized --help`, in the order they appear.
TRAINING = "training"
DATA = "data and model"
STOPPING = "early stopping and best epoch"
OUTPUT = "monitoring and output"


def new_run_id() -> str:
    """Return a fresh run id: ``central-<UTC timestamp>-<8 hex digits>``."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"central-{stamp}-{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True)
class CentralizedConfig:
    """Everything one centralized run needs; defaults give a small run on the synthetic set.

    Each field is also an option of ``fl-stream train-centralized`` (``batch_size`` is
    ``--batch-size``), with the same default, check and help. ``relay_url`` ``""`` writes the
    run log only. ``patience`` 0 turns stopping off; ``early_stopping_metric`` then still picks
    the best epoch.

    Raises:
        SettingError: a value of the wrong type or out of range, named by its field.
    """

    epochs: int = setting(3, check=POSITIVE_INT, help="epochs to train", group=TRAINING)
    batch_size: int = setting(32, check=BATCH_SIZE, help="examples per batch", group=TRAINING)
    learning_rate: float = setting(
        0.01, check=finite_at_least(0), help="SGD step size, momentum 0.9", group=TRAINING
    )
    data_path: str | None = setting(
        None,
        help="PneumoniaMNIST .npz file or chest_xray folder",
        default_help="the built-in synthetic set",
        group=DATA,
    )
    image_size: int = setting(28, check=IMAGE_SIZE, help="image side in pixels", group=DATA)
    model: str = setting("resnet18", check=one_of(MODELS), help="the ResNet", group=DATA)
    seed: int = setting(
        0,
        check=NON_NEGATIVE_INT,
        help="seed for the data, the initial weights and the shuffling",
        group=DATA,
    )
    early_stopping_metric: str = setting(
        "val_loss",
        check=one_of(monitorable_metrics()),
        help="metric that picks the best epoch and stops training",
        metavar="METRIC",
        group=STOPPING,
    )
    patience: int = setting(
        3,
        check=at_least(0, "0 never stops"),
        help="epochs without improvement before stopping; 0 never stops",
        group=STOPPING,
    )
    min_delta: float = setting(
        0.0,
        check=finite_at_least(0),
        help="smallest change that counts as an improvement",
        group=STOPPING,
    )
    mode: str | None = setting(
        None,
        check=one_of(MODES),
        help="min: the metric should decrease; max: it should increase",
        default_help="min for a loss, max otherwise",
        group=STOPPING,
    )
    relay_url: str = setting(
        DEFAULT_RELAY_URL,
        check=WS_URL,
        help='relay WebSocket address; "" for the log only',
        group=OUTPUT,
    )
    relay_token: str | None = setting(
        None,
        repr=False,
        help="publisher token, if the relay requires one",
        default_help=f"${RELAY_TOKEN_ENV}",
        group=OUTPUT,
    )
    log_path: str | None = setting(
        None,
        help="JSONL copy of every message",
        default_help=f"runs/<run id>.jsonl, or ${LOG_DIR_ENV}/<run id>.jsonl",
        group=OUTPUT,
    )
    save_path: str | None = setting(
        None,
        help="best weights, a torch state_dict",
        default_help=f"runs/<run id>/best_model.pt, or under ${LOG_DIR_ENV}",
        group=OUTPUT,
    )
    run_id: str | None = setting(None, cli=False, help="the run's id; None: a fresh one")
    progress: bool = setting(  # a progress bar (stderr) and a summary line (stdout) per epoch
        False,
        cli_default=True,
        flag="--no-progress",
        help="hide the per-epoch progress bar and summary lines",
        group=OUTPUT,
    )

    def __post_init__(self) -> None:
        validate(self)


@dataclass(frozen=True)
class CentralizedResult:
    """How a run ended: what ``training_end`` reported, and where its files are.

    ``final_metrics`` holds the best epoch's validation metrics (``val_*``) and the best
    model's metrics on the test split (``test_*``).
    """

    run_id: str
    status: str
    best_epoch: int | None
    epochs_run: int
    final_metrics: dict[str, float]
    save_path: Path
    log_path: Path


class CentralizedTrainer:
    """Train one model on the training split and stream its progress under one run id.

    Construction loads the data and builds the model (the configuration checked itself), so
    bad settings or data fail before any message is sent; :meth:`run` trains and streams.

    Raises:
        ValueError: the data at ``data_path`` does not have the expected layout.
        FileNotFoundError: ``data_path`` does not exist.
    """

    def __init__(self, config: CentralizedConfig) -> None:
        self.config = config
        self.run_id = config.run_id or new_run_id()
        # The sender's own default; its sender id only names logs of runs without an id.
        self.log_path = Path(config.log_path or default_log_path(self.run_id, sender_id=""))
        default_save_path = run_dir(self.run_id) / "best_model.pt"
        self.save_path = Path(config.save_path or default_save_path)
        self.early_stopping = EarlyStopping(
            config.early_stopping_metric,
            patience=config.patience,
            min_delta=config.min_delta,
            mode=config.mode,
        )
        self.splits = load_splits(config.data_path, config.image_size, config.seed)
        torch.manual_seed(config.seed)
        self.model = build_model(config.model)
        self.device = pick_device()
        self._started = False

    def run(self) -> CentralizedResult:
        """Train, validate every epoch, stream each step; return how the run ended.

        The best epoch's weights are written to ``save_path`` as soon as that epoch ends.
        Monitoring never stops training: with the relay down, every message still reaches
        the JSONL log at ``log_path``.

        Raises:
            RuntimeError: this trainer already ran (each run needs its own trainer and run id).
            Exception: whatever training raised, after an ``error`` message was sent.
        """
        if self._started:
            raise RuntimeError(
                f"run {self.run_id} already ran; build a new trainer for another run"
            )
        self._started = True
        self.save_path.parent.mkdir(parents=True, exist_ok=True)
        with MetricsWebSocketSender(
            self.config.relay_url or None,
            run_id=self.run_id,
            token=self.config.relay_token,
            log_path=self.log_path,
        ) as sender:
            sender.send_training_mode(
                is_federated=False,
                num_rounds=0,
                num_clients=0,
                num_epochs=self.config.epochs,
                config=shareable(self.config),
            )
            try:
                result = self._train(sender)
            except BaseException as exc:  # an interrupted run is worth reporting too
                sender.send_failure(
                    self.run_id, exc, {"best_epoch": self.early_stopping.best_epoch}
                )
                raise
            sender.send_training_end(
                self.run_id,
                {
                    "status": result.status,
                    "best_epoch": result.best_epoch,
                    "final_metrics": result.final_metrics,
                },
            )
        return result

    def _train(self, sender: MetricsWebSocketSender) -> CentralizedResult:
        config, stopper = self.config, self.early_stopping
        shuffle = torch.Generator().manual_seed(config.seed)
        train_loader = DataLoader(
            self.splits.train, batch_size=config.batch_size, shuffle=True, generator=shuffle
        )
        val_loader = DataLoader(self.splits.val, batch_size=EVAL_BATCH_SIZE)
        # The federated clients' optimizer, so centralized and federated curves compare.
        optimizer = torch.optim.SGD(self.model.parameters(), lr=config.learning_rate, momentum=0.9)
        best_val: dict[str, float] = {}
        status, epoch = "completed", 0
        for epoch in range(1, config.epochs + 1):
            batches = tqdm(
                train_loader,
                desc=f"epoch {epoch}/{config.epochs}",
                unit="batch",
                disable=not config.progress,
            )
            train_metrics = train_epoch(self.model, batches, optimizer, self.device)
            val_metrics = evaluate(self.model, val_loader, self.device)
            sender.send_epoch_end(epoch, "train", train_metrics)
            sender.send_epoch_end(epoch, "val", val_metrics)
            monitored = _prefixed("train", train_metrics) | _prefixed("val", val_metrics)
            if config.progress:
                tqdm.write(
                    f"epoch {epoch}: "
                    + _summary(monitored, ("train_loss", "val_loss", stopper.metric))
                )
            stop = stopper.update(epoch, monitored)
            if stopper.best_epoch == epoch:
                best_val = val_metrics
                _save_atomically(self.model.state_dict(), self.save_path)
            if stop:
                status = "early_stopped"
                sender.send_early_stopping_triggered(
                    epoch,
                    stopper.best_value,
                    stopper.metric,
                    stopper.patience,
                    reason=stopper.reason,
                )
                break
        if stopper.best_epoch is None:  # the monitored metric was NaN every epoch
            best_val = val_metrics
            _save_atomically(self.model.state_dict(), self.save_path)
        self.model.load_state_dict(torch.load(self.save_path, map_location=self.device))
        test_loader = DataLoader(self.splits.test, batch_size=EVAL_BATCH_SIZE)
        test_metrics = evaluate(self.model, test_loader, self.device)
        return CentralizedResult(
            run_id=self.run_id,
            status=status,
            best_epoch=stopper.best_epoch,
            epochs_run=epoch,
            final_metrics=_prefixed("val", best_val) | _prefixed("test", test_metrics),
            save_path=self.save_path,
            log_path=self.log_path,
        )


def _prefixed(phase: str, metrics: dict[str, float]) -> dict[str, float]:
    return {f"{phase}_{name}": value for name, value in metrics.items()}


def _summary(metrics: dict[str, float], names: tuple[str, ...]) -> str:
    return ", ".join(f"{name} {metrics[name]:.4f}" for name in dict.fromkeys(names))


def _save_atomically(state_dict: dict[str, torch.Tensor], path: Path) -> None:
    """Write ``state_dict`` so that a crash mid-write never leaves a truncated file."""
    partial = path.with_name(path.name + ".partial")
    torch.save(state_dict, partial)
    os.replace(partial, path)
