"""Live client progress: the rate-limited reporter, progress_mod, and a real relay receiving it.

The reporter runs on a fake clock against a recording publisher (every message it makes is
validated as the sender would), then through a real sender to a dead relay. progress_mod is
called as Flower calls a mod. The last test runs our ClientApp for one round on the Ray-free
grid of ``test_strategy.py`` and checks what a real relay received from each client.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg
from flwr.supercore.task_identity import TaskIdentity

from fl_stream.flower import StreamingStrategy, current_reporter, progress_mod
from fl_stream.flower.progress import close_senders
from fl_stream.monitor.progress import NO_PROGRESS, ProgressReporter, progress_sender
from fl_stream.monitor.protocol import make_message
from fl_stream.monitor.runlog import read_log
from fl_stream.monitor.sender import MetricsWebSocketSender
from tests.support import ListeningClient, RelayProcess, free_port
from tests.test_strategy import RUN_ID, SMALL, DirectGrid, start

INTERVAL = 0.5


class Clock:
    """A fake monotonic clock: ``tick(seconds)`` moves it on."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def tick(self, seconds: float) -> None:
        self.now += seconds


class Recorder:
    """A publisher that validates and keeps each message's data, with the clock's time."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.sent: list[tuple[float, dict[str, Any]]] = []

    def send_metrics(self, metrics: Mapping[str, Any], type: str = "metrics") -> bool:
        self.sent.append((self.clock.now, make_message(type, metrics)["data"]))
        return True

    def positions(self) -> list[tuple[int, int]]:
        return [(data["epoch"], data["batch"]) for _, data in self.sent]


def _train(reporter: ProgressReporter, clock: Clock, epochs: int, batches: int, step: float):
    """A loop of ``epochs`` x ``batches`` batches of 8 examples, each taking ``step`` s."""
    for epoch in range(1, epochs + 1):
        reporter.epoch_started(epoch, epochs)
        for batch in range(1, batches + 1):
            clock.tick(step)
            reporter.batch_done(batch, batches, 8, loss=1.0 / batch, accuracy=0.5)


@pytest.fixture
def task_identity() -> None:
    """Messages take their ids from the task identity a SuperNode would set."""
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 7, 0


@pytest.fixture(autouse=True)
def no_leftover_senders() -> Iterator[None]:
    """progress_mod's senders live as long as the process; close them after each test."""
    yield
    close_senders(timeout=1.0)


# --------------------------------------------------------------------------- the reporter


def test_first_and_last_batch_of_each_epoch_and_at_most_one_message_per_interval():
    clock = Clock()
    recorder = Recorder(clock)
    reporter = ProgressReporter(
        recorder, "3", round_num=2, node_id="81", interval=INTERVAL, clock=clock
    )
    _train(reporter, clock, epochs=3, batches=20, step=0.11)

    positions = recorder.positions()
    for epoch in (1, 2, 3):
        assert (epoch, 1) in positions and (epoch, 20) in positions
    forced = {(epoch, batch) for epoch in (1, 2, 3) for batch in (1, 20)}
    times = [at for at, _ in recorder.sent]
    for (at, _), earlier, position in zip(
        recorder.sent[1:], times[:-1], positions[1:], strict=True
    ):
        if position not in forced:
            assert at - earlier >= INTERVAL, position
    # 3 epochs of 2.2 s: at most one message per 0.5 s besides the forced ones, and not fewer.
    assert len(positions) <= len(forced) + 3 * 2.2 / INTERVAL
    assert len(positions) >= 3 * 5
    assert positions == sorted(positions)

    _, data = recorder.sent[0]
    assert data == {
        "round": 2,
        "phase": "train",
        "client_id": "3",
        "epoch": 1,
        "num_epochs": 3,
        "batch": 1,
        "num_batches": 20,
        "node_id": "81",
        "examples_per_second": pytest.approx(8 / 0.11),
        "metrics": {"loss": 1.0, "accuracy": 0.5},
    }


def test_examples_per_second_is_the_epochs_so_far():
    clock = Clock()
    recorder = Recorder(clock)
    reporter = ProgressReporter(recorder, "0", interval=INTERVAL, clock=clock)
    reporter.epoch_started(1, 2)
    clock.tick(1.0)  # a slow first batch: 8 examples in 1 s
    reporter.batch_done(1, 3, 8)
    clock.tick(1.0)
    reporter.batch_done(2, 3, 8)
    clock.tick(2.0)
    reporter.batch_done(3, 3, 16)
    reporter.epoch_started(2, 2)  # the clock starts again
    clock.tick(0.5)
    reporter.batch_done(1, 3, 10)
    rates = [data["examples_per_second"] for _, data in recorder.sent]
    assert rates == pytest.approx([8.0, 8.0, 8.0, 20.0])
    assert all("metrics" not in data for _, data in recorder.sent)  # nothing passed, none sent


def test_a_loop_faster_than_the_clock_sends_only_each_epochs_first_and_last():
    clock = Clock()
    recorder = Recorder(clock)
    reporter = ProgressReporter(recorder, "0", phase="evaluate", interval=INTERVAL, clock=clock)
    _train(reporter, clock, epochs=2, batches=50, step=0.0)
    assert recorder.positions() == [(1, 1), (1, 50), (2, 1), (2, 50)]
    assert all("examples_per_second" not in data for _, data in recorder.sent)  # 0 s elapsed
    assert {data["phase"] for _, data in recorder.sent} == {"evaluate"}


def test_without_epoch_started_the_pass_is_epoch_1_of_1():
    clock = Clock()
    recorder = Recorder(clock)
    reporter = ProgressReporter(recorder, "0", phase="evaluate", clock=clock)
    clock.tick(2.0)
    reporter.batch_done(1, 1, 64, loss=0.7)
    [(_, data)] = recorder.sent
    assert (data["epoch"], data["num_epochs"], data["batch"], data["num_batches"]) == (1, 1, 1, 1)
    assert data["examples_per_second"] == 32.0  # since the reporter was made


def test_the_no_op_reporter_sends_nothing():
    assert not NO_PROGRESS.active
    NO_PROGRESS.epoch_started(1, 2)
    NO_PROGRESS.batch_done(1, 2, 8, loss=0.5)  # nothing to see, nothing raised


@pytest.mark.parametrize("interval", [0, -1, math.inf, math.nan])
def test_an_interval_must_be_positive(interval: float):
    with pytest.raises(ValueError, match="interval must be"):
        ProgressReporter(None, interval=interval)


def test_reporting_never_raises_into_the_loop(caplog: pytest.LogCaptureFixture):
    class Broken:
        def send_metrics(self, metrics: Mapping[str, Any], type: str = "metrics") -> bool:
            raise RuntimeError("publisher broke")

    reporter = ProgressReporter(Broken(), "0")
    with caplog.at_level(logging.WARNING, logger="fl_stream.monitor.progress"):
        for batch in range(1, 4):
            reporter.batch_done(batch, 3, 8, loss=0.1)
        reporter.batch_done("one", None, 8)  # type: ignore[arg-type]
        reporter.epoch_started(2, 2)
    warnings = [r for r in caplog.records if r.name == "fl_stream.monitor.progress"]
    assert len(warnings) == 1 and "publisher broke" in warnings[0].getMessage()


def test_a_dead_relay_never_blocks_the_loop_and_drops_are_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    nowhere = f"ws://127.0.0.1:{free_port()}"  # nothing listens there
    sender = progress_sender(nowhere, run_id="r-1", client_id="0", directory=tmp_path, max_queue=4)
    reporter = ProgressReporter(sender, "0", interval=1e-9)  # a message for every batch
    try:
        with caplog.at_level(logging.WARNING, logger="fl_stream"):
            began = time.perf_counter()
            for epoch in (1, 2):
                reporter.epoch_started(epoch, 2)
                for batch in range(1, 201):
                    reporter.batch_done(batch, 200, 8, loss=0.5)
            elapsed = time.perf_counter() - began
            deadline = time.monotonic() + 5.0
            while sender.stats().dropped < 400 - 4 and time.monotonic() < deadline:
                time.sleep(0.01)  # the sender's thread settles the hand-off
            stats = sender.stats()
    finally:
        sender.close(timeout=0.2)

    assert elapsed < 2.0  # 400 calls; each takes microseconds
    assert stats.accepted == 400 and stats.invalid == 0
    assert (stats.dropped, stats.pending, stats.acked) == (400 - 4, 4, 0)  # a full queue waits
    dropping = [r for r in caplog.records if "dropping the oldest" in r.getMessage()]
    assert len(dropping) == 1
    log_path = tmp_path / "r-1" / "progress-0.jsonl"
    assert sender.log_path == log_path
    logged = list(read_log(log_path))  # the log keeps every message, dropped ones included
    assert len(logged) == 400 and {m["type"] for m in logged} == {"client_progress"}


# --------------------------------------------------------------------------- progress_mod


def _context(run_config: dict[str, Any], **node_config: int) -> Context:
    return Context(
        run_id=7, node_id=3, node_config=node_config, state=RecordDict(), run_config=run_config
    )


def _message(message_type: str, server_round: int | None = 5) -> Message:
    config = {} if server_round is None else {"server-round": server_round, "lr": 0.1}
    return Message(
        RecordDict({"config": ConfigRecord(config)}), dst_node_id=3, message_type=message_type
    )


def _capture(seen: list[ProgressReporter], batches: int = 0):
    """A fake ClientApp that records its reporter and reports ``batches`` batches."""

    def call_next(msg: Message, context: Context) -> Message:
        reporter = current_reporter()
        seen.append(reporter)
        for batch in range(1, batches + 1):
            reporter.batch_done(batch, batches, 4, loss=0.25)
        return Message(RecordDict({"metrics": MetricRecord({"num-examples": 4})}), reply_to=msg)

    return call_next


@pytest.fixture
def log_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("FL_STREAM_LOG_DIR", str(tmp_path))
    return tmp_path


LOG_ONLY = {"relay-url": "", "progress-interval": 0.25}


@pytest.mark.usefixtures("task_identity")
@pytest.mark.parametrize("message_type", ["train", "evaluate", "train.custom_action"])
def test_the_mod_makes_the_calls_reporter_current_while_it_runs(message_type, log_dir):
    seen: list[ProgressReporter] = []
    assert current_reporter() is NO_PROGRESS
    progress_mod(
        _message(message_type), _context(LOG_ONLY, **{"partition-id": 4}), _capture(seen, 3)
    )
    assert current_reporter() is NO_PROGRESS  # again, once the call returned

    [reporter] = seen
    phase = message_type.split(".")[0]
    assert reporter.active and (reporter.client_id, reporter.node_id) == ("4", "3")
    assert (reporter.round_num, reporter.phase, reporter.interval) == (5, phase, 0.25)
    assert reporter.sender is not None
    assert reporter.sender.flush(5.0)
    logged = list(read_log(log_dir / "7" / "progress-4.jsonl"))
    assert [m["data"]["batch"] for m in logged] == [1, 3]  # the first and the last
    assert {m["run_id"] for m in logged} == {"7"} and logged[0]["data"]["phase"] == phase


@pytest.mark.usefixtures("task_identity", "log_dir")
def test_one_sender_per_run_and_client_reused_across_calls():
    seen: list[ProgressReporter] = []
    for message_type, server_round in (("train", None), ("evaluate", 1), ("train", 2)):
        progress_mod(_message(message_type, server_round), _context(LOG_ONLY), _capture(seen))
    other_run = Context(
        run_id=8, node_id=3, node_config={}, state=RecordDict(), run_config=LOG_ONLY
    )
    progress_mod(_message("train"), other_run, _capture(seen))
    senders = [reporter.sender for reporter in seen]
    assert senders[0] is senders[1] is senders[2] and senders[3] is not senders[0]
    # A new run ends the process's earlier ones: their senders are closed, not kept.
    assert senders[0] is not None and senders[0].send_metrics({}, "probe") is False
    assert len({id(reporter) for reporter in seen}) == 4  # a reporter per call
    assert seen[0].client_id == "3"  # no partition-id: the node id
    assert [reporter.round_num for reporter in seen[:3]] == [0, 1, 2]  # 0: the message names none


@pytest.mark.usefixtures("task_identity", "log_dir")
@pytest.mark.parametrize(
    ("message_type", "run_config"),
    [
        ("query", LOG_ONLY),  # not a train or evaluate call
        ("train", {"relay-url": "", "progress-interval": 0}),  # progress off
        ("train", {"progress-interval": 0.0}),
    ],
)
def test_no_progress_outside_train_and_evaluate_or_when_off(message_type, run_config):
    seen: list[ProgressReporter] = []
    progress_mod(_message(message_type), _context(run_config), _capture(seen))
    assert seen == [NO_PROGRESS]


@pytest.mark.usefixtures("task_identity", "log_dir")
@pytest.mark.parametrize(
    ("run_config", "error"),
    [
        ({"progress-interval": -1.0}, "run-config progress-interval = -1.0 is invalid"),
        ({"progress-interval": "fast"}, "run-config progress-interval = 'fast' is invalid"),
        ({"relay-url": "http://relay"}, "run-config relay-url = 'http://relay' is invalid"),
    ],
)
def test_a_bad_setting_is_logged_and_the_call_runs_without_progress(
    run_config, error, monkeypatch: pytest.MonkeyPatch
):
    logged: list[str] = []
    monkeypatch.setattr(
        "fl_stream.flower.progress.log", lambda level, text, *args: logged.append(text % args)
    )
    seen: list[ProgressReporter] = []
    reply = progress_mod(_message("train"), _context({**run_config, "lr": 0.1}), _capture(seen))
    assert seen == [NO_PROGRESS] and reply.content["metrics"]["num-examples"] == 4
    assert len(logged) == 1 and error in logged[0]


@pytest.mark.usefixtures("task_identity", "log_dir")
def test_the_reporter_is_reset_when_the_app_raises():
    def crashing_app(msg: Message, context: Context) -> Message:
        assert current_reporter().active
        raise RuntimeError("training diverged")

    with pytest.raises(RuntimeError, match="training diverged"):
        progress_mod(_message("train"), _context(LOG_ONLY), crashing_app)
    assert current_reporter() is NO_PROGRESS


# --------------------------------------------------------------------------- a real relay


def test_the_relay_receives_each_clients_progress_under_the_run_id(
    relay: RelayProcess, tmp_path: Path
):
    run_config = {
        **SMALL,
        "samples-per-client": 10,  # 8 to train on, in 3 batches (3, 3, 2); 2 to evaluate
        "batch-size": 3,
        "local-epochs": 2,
        "relay-url": relay.ws_url,
        "metrics-log-dir": str(tmp_path),
        "progress-interval": 60.0,  # only each epoch's first and last batch
    }
    run_id = str(RUN_ID)
    with ListeningClient(relay.ws_url, run_id=run_id) as dashboard:
        with MetricsWebSocketSender(
            relay.ws_url, run_id=run_id, log_path=tmp_path / "server.jsonl"
        ) as sender:
            strategy = StreamingStrategy(FedAvg(), sender, run_id=run_id)
            start(strategy, num_rounds=1, grid=DirectGrid(2, run_config))
        # per client: train 2 epochs x (first, last), evaluate 1 batch
        progress = dashboard.wait_for_type("client_progress", count=10)
        dashboard.wait_for_type("training_end")

    assert {m["run_id"] for m in progress} == {run_id}
    by_client: dict[str, list[tuple[str, int, int, int]]] = {}
    for message in progress:
        data = message["data"]
        assert data["round"] == 1 and data["examples_per_second"] > 0
        assert math.isfinite(data["metrics"]["loss"]) and data["node_id"] == str(
            1000 + int(data["client_id"])
        )
        position = (data["phase"], data["epoch"], data["batch"], data["num_batches"])
        by_client.setdefault(data["client_id"], []).append(position)
    expected = [
        ("train", 1, 1, 3),
        ("train", 1, 3, 3),  # the middle batch came within the interval: not sent
        ("train", 2, 1, 3),
        ("train", 2, 3, 3),
        ("evaluate", 1, 1, 1),
    ]
    assert by_client == {"0": expected, "1": expected}
    for client in ("0", "1"):
        logged = list(read_log(tmp_path / run_id / f"progress-{client}.jsonl"))
        assert [m["msg_id"] for m in logged] == [
            m["msg_id"] for m in progress if m["data"]["client_id"] == client
        ]
