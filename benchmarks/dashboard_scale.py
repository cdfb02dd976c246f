"""How the dashboard copes with a long federated run: first paint, live latency, long tasks, heap.

For each size (rounds x clients) it starts its own relay (``scripts/localrun.py``'s
RelayProcess, 127.0.0.1, a free port, a throw-away database) and stores a run shaped like
StreamingStrategy's output: ``training_mode`` (with a ``config``), then per round
``round_metrics`` + ``client_metrics`` for ``train`` and for ``evaluate`` (every client in
each, with train-time and the client mod's ``sys_*`` figures), then ``round_end``. Then, in
headless Debian chromium (Playwright), with a 1400 x 1000 viewport:

- **first paint** (cold: a new browser context; warm: the third page of a context that
  showed it before, Plotly in the HTTP and code caches): from navigation to ``/?run=<id>``
  until the loss chart holds the run's last round on every line, the whole stored run
  drawn; **whole page**: until ``data-last-seq`` says every chart and the client view are
  drawn (ms, the page's own clock);
- **live**: rounds published one at a time on an open connection (never connecting inside
  the timing), 50-150 ms apart; each is timed from the moment its first frame is written
  until the loss chart holds that round on every line (p50, p99), and until the whole page
  has drawn it (``live_all_p99``). The page checks every 5 ms. ``live_cpu_ms_per_round`` is
  the page's main-thread busy time per live round (CDP ``TaskDuration``), which a loaded
  machine inflates less than latency;
- **longest task**: the longest main-thread task after the first paint (``longtask``
  entries of a PerformanceObserver; 0 when none passed 50 ms);
- **heap**: the JS heap in use at the end, after a forced garbage collection (CDP
  ``HeapProfiler.collectGarbage`` + ``Runtime.getHeapUsage``), and before it.

Prints a table and, as its last line, one JSON object ``{"<rounds>x<clients>": {...}}`` with
those figures per size (``first_paint_ms``, ``first_paint_warm_ms``, ``whole_page_ms``,
``live_p50_ms``, ``live_p99_ms``, ``live_all_p99_ms``, ``live_cpu_ms_per_round``,
``longest_task_ms``, ``heap_mb``, ``heap_before_gc_mb``, ``stored_messages``,
``stored_mb``, ``live_rounds``, ``console_errors``, ``load_average``).

    .venv/bin/python benchmarks/dashboard_scale.py [--sizes 10x3,1000x100] [--live-rounds 20]

All four sizes with the default 20 live rounds take one to two minutes on a 2-core machine.
The figures are this machine's: on a shared, loaded machine they are inflated (the load
average during each size is in its figures).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # scripts/, tests/

from websockets.sync.client import ClientConnection, connect

from fl_stream.monitor.protocol import EVAL_BY_SERVER, METRIC_NAMES, utc_timestamp
from scripts.localrun import RelayProcess

DEFAULT_SIZES = "10x3,100x20,1000x100,5000x10"
CHROMIUM = os.environ.get("FL_STREAM_CHROMIUM", "/usr/lib/chromium/chromium")
RUN_ID = "scale"
LINES = 3  # the loss chart's lines: fit, eval and central eval
ACK_BATCH = 200  # frames sent before their acks are read: the relay's buffers stay small
PAINT_TIMEOUT_MS = 120_000
LIVE_TIMEOUT_MS = 30_000
# The page checks every 5 ms for the awaited round, and notes when it first saw it on every
# line of the loss chart (__seenAt) and when the page had drawn all of it (data-last-seq,
# every chart and the client view: __allAt).
WATCH = """
([rounds, lines, seq]) => {
  const plot = document.querySelector('[data-metric="loss"]');
  const traces = plot?.data ?? [];
  const ends = traces.map((trace) => trace.x[trace.x.length - 1] ?? 0);
  const drawn = traces.length >= lines && ends.every((x) => x >= rounds);
  if (drawn) window.__seenAt ??= Date.now();
  if (Number(document.body.dataset.lastSeq) >= seq) window.__allAt ??= Date.now();
  return window.__seenAt !== undefined && window.__allAt !== undefined;
}
"""
LONG_TASKS = """
window.__longTasks = [];
new PerformanceObserver((list) => {
  for (const entry of list.getEntries()) window.__longTasks.push([entry.startTime, entry.duration]);
}).observe({ type: "longtask", buffered: true });
"""
Message = dict[str, Any]


# --------------------------------------------------------------------------- the run


class RunShape:
    """The messages of one federated run, as StreamingStrategy sends them (deterministic)."""

    def __init__(self, rounds: int, clients: int, total_rounds: int) -> None:
        self.rounds = rounds
        self.clients = clients
        self.total_rounds = total_rounds
        self.rng = random.Random(rounds * 1000 + clients)

    def start(self) -> list[Message]:
        config = {
            "strategy": "FedAvg",
            "learning-rate": 0.01,
            "num-supernodes": self.clients,
            "partitioning": "dirichlet",
        }
        data = {
            "is_federated": True,
            "num_rounds": self.total_rounds,
            "num_clients": self.clients,
            "config": config,
        }
        return [self._message("training_mode", data)]

    def round(self, rnd: int) -> list[Message]:
        """round_metrics + client_metrics for train, then for evaluate, then round_end."""
        head = {"round": rnd, "total_rounds": self.total_rounds}
        messages = []
        averages = {}
        for phase in ("train", "evaluate"):
            rows = [self._client(rnd, client, phase) for client in range(self.clients)]
            averages[phase] = {
                name: statistics.fmean(row["metrics"][name] for row in rows)
                for name in rows[0]["metrics"]
            }
            messages.append(
                self._message(
                    "round_metrics",
                    {
                        **head,
                        "phase": phase,
                        "num_clients": self.clients,
                        "metrics": averages[phase],
                    },
                )
            )
            messages.append(
                self._message("client_metrics", {**head, "phase": phase, "clients": rows})
            )
        end = {
            **head,
            "fit_metrics": averages["train"],
            "eval_metrics": self._scores(rnd, -0.01),
            "eval_source": EVAL_BY_SERVER,
        }
        messages.append(self._message("round_end", end))
        return messages

    def _scores(self, rnd: int, shift: float) -> dict[str, float]:
        accuracy = 0.55 + 0.4 * (1 - 1 / (1 + rnd / 20)) + shift + self.rng.uniform(-0.01, 0.01)
        loss = 1.2 / (1 + rnd / 15) + 0.05 - shift + self.rng.uniform(-0.01, 0.01)
        scores = (accuracy, accuracy - 0.02, accuracy + 0.01, accuracy - 0.005, accuracy + 0.03)
        return dict(zip(METRIC_NAMES, (loss, *scores), strict=True))

    def _client(self, rnd: int, client: int, phase: str) -> Message:
        metrics = self._scores(rnd, self.rng.uniform(-0.03, 0.03))
        wall = self.rng.uniform(2.0, 2.6) * (2.5 if client == 1 else 1.0)
        if phase == "train":
            metrics["train-time"] = wall
        metrics["sys_wall_time"] = wall + 0.1
        metrics["sys_examples_per_second"] = 640 / wall
        metrics["sys_peak_rss_mb"] = 900 + 3 * client + self.rng.uniform(0, 5)
        return {
            "client_id": str(client),
            "node_id": str(1_000_000_000_000_000_000 + client),
            "num_examples": 600 + 7 * client,
            "metrics": metrics,
            "device": "cpu",
        }

    def _message(self, kind: str, data: Message) -> Message:
        return {"type": kind, "timestamp": utc_timestamp(), "data": data, "run_id": RUN_ID}


class Publisher:
    """One open publishing connection; acks are read in batches so the relay never waits."""

    def __init__(self, ws_url: str) -> None:
        self.connection: ClientConnection = connect(
            f"{ws_url}/?publish", compression=None, max_size=None, legacy=True
        )
        self.unacked = 0
        self.bytes_sent = 0

    def send(self, messages: list[Message]) -> None:
        for message in messages:
            frame = json.dumps(message)
            self.connection.send(frame)
            self.bytes_sent += len(frame)
            self.unacked += 1
            if self.unacked >= ACK_BATCH:
                self.read_acks()

    def read_acks(self) -> None:
        while self.unacked:
            reply = json.loads(self.connection.recv(30))
            if reply["type"] == "rejected":
                raise RuntimeError(f"the relay refused a message: {reply['data']['reason']}")
            if reply["type"] == "ack":
                self.unacked -= 1

    def close(self) -> None:
        self.read_acks()
        self.connection.close()


# --------------------------------------------------------------------------- measuring


@contextmanager
def relay_process(workdir: Path) -> Iterator[RelayProcess]:
    """The real relay on a free 127.0.0.1 port with its own database; stopped by pid."""
    relay = RelayProcess(workdir / "relay.db", args=["--log-level", "WARNING"]).start()
    try:
        yield relay
    finally:
        relay.stop()


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100), nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


def open_page(
    context: Any, url: str, rounds: int, seq: int, errors: list[str]
) -> tuple[Any, float, float]:
    """A new tab on ``url``; returns it, its first paint and its whole-page paint (ms)."""
    page = context.new_page()
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.add_init_script(LONG_TASKS)
    page.goto(url)
    page.wait_for_function(WATCH, arg=[rounds, LINES, seq], polling=5, timeout=PAINT_TIMEOUT_MS)
    painted = page.evaluate(
        "[window.__seenAt, window.__allAt].map((t) => t - performance.timeOrigin)"
    )
    return page, painted[0], painted[1]


def main_thread_ms(cdp: Any) -> float:
    """The page's main-thread busy time so far (CDP Performance TaskDuration), in ms."""
    metrics = cdp.send("Performance.getMetrics")["metrics"]
    return 1000 * next(m["value"] for m in metrics if m["name"] == "TaskDuration")


def measure(browser: Any, rounds: int, clients: int, live_rounds: int, workdir: Path) -> dict:
    """Store a rounds x clients run, open the page on it, then publish live rounds."""
    shape = RunShape(rounds, clients, rounds + live_rounds)
    with relay_process(workdir) as relay:
        publisher = Publisher(relay.ws_url)
        seq = len(shape.start())
        publisher.send(shape.start())
        for rnd in range(1, rounds + 1):
            batch = shape.round(rnd)
            seq += len(batch)
            publisher.send(batch)
        publisher.read_acks()
        stored, stored_bytes = seq, publisher.bytes_sent
        url = f"{relay.http_url}/?run={RUN_ID}"

        errors: list[str] = []
        # Warm: a browser that has shown the page before (Plotly in its caches).
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        for _ in range(2):
            page, warm_paint, _ = open_page(context, url, rounds, seq, errors)
            page.close()
        context.close()
        # Cold: a browser that never saw the page.
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        try:
            page, first_paint, whole_paint = open_page(context, url, rounds, seq, errors)
            painted_at = page.evaluate("performance.now()")
            cdp = context.new_cdp_session(page)
            cdp.send("Performance.enable")
            busy_before = main_thread_ms(cdp)

            latencies, whole = [], []
            for rnd in range(rounds + 1, rounds + live_rounds + 1):
                batch = shape.round(rnd)
                seq += len(batch)
                page.evaluate("delete window.__seenAt; delete window.__allAt")
                sent = time.time() * 1000
                publisher.send(batch)
                page.wait_for_function(
                    WATCH, arg=[rnd, LINES, seq], polling=5, timeout=LIVE_TIMEOUT_MS
                )
                seen, drawn = page.evaluate("[window.__seenAt, window.__allAt]")
                latencies.append(seen - sent)
                whole.append(drawn - sent)
                publisher.read_acks()
                time.sleep(random.uniform(0.05, 0.15))  # off the frame clock's beat
            publisher.close()
            busy = main_thread_ms(cdp) - busy_before

            tasks = page.evaluate("window.__longTasks")
            longest = max((d for start, d in tasks if start >= painted_at), default=0.0)
            before_gc = cdp.send("Runtime.getHeapUsage")["usedSize"]
            cdp.send("HeapProfiler.collectGarbage")
            after_gc = cdp.send("Runtime.getHeapUsage")["usedSize"]
            if errors:
                print(f"  {rounds}x{clients}: console errors: {errors[:3]}", file=sys.stderr)
        finally:
            context.close()
    return {
        "first_paint_ms": round(first_paint),
        "first_paint_warm_ms": round(warm_paint),
        "whole_page_ms": round(whole_paint),
        "live_p50_ms": round(statistics.median(latencies), 1) if latencies else None,
        "live_p99_ms": round(percentile(latencies, 99), 1) if latencies else None,
        "live_all_p99_ms": round(percentile(whole, 99), 1) if whole else None,
        "live_cpu_ms_per_round": round(busy / max(1, len(latencies)), 1),
        "longest_task_ms": round(longest),
        "heap_mb": round(after_gc / 2**20, 1),
        "heap_before_gc_mb": round(before_gc / 2**20, 1),
        "stored_messages": stored,
        "stored_mb": round(stored_bytes / 1e6, 1),
        "live_rounds": len(latencies),
        "console_errors": len(errors),
        "load_average": round(os.getloadavg()[0], 2),
    }


def parse_sizes(text: str) -> list[tuple[int, int]]:
    sizes = []
    for part in text.split(","):
        rounds, _, clients = part.strip().partition("x")
        sizes.append((int(rounds), int(clients)))
    return sizes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sizes", default=DEFAULT_SIZES, help=f"ROUNDSxCLIENTS,... ({DEFAULT_SIZES})"
    )
    parser.add_argument(
        "--live-rounds", type=int, default=20, help="rounds published live per size"
    )
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    results = {}
    with sync_playwright() as playwright, tempfile.TemporaryDirectory(prefix="fl-dash-") as tmp:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=[
                "--disable-background-networking",
                "--disable-component-update",
                "--no-first-run",
            ],
        )
        try:
            for rounds, clients in parse_sizes(args.sizes):
                name = f"{rounds}x{clients}"
                results[name] = measure(
                    browser, rounds, clients, args.live_rounds, Path(tmp) / name
                )
                print(f"  {name}: {results[name]}", file=sys.stderr, flush=True)
        finally:
            browser.close()

    print(
        f"dashboard at scale, headless chromium, {args.live_rounds} live rounds a size, "
        f"{os.cpu_count()} CPUs (a shared machine inflates the figures; load in the last column)"
    )
    columns = {
        "size": None,
        "messages": "stored_messages",
        "MB": "stored_mb",
        "paint ms": "first_paint_ms",
        "warm ms": "first_paint_warm_ms",
        "whole ms": "whole_page_ms",
        "live p50": "live_p50_ms",
        "live p99": "live_p99_ms",
        "all p99": "live_all_p99_ms",
        "cpu/round": "live_cpu_ms_per_round",
        "long task": "longest_task_ms",
        "heap MB": "heap_mb",
        "load": "load_average",
    }
    print("  ".join(f"{name:>9}" for name in columns))
    for size, figures in results.items():
        cells = [size, *(figures[key] for key in list(columns.values())[1:])]
        print("  ".join(f"{str(cell):>9}" for cell in cells))
    print(json.dumps(results))


if __name__ == "__main__":
    main()
