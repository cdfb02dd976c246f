"""Soak: minutes of steady traffic through a real relay while dashboards join and leave.

A relay (``python -m relay``, throw-away database, its own port) receives ``--rate`` messages a
second from the real sender (:class:`~fl_stream.monitor.sender.MetricsWebSocketSender`), one
sender and one run per minute as training jobs would (``training_mode``, ``epoch_end`` after
``epoch_end``, ``training_end``, close). ``--dashboards`` dashboards stay subscribed to all
runs from the start; every ``--churn-every`` seconds another one joins the current run with
``since: 0`` (replay, then live), stays 1-5 s and leaves, half of them by closing, half by
dropping the socket.

Each minute it prints the relay's messages in and out (from ``/stats``), the p99 latency from
the sender's call to a steady dashboard's receipt, and the relay's resident memory; it prints
the relay's memory before any traffic and at the end. Then it checks everything: each message
a sender accepted is stored (the sender's ``close()`` settled it as acked), every steady
dashboard has every stored message of every run exactly once, and every joiner saw its run
from seq 1 with no gap or repeat. The last line is one JSON object with ``lost`` (accepted but
not stored, plus stored but missed by a steady dashboard, plus gaps in joiners' runs),
``duplicates``, ``p99_ms_max`` (worst minute), ``rss_start_mb``, ``rss_end_mb`` and
``rss_growth_mb``. Targets: 0 lost, RSS growth under 20 MB.

    .venv/bin/python benchmarks/soak.py [--minutes 1] [--rate 100] [--dashboards 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # scripts/, tests/

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from fl_stream.monitor.protocol import CONTROL_TYPES
from fl_stream.monitor.sender import MetricsWebSocketSender
from scripts.localrun import RelayProcess
from tests.support import get_json

MINUTE_S = 60.0
SETTLE_TIMEOUT = 30.0  # seconds for the last messages to reach every dashboard


# --------------------------------------------------------------------------- dashboards


@dataclass
class Seen:
    """What one dashboard received: per run, the seqs in arrival order."""

    seqs: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))
    latencies_ms: list[float] = field(default_factory=list)  # live epoch_end messages only


async def subscribe(
    url: str, run_id: str | None, since: int | None, seen: Seen
) -> tuple[ClientConnection, asyncio.Task[None]]:
    """Connect as a dashboard, subscribe, and read into ``seen`` in a task until closed.

    Returns once the relay's ``replay_end`` has arrived (the replay, if any, is in ``seen``).
    """
    connection = await connect(f"{url}/?subscribe", compression=None, max_size=2**20)
    request = {"run_id": run_id, "since": since}
    await connection.send(json.dumps({"type": "subscribe", "timestamp": _now(), "data": request}))
    subscribed = asyncio.Event()
    task = asyncio.create_task(_read(connection, seen, subscribed))
    await asyncio.wait_for(subscribed.wait(), SETTLE_TIMEOUT)
    return connection, task


async def _read(connection: ClientConnection, seen: Seen, subscribed: asyncio.Event) -> None:
    with suppress(ConnectionClosed):
        async for frame in connection:
            message = json.loads(frame)
            kind = message["type"]
            if kind == "replay_end":
                subscribed.set()
            if kind in CONTROL_TYPES:  # replay_end, run_summary, pong, ...
                continue
            seen.seqs[message["run_id"]].append(message["seq"])
            if kind == "epoch_end" and subscribed.is_set():
                sent_at = message["data"]["metrics"]["sent_at"]
                seen.latencies_ms.append((time.monotonic() - sent_at) * 1000)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())


@dataclass
class Churn:
    """Dashboards that join the current run with ``since: 0`` and leave again."""

    joins: int = 0
    gaps: int = 0  # seqs missing between 1 and the highest one a joiner saw
    duplicates: int = 0

    async def run(
        self, url: str, current_run: list[str], every: float, stop: asyncio.Event
    ) -> None:
        """Start a visit every ``every`` seconds until ``stop``; then wait for the last ones."""
        visits: set[asyncio.Task[None]] = set()
        while not stop.is_set():
            with suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), every)
            if not stop.is_set():
                visit = asyncio.create_task(self._visit(url, current_run[0]))
                visits.add(visit)
                visit.add_done_callback(visits.discard)
        await asyncio.gather(*visits)  # a failed visit (the relay refused it) fails the soak

    async def _visit(self, url: str, run_id: str) -> None:
        seen = Seen()
        connection, task = await subscribe(url, run_id, 0, seen)
        self.joins += 1
        await asyncio.sleep(random.uniform(1.0, 5.0))
        if random.random() < 0.5:
            await connection.close()
        else:
            connection.transport.abort()  # a tab killed, a network gone
        await task
        seqs = seen.seqs.get(run_id, [])
        self.duplicates += len(seqs) - len(set(seqs))
        self.gaps += (max(seqs) - len(set(seqs))) if seqs else 0


# --------------------------------------------------------------------------- the publisher


@dataclass
class Publisher:
    """One sender and one run per minute, ``rate`` ``epoch_end`` messages a second."""

    url: str
    log_dir: Path
    rate: float
    accepted: int = 0
    not_stored: int = 0  # accepted, but not acked when the sender closed
    runs: list[str] = field(default_factory=list)

    async def run(
        self, minutes: int, current_run: list[str], on_minute: Callable[[int], Awaitable[None]]
    ) -> None:
        stamp = time.strftime("%Y%m%dT%H%M%S")
        for minute in range(1, minutes + 1):
            run_id = f"soak-{stamp}-{minute}"
            self.runs.append(run_id)
            current_run[0] = run_id
            await self._one_run(run_id)
            await on_minute(minute)

    async def _one_run(self, run_id: str) -> None:
        sender = MetricsWebSocketSender(
            self.url, run_id=run_id, log_path=self.log_dir / f"{run_id}.jsonl"
        )
        sender.send_training_mode(False, 0, 0, num_epochs=int(MINUTE_S * self.rate))
        started = time.monotonic()
        interval, epoch = 1.0 / self.rate, 0
        while (now := time.monotonic()) - started < MINUTE_S:
            metrics = {"loss": 1.0 / (epoch + 1), "accuracy": 0.5, "sent_at": time.monotonic()}
            sender.send_epoch_end(epoch, "train", metrics)
            epoch += 1
            await asyncio.sleep(max(0.0, started + epoch * interval - now))
        sender.send_training_end(run_id, {"best_epoch": epoch - 1, "final_metrics": {}})
        await asyncio.to_thread(sender.close, 10.0)
        stats = sender.stats()
        self.accepted += stats.accepted
        self.not_stored += stats.accepted - stats.acked


# --------------------------------------------------------------------------- measuring


def rss_mb(pid: int) -> float:
    """The resident memory of process ``pid`` in MB (``VmRSS`` of ``/proc/<pid>/status``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def p99(values: list[float]) -> float:
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=100)[98]


async def soak(args: argparse.Namespace, relay: RelayProcess, log_dir: Path) -> dict[str, Any]:
    assert relay.pid is not None
    rss_start = rss_mb(relay.pid)
    print(f"relay RSS at start: {rss_start:.1f} MB", flush=True)
    steady = [Seen() for _ in range(args.dashboards)]
    connections = [await subscribe(relay.ws_url, None, None, seen) for seen in steady]
    stop_churn = asyncio.Event()
    current_run = ["none yet"]
    churn = Churn()
    churning = asyncio.create_task(
        churn.run(relay.ws_url, current_run, args.churn_every, stop_churn)
    )
    publisher = Publisher(relay.ws_url, log_dir, args.rate)
    minutes: list[dict[str, float]] = []
    last = {"messages_in": 0, "messages_out": 0}
    measured = [0] * len(steady)  # latencies of each steady dashboard already reported

    async def on_minute(minute: int) -> None:
        stats = await asyncio.to_thread(get_json, f"{relay.http_url}/stats")
        latencies = [ms for k, seen in enumerate(steady) for ms in seen.latencies_ms[measured[k] :]]
        measured[:] = [len(seen.latencies_ms) for seen in steady]
        row = {
            "minute": minute,
            "in": stats["messages_in"] - last["messages_in"],
            "out": stats["messages_out"] - last["messages_out"],
            "p99_ms": round(p99(latencies), 2),
            "rss_mb": round(rss_mb(relay.pid or 0), 1),
        }
        last.update(messages_in=stats["messages_in"], messages_out=stats["messages_out"])
        minutes.append(row)
        print(
            f"minute {minute:3}: in {row['in']:7,}  out {row['out']:8,}  "
            f"p99 {row['p99_ms']:7.2f} ms  relay RSS {row['rss_mb']:6.1f} MB  "
            f"joins so far {churn.joins}",
            flush=True,
        )

    await publisher.run(args.minutes, current_run, on_minute)
    stop_churn.set()
    await churning
    missed, duplicates = await _settle(relay, steady, publisher.runs)
    for connection, task in connections:
        await connection.close()
        await task
    await asyncio.sleep(1.0)  # let the relay release what the last dashboards held
    rss_end = rss_mb(relay.pid)
    print(f"relay RSS at end: {rss_end:.1f} MB", flush=True)
    lost = publisher.not_stored + missed + churn.gaps
    return {
        "minutes": args.minutes,
        "rate": args.rate,
        "dashboards": args.dashboards,
        "joins": churn.joins,
        "accepted": publisher.accepted,
        "lost": lost,
        "not_stored": publisher.not_stored,
        "missed_by_dashboards": missed,
        "gaps_in_joins": churn.gaps,
        "duplicates": duplicates + churn.duplicates,
        "p99_ms_max": max(row["p99_ms"] for row in minutes),
        "p99_ms_per_minute": [row["p99_ms"] for row in minutes],
        "rss_start_mb": round(rss_start, 1),
        "rss_end_mb": round(rss_end, 1),
        "rss_growth_mb": round(rss_end - rss_start, 1),
    }


async def _settle(relay: RelayProcess, steady: list[Seen], runs: list[str]) -> tuple[int, int]:
    """Wait until the steady dashboards have every stored message; return (missed, repeats)."""
    listed = (await asyncio.to_thread(get_json, f"{relay.http_url}/api/runs"))["runs"]
    stored = {run["run_id"]: run["last_seq"] for run in listed}

    def missing() -> int:
        return sum(
            max(0, stored[run_id] - len(set(seen.seqs.get(run_id, []))))
            for seen in steady
            for run_id in runs
        )

    deadline = time.monotonic() + SETTLE_TIMEOUT
    while missing() and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    repeats = sum(
        count - 1
        for seen in steady
        for seqs in seen.seqs.values()
        for count in Counter(seqs).values()
    )
    return missing(), repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=int, default=1, help="how long (default 1; soak: 10)")
    parser.add_argument("--rate", type=float, default=100.0, help="messages per second")
    parser.add_argument("--dashboards", type=int, default=5, help="dashboards that stay")
    parser.add_argument(
        "--churn-every", type=float, default=2.0, help="seconds between dashboards joining"
    )
    args = parser.parse_args()
    # SIGTERM (timeout, kill) unwinds like Ctrl-C, so the relay below is stopped too.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    with tempfile.TemporaryDirectory(prefix="fl-soak-") as tmp:
        relay = RelayProcess(Path(tmp) / "relay.db", args=["--log-level", "WARNING"]).start()
        try:
            figures = asyncio.run(soak(args, relay, Path(tmp) / "runs"))
        finally:
            relay.stop()
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
