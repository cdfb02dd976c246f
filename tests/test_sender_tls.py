"""The sender and ``fl-stream replay`` over ``wss://``, against a relay stand-in with a
self-signed certificate generated here (``cryptography``, which Flower already depends on).

With the certificate as its CA file (argument or ``$FL_STREAM_RELAY_CA_FILE``) the sender
delivers; without it the connection is refused, logged once, and training goes on (the run log
keeps everything); a CA file that cannot be read is one error and the sender writes the log only.
"""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from fl_stream.cli import main
from fl_stream.monitor.connection import RELAY_CA_FILE_ENV
from fl_stream.monitor.runlog import read_log
from fl_stream.monitor.sender import MetricsWebSocketSender
from tests.support import free_port, self_signed_certificate
from tests.test_sender import AckServer

WAIT = 10.0  # bounded waits, generous for a loaded 2-core machine
METRICS = {"loss": 0.25, "accuracy": 0.9}
LOGGER = "fl_stream.monitor.sender"

SenderFactory = Callable[..., MetricsWebSocketSender]


# --------------------------------------------------------------------------- a TLS relay stand-in


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and localhost: (certificate file, key file)."""
    return self_signed_certificate(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def server(certificate: tuple[Path, Path]) -> Iterator[AckServer]:
    """A ``wss://`` relay stand-in that stores each (run_id, msg_id) once and acks it."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*certificate)
    with AckServer(tls=context) as running:
        yield running


def send_epochs(sender: MetricsWebSocketSender, count: int) -> None:
    for epoch in range(count):
        assert sender.send_epoch_end(epoch, "train", METRICS)


def wait_until(condition: Callable[[], bool], timeout: float = WAIT) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def messages_of(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno == level]


# --------------------------------------------------------------------------- the sender


def test_the_sender_delivers_over_wss_with_the_ca_file(
    server: AckServer, certificate: tuple[Path, Path], make_sender: SenderFactory
) -> None:
    sender = make_sender(server.url, run_id="tls", ca_file=certificate[0])
    send_epochs(sender, 20)
    assert sender.close(WAIT)
    assert [m["data"]["epoch"] for m in server.stored] == list(range(20))
    assert sender.stats().acked == 20


def test_the_ca_file_can_come_from_the_environment(
    server: AckServer,
    certificate: tuple[Path, Path],
    make_sender: SenderFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(RELAY_CA_FILE_ENV, str(certificate[0]))
    sender = make_sender(server.url, run_id="tls-env")
    send_epochs(sender, 3)
    assert sender.close(WAIT)
    assert len(server.stored) == 3


def test_without_the_ca_file_the_relay_is_refused_and_training_goes_on(
    server: AckServer,
    make_sender: SenderFactory,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.delenv(RELAY_CA_FILE_ENV, raising=False)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        sender = make_sender(server.url, run_id="untrusted")
        send_epochs(sender, 5)  # accepted: the calls neither block nor raise
        assert wait_until(lambda: bool(messages_of(caplog, logging.WARNING)))
        assert sender.close(timeout=0.2) is False
    [warning] = messages_of(caplog, logging.WARNING)[:1]
    assert "TLS certificate not trusted" in warning
    assert RELAY_CA_FILE_ENV in warning and "ca_file=" in warning
    assert server.stored == []
    assert [m["data"]["epoch"] for m in read_log(sender.log_path)] == list(range(5))


@pytest.mark.parametrize(
    ("make_ca_file", "error"),
    [
        (lambda folder: folder / "missing.pem", "not found"),
        (lambda folder: folder, "cannot read CA file"),
        (lambda folder: _written(folder / "notes.txt", "not a certificate"), "no PEM certificate"),
    ],
    ids=["missing", "a-folder", "not-pem"],
)
def test_a_bad_ca_file_is_one_error_and_the_log_keeps_everything(
    server: AckServer,
    make_sender: SenderFactory,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    make_ca_file: Callable[[Path], Path],
    error: str,
) -> None:
    ca_file = make_ca_file(tmp_path)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        sender = make_sender(server.url, run_id="bad-ca", ca_file=ca_file)
        send_epochs(sender, 3)
        assert sender.close(WAIT)  # log only: nothing waits for a relay
    [line] = messages_of(caplog, logging.ERROR)
    assert error in line and str(ca_file) in line and "run log only" in line
    assert "\n" not in line
    assert sender.websocket_uri is None
    assert len(list(read_log(sender.log_path))) == 3
    assert server.stored == []


def test_a_ca_file_for_a_ws_url_is_named_as_unused(
    make_sender: SenderFactory, certificate: tuple[Path, Path], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        make_sender(f"ws://127.0.0.1:{free_port()}", ca_file=certificate[0])
    assert any("wss:// relays only" in m for m in messages_of(caplog, logging.WARNING))


def _written(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# --------------------------------------------------------------------------- replay


def test_replay_uploads_over_wss_with_the_ca_file(
    server: AckServer,
    certificate: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    log_path = tmp_path / "run.jsonl"
    with MetricsWebSocketSender(None, run_id="tls-replay", log_path=log_path) as sender:
        send_epochs(sender, 4)
    command = ["replay", str(log_path), "--relay-url", server.url, "--ca-file", str(certificate[0])]
    assert main(command) == 0
    assert [m["msg_id"] for m in server.stored] == [m["msg_id"] for m in read_log(log_path)]
    assert "4 acknowledged" in capsys.readouterr().out


def test_replay_without_the_ca_file_is_one_error(
    server: AckServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.delenv(RELAY_CA_FILE_ENV, raising=False)
    log_path = tmp_path / "run.jsonl"
    with MetricsWebSocketSender(None, run_id="tls-replay", log_path=log_path) as sender:
        send_epochs(sender, 2)
    assert main(["replay", str(log_path), "--relay-url", server.url]) == 1
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("fl-stream replay: error: cannot reach the relay at wss://")
    assert "TLS certificate not trusted" in line
    assert server.stored == []
