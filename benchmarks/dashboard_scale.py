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
``stored_mb``, ``live_rounds``, ``console_errors``, ``load_average``, ``repeats``, and each
run's ``first_paint_ms_runs`` and ``live_p99_ms_runs``).

With ``--repeat N`` each size is measured N times, the sizes alternating: live p50/p99 are
over every live round of every run, the longest task and the heap are the worst run's, each
other figure is its median over the runs. One run's p99 of 20 rounds is its slowest round, which one
hiccup of a shared machine decides.

    .venv/bin/python benchmarks/dashboard_scale.py [--sizes 10x3,1000x100] [--live-rounds 20]
        [--repeat 3]

**Progress mode** (``--progress-clients 100 --progress-seconds 20``, instead of the sizes): a
federated run (one round stored) is opened in the page, then a publisher thread on one
connection sends ``client_progress`` for round 2 from every client, PROGRESS_RATE (2) a second
each, paced evenly (200 messages a second for 100 clients), for the given seconds. The page
notes (a MutationObserver on the "Round in progress" rows) when a sampled client's epoch/batch
cell first shows each message's text; ``update_p50_ms``/``update_p99_ms`` are from publish to
that DOM update. Also long tasks over 50 ms after the page loaded (count, the longest, how many
over 200 ms), main-thread busy time and the heap after a forced garbage collection. Prints a
table and, as its last line, one JSON object (``progress_clients``, ``messages``,
``longest_task_ms``, ``long_tasks_over_200ms``, ``update_p50_ms``, ``update_p99_ms``,
``heap_mb``, ...).

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
import threading
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
PROGRESS_RATE = 2.0  # client_progress messages a second per client (progress-interval 0.5 s)
PROGRESS_BATCHES = 20  # batches per local epoch: each message is the next batch
PROGRESS_SAMPLE = 10  # every 10th client's updates are timed
# The page notes when a sampled client's epoch cell (its 4th) first shows a text.
PROGRESS_WATCH = """
(sample) => {
  window.__progressSeen = {};
  const body = document.querySelector("#round-progress-rows");
  new MutationObserver((records) => {
    const now = Date.now();
    for (const record of records) {
      const td = record.target.nodeType === 1 ? record.target : record.target.parentElement;
      const tr = td?.closest("tr[data-client]");
      if (!tr || Number(tr.dataset.client) % sample || tr.children[3] !== td) continue;
      window.__progressSeen[`${tr.dataset.client}|${td.textContent}`] ??= now;
    }
  }).observe(body, { childList: true, subtree: true, characterData: true });
}
"""


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
        "_latencies": latencies,  # pooled across repeats (see combine), then dropped
        "_whole": whole,
        "console_errors": len(errors),
        "load_average": round(os.getloadavg()[0], 2),
    }


def combine(runs: list[dict]) -> dict:
    """One size's figures over repeated runs.

    Live p50/p99 over every live round of every run; the worst long task and heap; each other
    figure's median over the runs (each its own: they may come from different runs); each
    run's first paint and live p99 listed.
    """
    latencies = [x for run in runs for x in run["_latencies"]]
    whole = [x for run in runs for x in run["_whole"]]
    figures = {
        key: statistics.median_low(run[key] for run in runs)
        for key in runs[0]
        if not key.startswith("_") and isinstance(runs[0][key], int | float)
    }
    figures.update(
        live_p50_ms=round(statistics.median(latencies), 1) if latencies else None,
        live_p99_ms=round(percentile(latencies, 99), 1) if latencies else None,
        live_all_p99_ms=round(percentile(whole, 99), 1) if whole else None,
        live_rounds=len(latencies),
        longest_task_ms=max(run["longest_task_ms"] for run in runs),
        heap_mb=max(run["heap_mb"] for run in runs),
        heap_before_gc_mb=max(run["heap_before_gc_mb"] for run in runs),
        console_errors=sum(run["console_errors"] for run in runs),
        repeats=len(runs),
        first_paint_ms_runs=[run["first_paint_ms"] for run in runs],
        live_p99_ms_runs=[run["live_p99_ms"] for run in runs],
    )
    return figures


def progress_message(client: int, k: int, epochs: int, rng: random.Random) -> Message:
    """Client ``client``'s k-th client_progress of round 2 (k from 0): the next batch."""
    epoch, batch = k // PROGRESS_BATCHES + 1, k % PROGRESS_BATCHES + 1
    data = {
        "round": 2,
        "phase": "train",
        "client_id": str(client),
        "epoch": epoch,
        "num_epochs": epochs,
        "batch": batch,
        "num_batches": PROGRESS_BATCHES,
        "examples_per_second": rng.uniform(200, 400),
        "metrics": {"loss": 1.5 / (1 + k / 10) + rng.uniform(0, 0.05)},
    }
    return {"type": "client_progress", "timestamp": utc_timestamp(), "data": data, "run_id": RUN_ID}


def epoch_text(data: Message) -> str:
    """What the row's epoch cell shows for a client_progress (progress.js #updateRows)."""
    return f"{data['epoch']}/{data['num_epochs']} · batch {data['batch']}/{data['num_batches']}"


def measure_progress(browser: Any, clients: int, seconds: float, workdir: Path) -> dict:
    """Open a federated run, then stream client_progress from ``clients`` clients, paced."""
    shape = RunShape(1, clients, 3)
    per_client = max(1, round(seconds * PROGRESS_RATE))
    epochs = -(-per_client // PROGRESS_BATCHES)
    with relay_process(workdir) as relay:
        publisher = Publisher(relay.ws_url)
        stored = shape.start() + shape.round(1)
        publisher.send(stored)
        publisher.read_acks()
        errors: list[str] = []
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        try:
            page = context.new_page()
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.add_init_script(LONG_TASKS)
            page.goto(f"{relay.http_url}/?run={RUN_ID}")
            page.wait_for_function(
                "(seq) => Number(document.body.dataset.lastSeq) >= seq",
                arg=len(stored),
                polling=20,
                timeout=PAINT_TIMEOUT_MS,
            )
            page.evaluate(PROGRESS_WATCH, PROGRESS_SAMPLE)
            cdp = context.new_cdp_session(page)
            cdp.send("Performance.enable")
            busy_before = main_thread_ms(cdp)
            loaded_at = page.evaluate("performance.now()")

            sent: dict[str, float] = {}  # "client|epoch text" -> publish time (ms, epoch)
            behind: list[float] = []  # how late each message left (ms)
            rng = random.Random(clients)

            def publish() -> None:
                interval = 1 / (clients * PROGRESS_RATE)
                start = time.monotonic()
                for i in range(per_client * clients):
                    client, k = i % clients, i // clients
                    message = progress_message(client, k, epochs, rng)
                    due = start + i * interval
                    wait = due - time.monotonic()
                    if wait > 0:
                        time.sleep(wait)
                    behind.append(max(0.0, -wait) * 1000)
                    if client % PROGRESS_SAMPLE == 0:
                        sent[f"{client}|{epoch_text(message['data'])}"] = time.time() * 1000
                    publisher.send([message])
                publisher.close()

            began = time.monotonic()
            thread = threading.Thread(target=publish, name="progress-publisher")
            thread.start()
            thread.join()
            elapsed = time.monotonic() - began
            time.sleep(1.0)  # the last updates land
            busy = main_thread_ms(cdp) - busy_before
            seen = page.evaluate("window.__progressSeen")
            tasks = [d for start, d in page.evaluate("window.__longTasks") if start >= loaded_at]
            rows = page.evaluate(
                "document.querySelectorAll('#round-progress-rows tr[data-client]').length"
            )
            cdp.send("HeapProfiler.collectGarbage")
            heap = cdp.send("Runtime.getHeapUsage")["usedSize"]
            if errors:
                print(f"  progress: console errors: {errors[:3]}", file=sys.stderr)
        finally:
            context.close()
    latencies = [seen[key] - at for key, at in sent.items() if key in seen]
    return {
        "progress_clients": clients,
        "messages": per_client * clients,
        "seconds": round(elapsed, 1),
        "rate_per_s": round(per_client * clients / elapsed),
        "publish_late_p99_ms": round(percentile(behind, 99), 1),
        "rows": rows,
        "sampled": len(sent),
        "sampled_seen": len(latencies),
        "update_p50_ms": round(statistics.median(latencies), 1) if latencies else None,
        "update_p99_ms": round(percentile(latencies, 99), 1) if latencies else None,
        "update_max_ms": round(max(latencies), 1) if latencies else None,
        "long_tasks": len(tasks),
        "long_tasks_over_200ms": sum(d > 200 for d in tasks),
        "longest_task_ms": round(max(tasks, default=0.0)),
        "cpu_ms_per_s": round(busy / elapsed, 1),
        "heap_mb": round(heap / 2**20, 1),
        "console_errors": len(errors),
        "load_average": round(os.getloadavg()[0], 2),
    }


def print_progress(figures: dict) -> None:
    print(
        f"round-in-progress panel, headless chromium, {os.cpu_count()} CPUs "
        "(a shared machine inflates the figures; load in the last column)"
    )
    columns = {
        "clients": "progress_clients",
        "messages": "messages",
        "msg/s": "rate_per_s",
        "seen": "sampled_seen",
        "upd p50": "update_p50_ms",
        "upd p99": "update_p99_ms",
        "upd max": "update_max_ms",
        "long>50": "long_tasks",
        "long>200": "long_tasks_over_200ms",
        "longest": "longest_task_ms",
        "cpu ms/s": "cpu_ms_per_s",
        "heap MB": "heap_mb",
        "load": "load_average",
    }
    print("  ".join(f"{name:>9}" for name in columns))
    print("  ".join(f"{str(figures[key]):>9}" for key in columns.values()))
    print(json.dumps(figures))


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
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="measure each size this many times (sizes alternate): live p50/p99 pool every "
        "run's rounds, each other figure is its median over the runs (a shared machine is noisy)",
    )
    parser.add_argument(
        "--progress-clients",
        type=int,
        default=0,
        help="instead of the sizes: stream client_progress from this many clients",
    )
    parser.add_argument(
        "--progress-seconds", type=float, default=20, help="how long (progress mode)"
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
            if args.progress_clients:
                figures = measure_progress(
                    browser, args.progress_clients, args.progress_seconds, Path(tmp) / "progress"
                )
                print_progress(figures)
                return
            runs: dict[str, list[dict]] = {}
            for repeat in range(args.repeat):
                for rounds, clients in parse_sizes(args.sizes):
                    name = f"{rounds}x{clients}"
                    run = measure(
                        browser, rounds, clients, args.live_rounds, Path(tmp) / f"{name}-{repeat}"
                    )
                    runs.setdefault(name, []).append(run)
                    shown = {key: value for key, value in run.items() if not key.startswith("_")}
                    print(f"  {name}: {shown}", file=sys.stderr, flush=True)
            results = {name: combine(size_runs) for name, size_runs in runs.items()}
        finally:
            browser.close()

    print(
        f"dashboard at scale, headless chromium, {args.live_rounds} live rounds a size, "
        f"{args.repeat} run(s) of each, "
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
