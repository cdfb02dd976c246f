"""``fl-stream watch``: the state model and its rendering alone, then the watcher against a real
relay (runs published through it), through :func:`fl_stream.watch.watch` in a thread with a
recording console, and as a process (piped stdout, SIGINT).

Bounded waits everywhere; everything on 127.0.0.1.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from fl_stream.monitor.protocol import (
    RELAY_TOKEN_ENV,
    VIEWER_TOKEN_ENV,
    Message,
    make_message,
)
from fl_stream.watch import watch
from fl_stream.watch.render import StepBar, format_value, live_view, plain_line
from fl_stream.watch.state import RunState
from tests.support import WAIT_TIMEOUT, RelayProcess, free_port, get_json, publish

ROOT = Path(__file__).resolve().parent.parent
T0 = datetime(2026, 1, 1, tzinfo=UTC)
# A watcher that should be done gives up on a stopped relay this fast (teardown included).
RECONNECT_FOR = 3.0
# `fl-stream watch` without fl_stream/cli.py: the module's own main.
WATCH_MAIN = "import sys; from fl_stream.watch import main; sys.exit(main(sys.argv[1:]))"
CLI_WIRED = "add_watch_command" in (ROOT / "fl_stream" / "cli.py").read_text()


@pytest.fixture(autouse=True)
def _no_tokens_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(VIEWER_TOKEN_ENV, raising=False)
    monkeypatch.delenv(RELAY_TOKEN_ENV, raising=False)


# --------------------------------------------------------------------------- messages


class Run:
    """Builds one run's messages, each ``seconds`` after T0 (so a state's times are known)."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self.seq = 0

    def __call__(self, kind: str, seconds: float = 0.0, **data: Any) -> Message:
        timestamp = (T0 + timedelta(seconds=seconds)).isoformat()
        return make_message(kind, data, run_id=self.run_id, timestamp=timestamp)

    def seqd(self, kind: str, seconds: float = 0.0, **data: Any) -> Message:
        """The message as the relay sends it on: with its seq."""
        self.seq += 1
        return {**self(kind, seconds, **data), "seq": self.seq}


def federated_start(run: Run, rounds: int = 2, seconds: float = 0.0) -> Message:
    return run("training_mode", seconds, is_federated=True, num_rounds=rounds, num_clients=2)


def round_end(run: Run, round_: int, seconds: float = 0.0, rounds: int = 2) -> Message:
    return run(
        "round_end",
        seconds,
        round=round_,
        total_rounds=rounds,
        fit_metrics={"loss": 1 / round_, "accuracy": 0.5 + round_ / 10, "dice": 0.25 * round_},
        eval_metrics={"loss": "NaN", "accuracy": 0.6 + round_ / 10},
    )


def client_progress(run: Run, client: str, round_: int, batch: int, **extra: Any) -> Message:
    return run(
        "client_progress",
        round=round_,
        phase="train",
        client_id=client,
        epoch=1,
        num_epochs=2,
        batch=batch,
        num_batches=10,
        examples_per_second=1500.0,
        metrics={"loss": 0.4321},
        **extra,
    )


def training_end(run: Run, status: str = "completed", **extra: Any) -> Message:
    data = {"run_id": run.run_id, "status": status, "final_metrics": {"loss": 0.5}, **extra}
    return run("training_end", **data)


def send(relay: RelayProcess, *messages: Message) -> None:
    """Publish ``messages``; every one must be acknowledged (stored and numbered)."""
    replies = publish(relay.ws_url, messages)
    assert [reply["type"] for reply in replies] == ["ack"] * len(messages), replies


# --------------------------------------------------------------------------- the watcher


class Watcher:
    """:func:`watch` in a thread, drawing on a recording console (a terminal or not)."""

    def __init__(
        self, relay: RelayProcess, run_id: str | None = None, *, terminal: bool, **options: Any
    ) -> None:
        self.console = Console(
            file=io.StringIO(), width=140, force_terminal=terminal, record=True, color_system=None
        )
        self.status: int | None = None
        options.setdefault("reconnect_for", RECONNECT_FOR)
        self._thread = threading.Thread(
            target=self._watch, args=(relay, run_id, options), daemon=True, name="watcher"
        )
        self._thread.start()

    def _watch(self, relay: RelayProcess, run_id: str | None, options: dict[str, Any]) -> None:
        self.status = watch(run_id, relay_url=relay.ws_url, console=self.console, **options)

    def text(self) -> str:
        """Everything drawn or printed so far, without styles."""
        return self.console.export_text(clear=False, styles=False)

    def wait_for(self, text: str, timeout: float = WAIT_TIMEOUT) -> str:
        """Wait until ``text`` was shown; return the output."""
        deadline = time.monotonic() + timeout
        while text not in (output := self.text()):
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise AssertionError(f"{text!r} not shown within {timeout} s:\n{output[-3000:]}")
            time.sleep(0.05)
        return output

    def result(self, timeout: float = WAIT_TIMEOUT) -> int:
        """Wait for the watcher to return; its exit status."""
        self._thread.join(timeout)
        assert not self._thread.is_alive(), f"still watching after {timeout} s:\n{self.text()}"
        assert self.status is not None
        return self.status


def wait_until(condition: Callable[[], bool], timeout: float = WAIT_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"condition not met within {timeout} s"
        time.sleep(0.05)


def connections(relay: RelayProcess) -> int:
    """Connections open on the relay now (a watcher's, once it connected)."""
    return int(get_json(f"{relay.http_url}/stats")["connections"])


# --------------------------------------------------------------------------- the state alone


def test_the_state_of_a_federated_run_from_its_messages() -> None:
    run = Run("r1")
    state = RunState("r1")
    messages = [
        run.seqd("training_mode", 0, is_federated=True, num_rounds=4, num_clients=2),
        run.seqd(
            "round_metrics",
            5,
            round=1,
            total_rounds=4,
            phase="train",
            metrics={"loss": 0.9, "dice": 0.1},
        ),
        {**round_end(run, 1, seconds=10, rounds=4), "seq": 3},
    ]
    assert [state.apply(message) for message in messages] == [True, True, True]
    assert not state.apply(messages[1]), "a seq applied already is skipped"
    assert (state.mode, state.status, state.unit) == ("federated", "running", "round")
    assert (state.total, state.done, state.current, state.num_clients) == (4, 1, 1, 2)
    assert [column.label for column in state.ordered_columns()] == ["fit", "eval"]
    assert state.columns["fit"].values == {"loss": 1.0, "accuracy": 0.6, "dice": 0.25}
    assert state.columns["eval"].values == {"loss": "NaN", "accuracy": 0.7}
    assert state.metric_names() == ["loss", "accuracy", "dice"], "the six first, then the rest"
    # 10 s per round since the first message: rounds 2-4 end 30 s after round 1.
    assert state.finish_estimate() == (T0 + timedelta(seconds=40)).timestamp()
    server = {**round_end(run, 2, seconds=20, rounds=4), "seq": 4}
    server["data"]["eval_source"] = "server"
    state.apply(server)
    assert [column.label for column in state.ordered_columns()] == ["fit", "eval", "central eval"]


def test_the_state_of_a_centralized_run_that_stops_early() -> None:
    run = Run("c1")
    state = RunState("c1")
    for message in (
        run.seqd("training_mode", 0, is_federated=False, num_rounds=0, num_clients=0, num_epochs=9),
        run.seqd("epoch_end", 4, epoch=1, phase="train", metrics={"loss": 0.7}),
        run.seqd("epoch_end", 5, epoch=1, phase="val", metrics={"loss": 0.8, "auroc": 0.6}),
        run.seqd(
            "early_stopping",
            6,
            epoch=1,
            best_metric_value=0.8,
            metric_name="val_loss",
            patience=1,
            reason="val_loss did not improve",
        ),
    ):
        state.apply(message)
    assert (state.mode, state.unit, state.total, state.done) == ("centralized", "epoch", 9, 1)
    assert [column.label for column in state.ordered_columns()] == ["train", "val"]
    assert state.status == "early_stopped" and state.end is None
    state.apply({**training_end(run, "early_stopped", best_epoch=1), "seq": 9})
    assert state.status == "early_stopped"


def test_client_rows_follow_the_round_and_clear_at_its_round_end() -> None:
    run = Run("r1")
    state = RunState("r1")
    state.apply(federated_start(run))
    state.apply(client_progress(run, "0", 1, batch=3, node_id="123"))
    state.apply(client_progress(run, "1", 1, batch=4))
    state.apply(client_progress(run, "1", 1, batch=7))
    assert sorted(state.clients) == ["0", "1"] and state.clients["1"].batch == 7
    for malformed in ({"round": 1, "phase": "train"}, {"round": "1", "client_id": "2"}):
        # As a relay from before the protocol declared client_progress passes them on.
        state.apply({"type": "client_progress", "timestamp": T0.isoformat(), "data": malformed})
    assert sorted(state.clients) == ["0", "1"], "malformed reports are ignored"

    now = T0.timestamp() + 3
    view = _draw(live_view(state, StepBar(), None, now))
    assert "clients · round 1" in view
    for cell in ("0 (node 123)", "fit", "1/2", "7/10", "0.4321", "1.5k", "3s ago"):
        assert cell in view, cell

    state.apply(round_end(run, 1))
    assert state.clients == {}
    assert "clients · round" not in _draw(live_view(state, StepBar(), None, now))
    state.apply(client_progress(run, "0", 1, batch=9))
    assert state.clients == {}, "a late report for an ended round is dropped"
    state.apply(client_progress(run, "0", 2, batch=1))
    assert list(state.clients) == ["0"]
    state.apply(client_progress(run, "1", 0, batch=2))  # round 0: the client does not know
    assert {key: row.round for key, row in state.clients.items()} == {"0": 2, "1": 2}
    state.apply(round_end(run, 2))
    assert state.clients == {}


def test_values_are_compact_and_non_finite_ones_read_as_on_the_wire() -> None:
    cases = {
        0.123456: "0.1235",
        12345.678: "1.235e+04",
        0.5: "0.5",
        7: "7",
        None: "—",
        "NaN": "NaN",
        "Infinity": "Infinity",
        "-Infinity": "-Infinity",
        float("nan"): "NaN",
        float("-inf"): "-Infinity",
    }
    assert {value: format_value(value) for value in cases} == cases


def test_the_live_view_shows_progress_time_left_metrics_and_banners() -> None:
    run = Run("r1")
    state = RunState("r1")
    state.apply(run("training_mode", 0, is_federated=True, num_rounds=3, num_clients=2))
    state.apply(round_end(run, 1, seconds=10, rounds=3))
    view = _draw(live_view(state, StepBar(), "link lost; reconnecting", T0.timestamp() + 15))
    for text in (
        "run r1 · running · federated · 3 rounds · 2 clients",
        "link lost; reconnecting",
        "1/3 done · ETA ≈ 15s · elapsed 15s",
        "fit (round 1)",
        "eval (round 1)",
        "dice",
        "NaN",
    ):
        assert text in view, text
    state.apply(run("error", 20, error="CUDA out of memory", error_type="RuntimeError"))
    state.apply(training_end(run, "failed", best_round=1, best_metric="loss"))
    view = _draw(live_view(state, StepBar(), None, T0.timestamp() + 30))
    assert "error (RuntimeError): CUDA out of memory" in view
    assert "run r1 failed · best round 1 by loss · final: loss 0.5" in view
    assert "1/3 done · elapsed 20s" in view, "no time left once the run ended"


def test_plain_lines_say_what_each_message_brought() -> None:
    run = Run("r1")
    state = RunState("r1")
    lines = []
    for message in (
        federated_start(run),
        run("round_metrics", round=1, total_rounds=2, phase="train", metrics={"loss": 0.25}),
        client_progress(run, "0", 2, batch=5),
        round_end(run, 1, seconds=30),
        run("custom_thing", anything=1),
    ):
        state.apply(message)
        lines.append(plain_line(state, message))
    assert lines == [
        "run r1: federated · 2 rounds · 2 clients",
        "round 1/2 fit: loss 0.25",
        "round 2 client 0 fit: epoch 1/2, batch 5/10, loss 0.4321, 1.5k examples/s",
        "round 1/2 ended: fit loss 1, accuracy 0.6, dice 0.25 | eval loss NaN, accuracy 0.7"
        " · ETA ≈ 30s",
        None,
    ]


def _draw(renderable: Any) -> str:
    console = Console(width=140, record=True, file=io.StringIO(), color_system=None)
    console.print(renderable)
    return console.export_text()


# --------------------------------------------------------------------------- against a relay


def test_a_federated_run_that_completes_exits_0_with_its_metrics_and_progress(
    relay: RelayProcess,
) -> None:
    run = Run("fed")
    send(relay, federated_start(run), round_end(run, 1))
    watcher = Watcher(relay, "fed", terminal=True)
    watcher.wait_for("fit (round 1)")
    send(relay, round_end(run, 2), training_end(run, best_round=2, best_metric="loss"))
    assert watcher.result() == 0
    output = watcher.text()
    for text in (
        "run fed · completed · federated · 2 rounds · 2 clients",
        "2/2",
        "fit (round 2)",
        "eval (round 2)",
        "accuracy",
        "dice",
        "NaN",
        "run fed completed · best round 2 by loss",
    ):
        assert text in output, text


def test_a_failed_run_exits_1_with_its_error_banner(relay: RelayProcess) -> None:
    run = Run("bad")
    watcher = Watcher(relay, "bad", terminal=True)
    wait_until(lambda: connections(relay) == 1)
    send(
        relay,
        federated_start(run),
        run("error", error="ValueError: loss is NaN", error_type="ValueError"),
        training_end(run, "failed"),
    )
    assert watcher.result() == 1
    output = watcher.text()
    assert "error (ValueError): ValueError: loss is NaN" in output
    assert "run bad failed" in output


def test_an_error_without_a_training_end_also_ends_the_run(relay: RelayProcess) -> None:
    run = Run("seed")  # the original format's producers may send only the error
    send(relay, federated_start(run), run("error", error="boom", error_type="RuntimeError"))
    watcher = Watcher(relay, "seed", terminal=False)
    assert watcher.result() == 1
    assert "error (RuntimeError): boom" in watcher.text()


def test_early_stopping_shows_its_banner_and_exits_0(relay: RelayProcess) -> None:
    run = Run("cen")
    watcher = Watcher(relay, "cen", terminal=True)
    send(
        relay,
        run("training_mode", is_federated=False, num_rounds=0, num_clients=0, num_epochs=10),
        run("epoch_end", epoch=1, phase="train", metrics={"loss": 0.6, "accuracy": 0.7}),
        run("epoch_end", epoch=1, phase="val", metrics={"loss": 0.65, "accuracy": "NaN"}),
    )
    watcher.wait_for("val (epoch 1)")
    send(
        relay,
        run(
            "early_stopping",
            epoch=1,
            best_metric_value=0.65,
            metric_name="val_loss",
            patience=1,
            reason="val_loss did not improve for 1 epochs",
        ),
        training_end(run, "early_stopped", best_epoch=1),
    )
    assert watcher.result() == 0
    output = watcher.text()
    assert "early stopping at epoch 1: val_loss did not improve for 1 epochs" in output
    assert "(best val_loss 0.65, patience 1)" in output
    assert "run cen early-stopped · best epoch 1" in output
    assert "1/10" in output


def test_client_progress_rows_appear_during_a_round(relay: RelayProcess) -> None:
    run = Run("clients")
    send(relay, federated_start(run))
    watcher = Watcher(relay, "clients", terminal=True)
    watcher.wait_for("run clients · running")
    send(relay, client_progress(run, "0", 1, batch=2), client_progress(run, "1", 1, batch=6))
    output = watcher.wait_for("6/10")
    assert "clients · round 1" in output and "2/10" in output and "0.4321" in output
    send(relay, round_end(run, 1), round_end(run, 2), training_end(run))
    assert watcher.result() == 0


def test_without_a_run_id_it_follows_the_newest_run(relay: RelayProcess) -> None:
    old, new = Run("old"), Run("new")
    send(relay, federated_start(old), training_end(old))
    send(relay, federated_start(new), round_end(new, 1))
    watcher = Watcher(relay, terminal=False)
    watcher.wait_for("following run new")
    send(relay, training_end(new))
    assert watcher.result() == 0
    output = watcher.text()
    assert "run new completed" in output and "run old" not in output


def test_without_a_run_id_and_no_run_yet_it_follows_the_first_to_start(
    relay: RelayProcess,
) -> None:
    watcher = Watcher(relay, terminal=False)
    watcher.wait_for("waiting for a run to start")
    first = Run("first")
    send(relay, federated_start(first), round_end(first, 1), round_end(first, 2))
    send(relay, training_end(first))
    assert watcher.result() == 0
    assert "run first completed" in watcher.text()


def test_an_unreachable_relay_is_one_line_and_exit_status_2(
    capsys: pytest.CaptureFixture[str],
) -> None:
    url = f"ws://127.0.0.1:{free_port()}"
    console = Console(file=io.StringIO(), record=True)
    started = time.monotonic()
    assert watch("r1", relay_url=url, console=console) == 2
    assert time.monotonic() - started < WAIT_TIMEOUT
    error = capsys.readouterr().err
    assert error.count("\n") == 1, error
    assert error.startswith(f"fl-stream watch: error: cannot reach the relay at {url}"), error
    assert "start it (fl-stream-relay) or pass --relay-url" in error
    assert console.export_text() == "", "nothing on stdout"


def test_a_dropped_link_reconnects_and_shows_every_message_once(relay: RelayProcess) -> None:
    run = Run("long")
    send(relay, federated_start(run, rounds=4), round_end(run, 1, rounds=4))
    watcher = Watcher(relay, "long", terminal=False, reconnect_for=WAIT_TIMEOUT)
    watcher.wait_for("round 1/4 ended")
    relay.stop()
    watcher.wait_for("reconnecting, attempt 1")
    relay.start()  # the same database: its epoch, so the watcher asks for what it missed
    send(relay, round_end(run, 2, rounds=4))  # most likely before the watcher is back
    watcher.wait_for("reconnected; catching up after seq 2")
    send(relay, round_end(run, 3, rounds=4), round_end(run, 4, rounds=4), training_end(run))
    assert watcher.result() == 0
    output = watcher.text()
    for round_ in range(1, 5):
        assert output.count(f"round {round_}/4 ended") == 1, output
    assert "the relay's database changed" not in output


def test_a_relay_with_another_database_gets_the_run_drawn_afresh(
    relay: RelayProcess, tmp_path: Path
) -> None:
    run = Run("moved")
    first = [federated_start(run), round_end(run, 1)]
    send(relay, *first)
    watcher = Watcher(relay, "moved", terminal=False, reconnect_for=WAIT_TIMEOUT)
    watcher.wait_for("round 1/2 ended")
    relay.stop()
    relay.db_path = tmp_path / "other" / "relay.db"  # same port, a new database (epoch)
    relay.start()
    send(relay, round_end(run, 1), *first[:1], round_end(run, 2), training_end(run))
    assert watcher.result() == 0
    output = watcher.text()
    assert "the relay's database changed; the run afresh" in output
    assert "run moved completed" in output


def test_a_viewer_token_goes_in_the_header_and_its_absence_is_explained(
    relay_factory: Callable[..., RelayProcess], capsys: pytest.CaptureFixture[str]
) -> None:
    relay = relay_factory(env={VIEWER_TOKEN_ENV: "look"})
    run = Run("private")
    send(relay, federated_start(run), training_end(run))
    assert Watcher(relay, "private", terminal=False, token="look").result() == 0
    capsys.readouterr()
    for run_id in ("private", None):  # refused: the subscribe, or the run list
        assert Watcher(relay, run_id, terminal=False).result() == 2
        error = capsys.readouterr().err
        assert "unauthorised" in error and f"pass --token or set ${VIEWER_TOKEN_ENV}" in error
    assert "look" not in relay.log_text()


# --------------------------------------------------------------------------- as a process


def test_piped_it_prints_plain_lines_and_exits_with_the_runs_status(relay: RelayProcess) -> None:
    run = Run("piped")
    ends = [round_end(run, 1, seconds=20), round_end(run, 2, seconds=40)]
    send(relay, federated_start(run), *ends, training_end(run))
    result = _watch_process(relay, "piped")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "\x1b" not in result.stdout, "no escape codes in a pipe"
    assert lines[-4:] == [
        "run piped: federated · 2 rounds · 2 clients",
        "round 1/2 ended: fit loss 1, accuracy 0.6, dice 0.25 | eval loss NaN, accuracy 0.7"
        " · ETA ≈ 20s",
        "round 2/2 ended: fit loss 0.5, accuracy 0.7, dice 0.5 | eval loss NaN, accuracy 0.8",
        "run piped completed · final: loss 0.5",
    ]


def test_ctrl_c_exits_130(relay: RelayProcess) -> None:
    run = Run("forever")
    send(relay, federated_start(run))
    process = subprocess.Popen(
        [sys.executable, "-c", WATCH_MAIN, "forever", "--relay-url", relay.ws_url],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until(lambda: connections(relay) == 1, timeout=30)  # inside watch()
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=WAIT_TIMEOUT)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 130, stderr
    assert stderr.strip() == "fl-stream watch: error: interrupted"


@pytest.mark.skipif(not CLI_WIRED, reason="fl_stream/cli.py does not add the watch command yet")
def test_fl_stream_watch_runs_from_the_command_line(relay: RelayProcess) -> None:
    run = Run("cli")
    send(relay, federated_start(run), training_end(run))
    result = _watch_process(relay, "cli", command=["-m", "fl_stream", "watch"])
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "run cli completed · final: loss 0.5"


def _watch_process(
    relay: RelayProcess, run_id: str, command: list[str] | None = None
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in (VIEWER_TOKEN_ENV, RELAY_TOKEN_ENV)}
    return subprocess.run(
        [sys.executable, *(command or ["-c", WATCH_MAIN]), run_id, "--relay-url", relay.ws_url],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
