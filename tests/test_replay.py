"""``fl-stream replay LOG``: a run log uploaded to a real relay process appears in its store
and on a live dashboard as if it had streamed, once however often it is replayed; bad lines
are reported by number and skipped; an unreachable or silent relay is one line and exit 1.

The logs are written by the real sender with no relay (``websocket_uri=None``), as a run with
the relay down writes them. The command runs in-process (``fl_stream.cli.main``) except where
its whole output or its imports are checked, which run it as ``python -m fl_stream``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.sync.server import ServerConnection, serve

from fl_stream.cli import main
from fl_stream.monitor.protocol import make_message
from fl_stream.monitor.runlog import read_log
from fl_stream.monitor.sender import MetricsWebSocketSender
from scripts.localrun import PROJECT_DIR
from tests.conftest import RelayFactory
from tests.support import ListeningClient, RelayProcess, control, free_port, get_json, publish

Message = dict[str, Any]

METRICS = {"loss": 0.4, "accuracy": 0.8, "precision": 0.7, "recall": 0.6, "f1": 0.65, "auroc": 0.9}
CLI_TIMEOUT = 60  # seconds for one `python -m fl_stream replay` on a loaded machine


def write_run(path: Path, run_id: str = "replayed", rounds: int = 2) -> list[Message]:
    """Write the log of a small federated run as the sender does with the relay down."""
    with MetricsWebSocketSender(None, run_id=run_id, log_path=path) as sender:
        sender.send_training_mode(True, rounds, 2)
        for rnd in range(1, rounds + 1):
            clients = [{"client_id": c, "num_examples": 40, "metrics": METRICS} for c in "01"]
            sender.send_client_metrics(rnd, rounds, "train", clients)
            sender.send_round_metrics(rnd, rounds, METRICS, phase="train", num_clients=2)
            sender.send_round_metrics(rnd, rounds, METRICS, phase="evaluate", num_clients=2)
            sender.send_round_end(rnd, rounds, METRICS, METRICS)
        sender.send_training_end(run_id, {"best_round": rounds, "final_metrics": METRICS})
    return list(read_log(path))


def replay(log: Path, relay_url: str, *options: str) -> int:
    return main(["replay", str(log), "--relay-url", relay_url, *options])


def stored_run(relay: RelayProcess, run_id: str) -> dict[str, Any]:
    run: dict[str, Any] = get_json(f"{relay.http_url}/api/runs/{run_id}/metrics")
    return run


def same_messages(received: list[Message], logged: list[Message]) -> bool:
    """Whether ``received`` are the logged messages, in order (the relay adds only ``seq``)."""
    return [{k: v for k, v in m.items() if k != "seq"} for m in received] == logged


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fl_stream", *args],
        cwd=PROJECT_DIR,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
    )


# --------------------------------------------------------------------------- a good log


def test_a_replayed_log_appears_as_if_it_had_streamed_live(
    relay: RelayProcess, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    logged = write_run(tmp_path / "run.jsonl")
    with ListeningClient(relay.ws_url, subscribe=True) as dashboard:  # all runs, live
        assert replay(tmp_path / "run.jsonl", relay.ws_url) == 0
        dashboard.wait_for_type("training_end")
        live = dashboard.data_messages()

    run = stored_run(relay, "replayed")
    assert same_messages(run["messages"], logged)
    assert [m["seq"] for m in run["messages"]] == list(range(1, len(logged) + 1))
    assert (run["mode"], run["status"], run["message_count"]) == (
        "federated",
        "completed",
        len(logged),
    )
    assert run["training_end"]["best_round"] == 2
    assert live == run["messages"]
    out = capsys.readouterr().out
    assert f"{len(logged)} message(s), {len(logged)} acknowledged" in out


def test_replaying_twice_stores_nothing_twice(
    relay: RelayProcess, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    logged = write_run(tmp_path / "run.jsonl")
    assert replay(tmp_path / "run.jsonl", relay.ws_url) == 0
    first = stored_run(relay, "replayed")["messages"]
    with ListeningClient(relay.ws_url, subscribe=True) as dashboard:
        assert replay(tmp_path / "run.jsonl", relay.ws_url) == 0  # acked again, not stored
        dashboard.send(control("ping"))
        dashboard.wait_for_type("pong", count=2)  # the replay's broadcasts would be before it
        assert dashboard.data_messages() == []
    assert stored_run(relay, "replayed")["messages"] == first
    stats = get_json(f"{relay.http_url}/stats")
    assert (stats["messages_in"], stats["duplicates"]) == (len(logged), len(logged))


def test_a_log_the_relay_has_in_part_is_completed_in_order(
    relay: RelayProcess, tmp_path: Path
) -> None:
    logged = write_run(tmp_path / "run.jsonl")
    lines = (tmp_path / "run.jsonl").read_text().splitlines()
    publish(relay.ws_url, lines[:4])  # what the relay took live before it went down
    assert replay(tmp_path / "run.jsonl", relay.ws_url) == 0
    run = stored_run(relay, "replayed")
    assert same_messages(run["messages"], logged)
    assert [m["seq"] for m in run["messages"]] == list(range(1, len(logged) + 1))


# --------------------------------------------------------------------------- bad lines


def test_bad_lines_are_reported_by_number_and_skipped(
    relay: RelayProcess, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "run.jsonl"
    logged = write_run(log, rounds=1)
    good = log.read_text().splitlines()
    no_msg_id = make_message("epoch_end", {"epoch": 1, "phase": "val", "metrics": METRICS})
    huge = make_message("notes", {"text": "x" * 70_000}, run_id="replayed", msg_id="big-1")
    bad = [
        "not json",  # line 2
        json.dumps({"type": "epoch_end", "data": {}}),  # 3: no timestamp
        json.dumps(control("subscribe", run_id="replayed", since=0)),  # 4
        json.dumps(no_msg_id),  # 5
        "",  # 6: blank, ignored
        good[1],  # 7: repeats line 1's message: sent once
        json.dumps(huge),  # 8
    ]
    log.write_text("\n".join([good[0], *bad, *good[1:]]) + "\n")

    assert replay(log, relay.ws_url) == 1
    out, err = capsys.readouterr()
    reports = err.splitlines()
    assert [line.split(": skipped: ")[0] for line in reports[:-1]] == [
        f"{log}:{number}" for number in (2, 3, 4, 5, 8)
    ]
    assert "not valid JSON" in reports[0] and "timestamp: missing" in reports[1]
    assert "control message" in reports[2] and "no msg_id" in reports[3]
    assert "more than the relay's limit of 65536 bytes" in reports[4]
    assert reports[-1] == f"fl-stream replay: error: 5 line(s) of {log} are not stored by the relay"
    assert "1 repeated line(s) sent once" in out
    assert same_messages(stored_run(relay, "replayed")["messages"], logged)


def test_a_missing_or_empty_log_is_one_line_and_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"ws://127.0.0.1:{free_port()}"
    assert replay(tmp_path / "missing.jsonl", url) == 1
    (tmp_path / "empty.jsonl").write_text("\n")
    assert replay(tmp_path / "empty.jsonl", url) == 1
    assert capsys.readouterr().err.splitlines() == [
        f"fl-stream replay: error: cannot read {tmp_path / 'missing.jsonl'}: "
        "No such file or directory",
        f"fl-stream replay: error: {tmp_path / 'empty.jsonl'} holds no message to replay",
    ]


# --------------------------------------------------------------------------- the relay


def test_an_unreachable_relay_is_one_line_and_exit_1(tmp_path: Path) -> None:
    write_run(tmp_path / "run.jsonl")
    url = f"ws://127.0.0.1:{free_port()}"
    done = run_cli("replay", str(tmp_path / "run.jsonl"), "--relay-url", url)
    assert done.returncode == 1
    assert done.stdout == ""
    [line] = done.stderr.splitlines()
    assert line.startswith(f"fl-stream replay: error: cannot reach the relay at {url}: ")
    assert "ConnectionRefusedError" in line


def test_replay_does_not_import_torch(tmp_path: Path) -> None:
    probe = (
        "import sys; from fl_stream.cli import main; main(sys.argv[1:]); "
        "print(sorted({'torch', 'flwr'} & set(sys.modules)))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe, "replay", str(tmp_path / "missing.jsonl")],
        cwd=PROJECT_DIR,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
    )
    assert done.stdout.splitlines() == ["[]"], done.stderr


def test_a_relay_with_a_token(
    relay_factory: RelayFactory,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("FL_STREAM_RELAY_TOKEN", raising=False)
    relay = relay_factory(token="secret")
    logged = write_run(tmp_path / "run.jsonl", rounds=1)

    assert replay(tmp_path / "run.jsonl", relay.ws_url, "--token", "wrong") == 1
    assert "HTTP 401" in capsys.readouterr().err
    assert replay(tmp_path / "run.jsonl", relay.ws_url) == 1  # read-only: each one refused
    assert f"{len(logged)} rejected by the relay" in capsys.readouterr().out
    assert get_json(f"{relay.http_url}/api/runs")["runs"] == []

    monkeypatch.setenv("FL_STREAM_RELAY_TOKEN", "secret")
    assert replay(tmp_path / "run.jsonl", relay.ws_url) == 0
    assert same_messages(stored_run(relay, "replayed")["messages"], logged)


@pytest.fixture
def silent_relay() -> Iterator[str]:
    """A WebSocket server that reads every frame and never answers; yields its URL."""

    def swallow(connection: ServerConnection) -> None:
        for _ in connection:
            pass

    with serve(swallow, "127.0.0.1", free_port()) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        yield f"ws://127.0.0.1:{server.socket.getsockname()[1]}"
        server.shutdown()
        thread.join(10)


def test_a_relay_that_takes_nothing_ends_the_replay_after_the_timeout(
    silent_relay: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_run(tmp_path / "run.jsonl")
    assert replay(tmp_path / "run.jsonl", silent_relay, "--timeout", "0.5") == 1
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith(f"fl-stream replay: error: the relay at {silent_relay} took no message")
    assert "connected but not answering" in line and "replay again" in line
