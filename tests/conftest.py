"""Shared fixtures: a real relay process per test, on a free 127.0.0.1 port with its own database.

Fixtures:
    relay_factory: ``relay_factory(token=None, args=(), env=None) -> RelayProcess`` starts a
        relay (waits for ``/healthz``) with those options; every relay it started is stopped
        at teardown (SIGTERM, then SIGKILL by pid if it hangs).
    relay: one started relay with default options (no token).
    make_sender: ``make_sender(url, **options) -> MetricsWebSocketSender`` with a log under
        tmp_path and quick reconnects; every sender it made is closed at teardown.

A :class:`scripts.localrun.RelayProcess` exposes ``ws_url``, ``http_url``, ``port``, ``db_path``,
``pid``, ``log_path``, ``restart()`` (same port and database), ``stop()`` and ``kill()``. See
``tests/support.py`` for :class:`~tests.support.ListeningClient` (a dashboard stand-in),
:func:`~tests.support.publish` and the HTTP helpers.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from fl_stream.monitor.sender import MetricsWebSocketSender
from tests.support import RelayProcess

# Every Flower simulation in the test session stays on loopback and installs nothing.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")

RelayFactory = Callable[..., RelayProcess]


@pytest.fixture
def relay_factory(tmp_path: Path) -> Iterator[RelayFactory]:
    """Start relays with options, e.g. ``relay_factory(token="t", args=["--log-level", "DEBUG"])``.

    Options are those of :class:`scripts.localrun.RelayProcess`: ``token``, ``args``, ``env``.
    """
    started: list[RelayProcess] = []

    def start(**options: object) -> RelayProcess:
        relay = RelayProcess(tmp_path / f"relay-{len(started)}" / "relay.db", **options)  # type: ignore[arg-type]
        started.append(relay)
        return relay.start()

    yield start
    for relay in started:
        relay.stop()


@pytest.fixture
def relay(relay_factory: RelayFactory) -> RelayProcess:
    """A running relay with default options (anyone may publish)."""
    return relay_factory()


@pytest.fixture
def make_sender(tmp_path: Path) -> Iterator[Callable[..., MetricsWebSocketSender]]:
    """Build senders that log under tmp_path, reconnect quickly, and are closed at teardown."""
    senders: list[MetricsWebSocketSender] = []

    def make(url: str | None, **options: Any) -> MetricsWebSocketSender:
        options.setdefault("log_path", tmp_path / f"sender-{len(senders)}.jsonl")
        options.setdefault("backoff_initial", 0.05)
        options.setdefault("backoff_max", 0.2)
        sender = MetricsWebSocketSender(url, **options)
        senders.append(sender)
        return sender

    yield make
    for sender in senders:
        sender.close(timeout=1.0)
