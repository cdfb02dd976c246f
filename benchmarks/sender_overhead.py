"""How long a ``send_*`` call takes on the training thread.

Measures ``send_epoch_end`` (six metrics) on the calling thread, in one run:

  (a) MetricsWebSocketSender with a listening relay: the real relay (``python -m relay``) in
      its own process on 127.0.0.1, with a throw-away database;
  (b) MetricsWebSocketSender with nothing listening on its port;
  (c) the original design's pattern: ``asyncio.run(connect + send + close)`` per message,
      against the same relay.

Each pattern runs back to back, as (c) does (the headline figures), and (a) and (b) also run
paced at one call per millisecond: after a sleep the caller's caches are cold, as they are
after a training step, so every call costs more. A last row times what the caller would pay
if it encoded and appended the JSONL log line itself, which is why the sender's thread does.

Prints a table (median and p99 in microseconds) and, as its last line, one JSON object with
``median_us``, ``p99_us`` (a), ``down_median_us`` (b), ``naive_median_us`` (c), all back to
back, and the paced figures.

Run: ``.venv/bin/python benchmarks/sender_overhead.py [--calls 20000] [--paced-calls 2000]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # scripts/, tests/

import websockets

from fl_stream.monitor.protocol import encode_message, make_message
from fl_stream.monitor.runlog import JsonlLog
from fl_stream.monitor.sender import MetricsWebSocketSender
from scripts.localrun import RelayProcess, free_port

METRICS = {
    "loss": 0.31,
    "accuracy": 0.87,
    "precision": 0.85,
    "recall": 0.9,
    "f1": 0.87,
    "auroc": 0.93,
}
PACE_S = 0.001
ROUNDS = 5
FLUSH_TIMEOUT_S = 30.0


@contextmanager
def relay_process(workdir: Path) -> Iterator[str]:
    """Run the real relay on a free 127.0.0.1 port; yield its ws:// URL; stop it by pid."""
    relay = RelayProcess(workdir / "relay.db", args=["--log-level", "WARNING"]).start()
    try:
        yield relay.ws_url
    finally:
        relay.stop()


def time_calls(call: Callable[[int], object], calls: int, pace_s: float) -> list[float]:
    """Return each call's duration in microseconds; sleep ``pace_s`` between calls."""
    durations = []
    for i in range(calls):
        start = time.perf_counter_ns()
        call(i)
        durations.append((time.perf_counter_ns() - start) / 1000)
        if pace_s:
            time.sleep(pace_s)
    return durations


def sender_row(
    url: str, log_path: Path, calls: int, pace_s: float = 0.0, *, relay_up: bool
) -> list[float]:
    """Time ``send_epoch_end`` calls; with the relay up, check that all were delivered."""
    sender = MetricsWebSocketSender(
        url, run_id=log_path.stem, log_path=log_path, max_queue=max(10_000, calls)
    )
    try:
        time.sleep(0.3)  # let it connect (or fail to) before timing
        durations = time_calls(lambda i: sender.send_epoch_end(i, "train", METRICS), calls, pace_s)
        if relay_up and not sender.flush(FLUSH_TIMEOUT_S):
            raise RuntimeError(f"{log_path.stem}: messages not delivered: {sender.stats()}")
    finally:
        sender.close(timeout=FLUSH_TIMEOUT_S if relay_up else 0.5)
    return durations


def naive_row(url: str, calls: int) -> list[float]:
    """The original design: a new event loop and connection for every message."""

    async def send_once(message: str) -> None:
        async with websockets.connect(url) as websocket:
            await websocket.send(message)

    def call(i: int) -> None:
        message = make_message(
            "epoch_end", {"epoch": i, "phase": "train", "metrics": METRICS}, run_id="naive"
        )
        asyncio.run(send_once(json.dumps(message)))

    return time_calls(call, calls, 0)


def caller_side_log_row(log_dir: Path, name: str, calls: int) -> list[float]:
    """What a call would add if the calling thread encoded and appended the log line."""
    log = JsonlLog(log_dir / f"{name}.jsonl")
    messages = [
        make_message(
            "epoch_end",
            {"epoch": i, "phase": "train", "metrics": METRICS},
            run_id="caller-side",
            msg_id=f"x-{i}",
        )
        for i in range(calls)
    ]
    try:
        return time_calls(lambda i: log.write([encode_message(messages[i])]), calls, PACE_S)
    finally:
        log.close()


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=1000, method="inclusive")[int(q * 10) - 1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=20_000, help="back-to-back calls per row")
    parser.add_argument("--paced-calls", type=int, default=2000, help="paced calls per row")
    parser.add_argument("--naive-calls", type=int, default=200, help="timed calls for row (c)")
    args = parser.parse_args()

    # The outage warnings of row (b) are expected; keep the table readable.
    logging.getLogger("fl_stream.monitor.sender").setLevel(logging.ERROR)
    rows: dict[str, list[float]] = defaultdict(list)
    with tempfile.TemporaryDirectory(prefix="fl-stream-bench-") as tmp:
        workdir = Path(tmp)
        down_url = f"ws://127.0.0.1:{free_port()}"
        with relay_process(workdir) as url:
            # Rounds interleave the rows, so that the shared machine's changing load falls
            # on all of them alike.
            calls, paced_calls = args.calls // ROUNDS, args.paced_calls // ROUNDS
            for r in range(ROUNDS):
                rows["(a) relay up"] += sender_row(
                    url, workdir / f"up-{r}.jsonl", calls, relay_up=True
                )
                rows["(b) nothing listening"] += sender_row(
                    down_url, workdir / f"down-{r}.jsonl", calls, relay_up=False
                )
                rows["(a) relay up, paced 1/ms"] += sender_row(
                    url, workdir / f"up-paced-{r}.jsonl", paced_calls, PACE_S, relay_up=True
                )
                rows["(b) nothing listening, paced 1/ms"] += sender_row(
                    down_url, workdir / f"down-paced-{r}.jsonl", paced_calls, PACE_S, relay_up=False
                )
                rows["(c) naive asyncio.run per message"] += naive_row(
                    url, args.naive_calls // ROUNDS
                )
                rows["caller-side log write, paced (not used)"] += caller_side_log_row(
                    workdir, f"caller-side-{r}", args.paced_calls // ROUNDS
                )

    figures = {name: (statistics.median(v), percentile(v, 99), len(v)) for name, v in rows.items()}
    print(
        f"send_epoch_end on the calling thread; load average {os.getloadavg()[0]:.2f} "
        f"on {os.cpu_count()} CPUs (shared machine: figures are inflated by other work)"
    )
    print(f"{'pattern':40} {'calls':>6} {'median µs':>10} {'p99 µs':>10}")
    for name, (median, p99, count) in figures.items():
        print(f"{name:40} {count:6d} {median:10.1f} {p99:10.1f}")

    up, down = figures["(a) relay up"], figures["(b) nothing listening"]
    naive = figures["(c) naive asyncio.run per message"]
    up_paced, down_paced = (
        figures["(a) relay up, paced 1/ms"],
        figures["(b) nothing listening, paced 1/ms"],
    )
    caller_log = figures["caller-side log write, paced (not used)"]
    print(
        json.dumps(
            {
                "median_us": round(up[0], 2),
                "p99_us": round(up[1], 2),
                "down_median_us": round(down[0], 2),
                "down_p99_us": round(down[1], 2),
                "naive_median_us": round(naive[0], 2),
                "naive_p99_us": round(naive[1], 2),
                "speedup_vs_naive": round(naive[0] / up[0], 1),
                "paced_median_us": round(up_paced[0], 2),
                "paced_p99_us": round(up_paced[1], 2),
                "down_paced_median_us": round(down_paced[0], 2),
                "down_paced_p99_us": round(down_paced[1], 2),
                "caller_log_write_paced_median_us": round(caller_log[0], 2),
                "calls": args.calls,
                "paced_calls": args.paced_calls,
                "load_average": round(os.getloadavg()[0], 2),
            }
        )
    )


if __name__ == "__main__":
    main()
