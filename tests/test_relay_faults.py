"""The relay under faults: hostile input, stalled dashboards, heavy reads, a full or read-only disk.

Real relay processes on 127.0.0.1, real sockets, every wait bounded. The slow tests carry the
``faults`` marker (``pytest -m "not faults"`` leaves them out). ``docs/relay.md`` lists the
guarantee each test proves and the bounds they check.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect as connect_async
from websockets.sync.client import connect

from fl_stream.monitor.protocol import make_message
from relay.replay import STALL_TIMEOUT
from relay.store import MessageStore
from tests.support import (
    ListeningClient,
    RelayProcess,
    control,
    free_port,
    get_json,
    publish,
    raw_client,
    rss_kib,
    ws_frame,
)

TIMESTAMP = "2026-01-01T00:00:00+00:00"
METRICS = {"loss": 0.5, "accuracy": 0.8, "precision": 0.7, "recall": 0.9, "f1": 0.79, "auroc": 0.6}
# Bounds the tests check (and docs/relay.md states).
EVICTION_DURING_REPLAY_S = STALL_TIMEOUT + 2.0  # the stall timeout, the close, some slack
REPLAY_100K_S = 2.0
API_RUNS_S = 0.05
LOOP_DELAY_S = 0.5


def epoch_end(run_id: str, epoch: int, msg_id: str | None = None) -> dict[str, Any]:
    data = {"epoch": epoch, "phase": "val", "metrics": METRICS}
    return make_message("epoch_end", data, run_id=run_id, msg_id=msg_id)


def padded(run_id: str, size: int) -> dict[str, Any]:
    return make_message("custom", {"pad": "x" * size}, run_id=run_id)


def stored_run(db_path: Path, run_id: str, count: int, pad: int = 0) -> None:
    """Write ``count`` messages of ``run_id`` straight into a relay database (fast setup)."""
    store = MessageStore(db_path)
    try:
        for i in range(count):
            message = padded(run_id, pad) if pad else epoch_end(run_id, i)
            store.append({**message, "msg_id": f"{run_id}-{i}"})
        store.commit()
    finally:
        store.close()


@pytest.fixture
def started(tmp_path: Path) -> Iterator[Callable[..., RelayProcess]]:
    """Start ``RelayProcess(db, **options)`` relays (on databases set up first); stop them all."""
    relays: list[RelayProcess] = []

    def start(db_path: Path | None = None, **options: Any) -> RelayProcess:
        relay = RelayProcess(db_path or tmp_path / f"relay-{len(relays)}" / "relay.db", **options)
        relays.append(relay)
        return relay.start()

    yield start
    for relay in relays:
        relay.stop()


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll ``condition`` until true; return the seconds it took; fail after ``timeout``."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(0.05)
    return time.monotonic() - started


class RssWatch:
    """Samples a process's resident memory every 50 ms in a thread, keeping the peak (KiB)."""

    def __init__(self, pid: int) -> None:
        self.pid, self.baseline = pid, rss_kib(pid)
        self.peak = self.baseline
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, rss_kib(self.pid))

    def __enter__(self) -> RssWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(5)

    @property
    def growth_mb(self) -> float:
        return (self.peak - self.baseline) / 1024


# --------------------------------------------------------------------------- hostile input


def hostile_frames() -> list[str | bytes]:
    """Frames the relay must refuse, each with a ``rejected`` reply and nothing stored."""
    envelope = {"type": "custom", "timestamp": TIMESTAMP, "data": {}, "run_id": "hostile"}

    def variant(**fields: Any) -> str:
        return json.dumps({key: v for key, v in {**envelope, **fields}.items() if v is not ...})

    summary = {
        "run_id": "r",
        "mode": None,
        "status": "running",
        "first_timestamp": TIMESTAMP,
        "last_timestamp": TIMESTAMP,
        "message_count": 1,
        "last_seq": 1,
    }
    frames: list[str | bytes] = [
        "{this is not json",
        "",
        "null",
        "[1, 2]",
        "42",
        '"epoch_end"',
        "{}",
        variant(type=...),
        variant(timestamp=...),
        variant(data=...),
        variant(type=7),
        variant(type=""),
        variant(timestamp="yesterday"),
        variant(timestamp=5),
        variant(data=[1]),
        variant(run_id=42),
        variant(msg_id=["x"]),
        variant(seq=-1),
        variant(run_id="\ud800"),
        variant(msg_id="\udfff"),
        variant(type="x\ud800"),
        variant(timestamp="2026-01-01\ud80000:00:00"),
        variant(data={"x": 1}).replace('{"x": 1}', '{"x": NaN}'),
        variant(data={"x": 1}).replace('{"x": 1}', '{"x": -Infinity}'),
        variant(data={"n": 1}).replace('"n": 1', '"n": 1' + "0" * 5000),
        "[" * 10_000 + "]" * 10_000,
        '{"a":' * 10_000 + "1" + "}" * 10_000,
        variant(data={"a": deep(32)}),  # 34 levels with the envelope and data: over 32
        variant(type="epoch_end", data={"epoch": 1, "phase": "val"}),
        variant(type="epoch_end", data={"epoch": -1, "phase": "val", "metrics": {}}),
        variant(type="epoch_end", data={"epoch": 2**63, "phase": "val", "metrics": {}}),
        variant(type="training_end", data={"run_id": 4.5, "status": "completed"}),
        variant(type="training_mode", data={"is_federated": 1, "num_rounds": 1}),
        variant(type="client_metrics", data={"round": 1, "clients": "all"}),
        variant(type="subscribe", data={"since": 2**63}),
        variant(type="subscribe", data={"since": -(2**63) - 1}),
        variant(type="subscribe", data={"since": "0"}),
        variant(type="subscribe", data={"run_id": "\ud800"}),
        variant(type="subscribe", data={"run_id": 5}),
        variant(type="subscribe", data={"epoch": 7}),
        variant(type="unsubscribe", data={"run_id": "\udfff"}),
        variant(type="auth", data={}),
        variant(type="auth", data={"token": 12345}),
        variant(type="ack", data={"run_id": "r", "seq": 1}),
        variant(type="rejected", data={"reason": "r"}),
        variant(type="replay_end", data={"epoch": "e"}),
        variant(type="pong", data={}),
        variant(type="authenticated", data={"can_publish": True}),
        variant(type="run_summary", data=summary),
        variant().encode(),  # a binary frame
        b"\xff\xfe\x00junk",
    ]
    valid = variant(type="epoch_end", data={"epoch": 1, "phase": "val", "metrics": METRICS})
    frames += [valid[:cut] for cut in range(1, len(valid), 7)]  # every truncation is invalid
    return frames


def deep(levels: int) -> Any:
    """Arrays nested ``levels`` deep."""
    value: Any = []
    for _ in range(levels - 1):
        value = [value]
    return value


def read_close_code(sock: socket.socket) -> int | None:
    """Read frames from a raw client socket until the relay's close frame; return its code."""
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return None
        data += chunk
        while len(data) >= 2:
            opcode, length = data[0] & 0x0F, data[1] & 0x7F
            start = 2 + {126: 2, 127: 8}.get(length, 0)
            if length >= 126:
                length = int.from_bytes(data[2:start], "big")
            if len(data) < start + length:
                break
            if opcode == 0x8:
                return int.from_bytes(data[start : start + 2], "big")
            data = data[start + length :]


def test_hostile_frames_are_refused_while_healthy_traffic_flows(
    started: Callable[..., RelayProcess],
) -> None:
    relay = started()
    frames = hostile_frames()
    per_connection = 1000
    hostile: dict[int, list[str]] = {}  # connection -> the types of its replies

    def attack(number: int) -> None:
        rng = random.Random(number)
        batch = [rng.choice(frames) for _ in range(per_connection)]
        kinds = []
        with connect(f"{relay.ws_url}/?publish", max_size=None, open_timeout=10) as ws:
            for start in range(0, per_connection, 100):
                for frame in batch[start : start + 100]:
                    ws.send(frame)
                kinds += [json.loads(ws.recv(30))["type"] for _ in range(100)]
        hostile[number] = kinds

    def close_the_link(number: int) -> None:  # frames that end their connection
        codes = []
        for i in range(50):
            sock = raw_client(relay.port, "/?publish")
            with sock:
                payload = b'{"type": "\xff\xfe"}' if i % 2 else b"x" * (64 * 1024 + 1)
                sock.sendall(ws_frame(payload))
                codes.append(read_close_code(sock))
        hostile[number] = [str(code) for code in codes]

    total = 500
    healthy = [epoch_end("healthy", e, msg_id=f"h-{e}") for e in range(1, total + 1)]
    with ListeningClient(relay.ws_url, run_id=None, subscribe=True, timeout=30) as dashboard:
        threads = [threading.Thread(target=attack, args=(n,)) for n in range(5)]
        threads.append(threading.Thread(target=close_the_link, args=(5,)))
        for thread in threads:
            thread.start()
        replies: list[dict[str, Any]] = []
        for start in range(0, total, 50):  # while the attack goes on
            replies += publish(relay.ws_url, healthy[start : start + 50], timeout=30)
        for thread in threads:
            thread.join(120)
        dashboard.wait_for(lambda msgs: sum("seq" in m for m in msgs) >= total, 30)
        dashboard.send(control("ping"))
        dashboard.wait_for_type("pong", count=2)
    assert [r["data"]["seq"] for r in replies if r["type"] == "ack"] == list(range(1, total + 1))
    data = dashboard.data_messages()
    assert [(m["run_id"], m["seq"]) for m in data] == [("healthy", s) for s in range(1, total + 1)]
    for number in range(5):
        assert hostile[number] == ["rejected"] * per_connection, number
    assert sorted(set(hostile[5])) == ["1007", "1009"]  # invalid UTF-8, oversized
    runs = get_json(f"{relay.http_url}/api/runs")["runs"]
    assert [(r["run_id"], r["message_count"]) for r in runs] == [("healthy", total)]
    stats = get_json(f"{relay.http_url}/stats")
    assert stats["rejected"] == 5 * per_connection and stats["evicted"] == 0
    assert "Traceback" not in relay.log_text()


# --------------------------------------------------------------------------- stalled dashboards


async def dashboard_reader(
    url: str, run_id: str, since: int | None, expected: int, progress: list[int], slot: int
) -> list[int]:
    """A dashboard that subscribes and reads ``expected`` messages; returns their seqs.

    ``progress[slot]`` is -1 until its ``replay_end`` arrives, then how many it has.
    """
    seqs: list[int] = []
    async with connect_async(f"{url}/?subscribe", compression=None, max_size=None) as ws:
        await ws.send(json.dumps(control("subscribe", run_id=run_id, since=since)))
        async with asyncio.timeout(120):
            while len(seqs) < expected or progress[slot] < 0:
                frame = await ws.recv(decode=False)
                if b'"seq":' in frame[-40:]:  # the relay writes seq last: no need to parse it all
                    seqs.append(int(frame.rsplit(b'"seq":', 1)[1].rstrip(b"}")))
                elif b'"replay_end"' in frame[:40]:
                    progress[slot] = 0
                if progress[slot] >= 0:
                    progress[slot] = len(seqs)
    return seqs


async def dashboards(
    relay: RelayProcess, run_id: str, since: int | None, count: int, healthy: int
) -> list[list[int]]:
    """``healthy`` dashboards read ``count`` messages of ``run_id``; when ``since`` is None,
    a publisher sends them, a step at a time, each once every dashboard has the last one."""
    progress = [-1] * healthy
    readers = [
        asyncio.create_task(dashboard_reader(relay.ws_url, run_id, since, count, progress, i))
        for i in range(healthy)
    ]
    if since is None:
        async with asyncio.timeout(60):
            while min(progress) < 0:  # every dashboard has subscribed
                await asyncio.sleep(0.02)
            async with connect_async(f"{relay.ws_url}/?publish", compression=None) as publisher:
                for sent in range(1, count + 1):  # 9 MB: more than a stalled socket buffers
                    await publisher.send(json.dumps(padded(run_id, 45_000)))
                    await publisher.recv()  # its ack
                    while min(progress) < sent:
                        await asyncio.sleep(0.002)
    return await asyncio.gather(*readers)


def stalled_subscriber(relay: RelayProcess, run_id: str, since: int | None) -> socket.socket:
    """A raw dashboard that subscribes to ``run_id`` and never reads."""
    subscribe = control("subscribe", run_id=run_id, since=since)
    return raw_client(relay.port, "/?subscribe", [subscribe])


def evicted(relay: RelayProcess) -> int:
    return get_json(f"{relay.http_url}/stats")["evicted"]


@pytest.mark.faults
def test_a_stalled_dashboard_among_50_healthy_ones_live_and_in_a_replay(
    started: Callable[..., RelayProcess], tmp_path: Path
) -> None:
    count, healthy = 200, 50  # 30 KB messages: 6 MB a dashboard, more than a socket buffers
    db = tmp_path / "stalled" / "relay.db"
    stored_run(db, "stored", count, 30_000)
    relay = started(db)
    with RssWatch(relay.pid) as memory:
        # During a replay: everyone asks for the stored run at once.
        with stalled_subscriber(relay, "stored", since=0):
            subscribed = time.monotonic()
            results = asyncio.run(dashboards(relay, "stored", 0, count, healthy))
            assert all(seqs == list(range(1, count + 1)) for seqs in results)
            wait_until(lambda: evicted(relay) == 1, EVICTION_DURING_REPLAY_S + 5, "replay eviction")
            replay_eviction = time.monotonic() - subscribed
        # Live: the run keeps publishing; the stalled one falls behind, the others do not.
        with stalled_subscriber(relay, "live", since=None):
            results = asyncio.run(dashboards(relay, "live", None, count, healthy))
            assert all(seqs == list(range(1, count + 1)) for seqs in results)
            assert evicted(relay) == 2
    assert get_json(f"{relay.http_url}/stats")["evicted"] == 2  # no healthy one
    assert replay_eviction <= EVICTION_DURING_REPLAY_S
    assert memory.growth_mb <= 120, memory.growth_mb  # docs/relay.md: the memory bound
    print(f"eviction during replay {replay_eviction:.1f} s, RSS +{memory.growth_mb:.0f} MB")


@pytest.mark.faults
def test_dashboards_that_never_read_a_replay_cost_a_bounded_memory(
    started: Callable[..., RelayProcess], tmp_path: Path
) -> None:
    # The report: 8 raw sockets subscribed since=0 to 600 x 60 KB, never read: 31 -> 467 MB.
    db = tmp_path / "big" / "relay.db"
    stored_run(db, "big", 600, 60_000)
    relay = started(db)
    with RssWatch(relay.pid) as memory:
        sockets = [stalled_subscriber(relay, "big", since=0) for _ in range(8)]
        took = wait_until(lambda: evicted(relay) == 8, EVICTION_DURING_REPLAY_S + 5, "evictions")
        for sock in sockets:
            sock.close()
    assert took <= EVICTION_DURING_REPLAY_S
    assert memory.growth_mb <= 40, memory.growth_mb  # 8 x (half the 1 MiB cap + a page)
    print(f"8 stalled replays: evicted in {took:.1f} s, RSS +{memory.growth_mb:.0f} MB")


# --------------------------------------------------------------------------- heavy reads


def raw_replay_seconds(port: int, run_id: str) -> tuple[float, int]:
    """Subscribe since 0 on a bare socket; return (seconds to replay_end, messages received)."""
    started = time.perf_counter()
    sock = raw_client(
        port,
        "/?subscribe",
        [control("subscribe", run_id=run_id, since=0)],
        receive_buffer=None,
    )
    chunks = []
    with sock:
        while True:
            chunk = sock.recv(1 << 20)
            assert chunk, "the relay closed the connection"
            chunks.append(chunk)
            if b'"replay_end"' in b"".join(chunks[-2:])[-600:]:
                break
    return time.perf_counter() - started, b"".join(chunks).count(b'"type":"epoch_end"')


async def client_replay_seconds(url: str, run_id: str) -> tuple[float, int]:
    """The same with a websockets client (frames parsed, payloads not decoded)."""
    started = time.perf_counter()
    received = 0
    async with connect_async(f"{url}/?subscribe", compression=None, max_size=None) as ws:
        await ws.send(json.dumps(control("subscribe", run_id=run_id, since=0)))
        while b'"replay_end"' not in (await ws.recv(decode=False))[:40]:
            received += 1
    return time.perf_counter() - started, received


@pytest.mark.faults
def test_a_new_dashboard_replays_100000_messages_within_2_s(
    started: Callable[..., RelayProcess], tmp_path: Path
) -> None:
    db = tmp_path / "100k" / "relay.db"
    stored_run(db, "big", 100_000)
    relay = started(db)
    raw_s, raw_count = min(raw_replay_seconds(relay.port, "big") for _ in range(2))
    client_s, client_count = asyncio.run(client_replay_seconds(relay.ws_url, "big"))
    print(f"100k replay: {raw_s:.2f} s (bare socket), {client_s:.2f} s (websockets client)")
    assert raw_count == client_count == 100_000
    assert raw_s <= REPLAY_100K_S


FETCH_CONCURRENTLY = """
import sys, threading, urllib.request
url, count = sys.argv[1], int(sys.argv[2])
threads = [threading.Thread(target=lambda: urllib.request.urlopen(url, timeout=60).read())
           for _ in range(count)]
[t.start() for t in threads]
[t.join() for t in threads]
"""


def test_api_runs_with_1000_runs_is_fast_and_never_holds_up_the_loop(
    started: Callable[..., RelayProcess],
) -> None:
    relay = started()
    publish(relay.ws_url, [epoch_end(f"run-{i:04}", 1) for i in range(1000)], timeout=30)
    url = f"{relay.http_url}/api/runs"
    timings = []
    for _ in range(10):
        began = time.perf_counter()
        assert len(get_json(url)["runs"]) == 1000
        timings.append(time.perf_counter() - began)
    delays: list[float] = []
    with ListeningClient(relay.ws_url, subscribe=False) as pinger:

        def ping_meanwhile(stop: threading.Event) -> None:
            while not stop.is_set():
                sent = time.perf_counter()
                pinger.send(control("ping"))
                pinger.wait_for_type("pong", count=len(delays) + 2)
                delays.append(time.perf_counter() - sent)
                time.sleep(0.01)

        stop = threading.Event()
        thread = threading.Thread(target=ping_meanwhile, args=(stop,))
        thread.start()
        # 100 requests at once, from another process so they do not slow this one's pings.
        fetch = subprocess.run(
            [sys.executable, "-c", FETCH_CONCURRENTLY, url, "100"], timeout=120, check=False
        )
        stop.set()
        thread.join(10)
    assert fetch.returncode == 0
    median = sorted(timings)[len(timings) // 2]
    print(f"/api/runs with 1000 runs: median {median * 1000:.1f} ms; ping max {max(delays):.3f} s")
    assert median <= API_RUNS_S
    assert max(delays) <= LOOP_DELAY_S


# --------------------------------------------------------------------------- database trouble


def run_relay_cli(db: Path, *prefix: str) -> subprocess.CompletedProcess[str]:
    command = [*prefix, sys.executable, "-m", "relay", "--host", "127.0.0.1"]
    command += ["--port", str(free_port()), "--db", str(db)]
    return subprocess.run(command, capture_output=True, text=True, timeout=30)


def assert_one_line_error(result: subprocess.CompletedProcess[str], words: str) -> None:
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert words in result.stderr


@pytest.mark.skipif(shutil.which("prlimit") is None, reason="needs prlimit (util-linux)")
def test_a_full_disk_at_start_is_a_one_line_error(tmp_path: Path) -> None:
    # RLIMIT_FSIZE 0: every write to a file fails, as on a full disk.
    result = run_relay_cli(tmp_path / "relay.db", "prlimit", "--fsize=0")
    assert_one_line_error(result, "cannot open database")


def test_a_read_only_location_at_start_is_a_one_line_error(tmp_path: Path) -> None:
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP)
    prefix: tuple[str, ...] = ()
    if os.geteuid() == 0:  # root writes anywhere: drop the capability that lets it
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv to drop CAP_DAC_OVERRIDE")
        prefix = ("setpriv", "--bounding-set=-dac_override,-dac_read_search")
    try:
        assert_one_line_error(run_relay_cli(folder / "relay.db", *prefix), "cannot open database")
    finally:
        folder.chmod(stat.S_IRWXU)


def exchange(client: ListeningClient, frames: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Send ``frames`` back to back (one batch for the relay); return the replies to them."""
    before = len(client.messages)
    for frame in frames:
        client.send(frame)
    wanted = before + len(frames)
    return client.wait_for(lambda msgs: len(msgs) >= wanted)[before:wanted]


class FileSizeLimitedRelay(RelayProcess):
    """A relay that may not grow any file past ``limit`` bytes (RLIMIT_FSIZE, via prlimit).

    Past the limit write(2) fails as on a full disk: a short write, then EFBIG. Python
    ignores SIGXFSZ, so the relay sees the error instead of being killed. ``limit`` None: no
    limit (for the restart after the disk was "freed").
    """

    def __init__(self, *args: Any, limit: int | None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limit = limit

    def command(self) -> list[str]:
        command = super().command()
        return command if self.limit is None else ["prlimit", f"--fsize={self.limit}", *command]


@pytest.mark.skipif(shutil.which("prlimit") is None, reason="needs prlimit (util-linux)")
def test_a_full_disk_mid_run_refuses_only_what_it_could_not_store(tmp_path: Path) -> None:
    relay = FileSizeLimitedRelay(tmp_path / "full" / "relay.db", limit=2 * 1024 * 1024)
    relay.start()
    acked: dict[str, int] = {}
    refused: list[dict[str, Any]] = []
    try:
        with (
            ListeningClient(f"{relay.ws_url}/?publish") as publisher,
            ListeningClient(relay.ws_url, run_id="run", since=0) as dashboard,
        ):
            for step in range(400):  # bounded: the disk is full after ~4 MB
                first = f"m-{step}-0"
                batch = [make_message("custom", {"pad": "x" * 20_000}, run_id="run", msg_id=first)]
                batch += [
                    make_message(
                        "custom", {"pad": "y" * 20_000}, run_id="run", msg_id=f"m-{step}-1"
                    )
                ]
                resend = next(iter(acked), None)
                frames: list[dict[str, Any]] = [*batch, control("ping")]
                if resend is not None:
                    frames.append(
                        make_message("custom", {"pad": "x" * 20_000}, run_id="run", msg_id=resend)
                    )
                replies = exchange(publisher, frames)
                # The ping is answered, a resend of a stored message acknowledged: always.
                assert replies[2]["type"] == "pong", replies[2]
                if resend is not None:
                    assert replies[3]["type"] == "ack", replies[3]
                    assert replies[3]["data"]["seq"] == acked[resend]
                for reply, message in zip(replies[:2], batch, strict=True):
                    if reply["type"] == "ack":
                        acked[message["msg_id"]] = reply["data"]["seq"]
                    else:  # refused by its msg_id, and marked as worth sending again
                        assert reply["data"]["msg_id"] == message["msg_id"], reply
                        assert reply["data"]["retry"] is True
                        refused.append(reply)
                if len(refused) >= 6:
                    break
            dashboard.send(control("ping"))
            dashboard.wait_for_type("pong", count=2)
            broadcast = [m["msg_id"] for m in dashboard.data_messages()]
    finally:
        relay.stop()
    assert refused, "the disk never filled"
    assert broadcast == list(acked)  # what was refused was never broadcast
    assert "store commit failed" in relay.log_text() and "Traceback" not in relay.log_text()
    relay.limit = None  # the disk has room again
    relay.start()
    try:
        stored = get_json(f"{relay.http_url}/api/runs/run/metrics")["messages"]
        assert {m["msg_id"]: m["seq"] for m in stored} == acked  # every ack holds, nothing else
        again = publish(relay.ws_url, [make_message("custom", {}, run_id="run", msg_id="new")])
        assert again[0]["data"]["seq"] == max(acked.values()) + 1
    finally:
        relay.stop()
