"""What streaming costs a federated run: the same small `flwr run` with streaming on and off.

"on" streams every message to a real relay (started here on a free port); "off" sets
``relay-url=""`` so the sender only writes the local JSONL log; with ``--relay-down``, "down"
points the sender at a port where nothing listens, as when the relay is down for the whole run
(the sender keeps reconnecting; at the end it waits up to its close timeout, 5 s, for a relay
that never comes). All runs use one SuperLink of our own (its own ``FLWR_HOME`` and ports),
warmed by an untimed one-round run and stopped by pid at the end. With ``--repeats N`` the
order rotates (on/off, off/on, ...; with "down": on/down/off, down/off/on, ...); the figures
are the fastest of the repeats (the ones other load on the machine disturbed least), with the
medians beside them.

Two figures per run: the wall time of ``flwr run . --stream`` (what a user waits; includes
Ray start-up and Flower's 3 s polling of the grid) and the strategy's own time as Flower logs
it ("Strategy execution finished in ..."). The last line is one JSON object with ``on_s``,
``off_s`` and ``ratio`` (fastest wall times) plus the strategy and median figures; with
``--relay-down`` also ``down_s``, ``down_ratio`` (down / off) and their strategy and median
figures.

    .venv/bin/python benchmarks/fl_overhead.py [--clients 2] [--rounds 3] [--repeats 1]
                                               [--relay-down]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fl_stream.monitor.runlog import read_log
from scripts.localrun import (
    PROJECT_DIR,
    RelayProcess,
    flwr_command,
    flwr_environment,
    free_port,
    stop_superlink,
)
from tests.support import get_json

RUN_TIMEOUT = 600


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--samples-per-client", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument(
        "--relay-down", action="store_true", help="also time runs whose relay is down throughout"
    )
    args = parser.parse_args()
    modes = ("on", "down", "off") if args.relay_down else ("on", "off")

    with tempfile.TemporaryDirectory(prefix="fl-overhead-") as tmp:
        home = Path(tmp) / "flwr-home"
        env = flwr_environment(home, http_port=free_port(), control_port=free_port())
        relay = RelayProcess(Path(tmp) / "relay.db").start()
        urls = {"on": relay.ws_url, "down": f"ws://127.0.0.1:{free_port()}", "off": ""}
        try:
            # An untimed one-round run starts the SuperLink and installs the app (FAB), so
            # none of the timed runs pays for that.
            warm_up = argparse.Namespace(**{**vars(args), "rounds": 1})
            _timed_run(env, warm_up, "", Path(tmp) / "warm-up", relay)
            times: dict[str, list[tuple[float, float]]] = {mode: [] for mode in modes}
            for repeat in range(args.repeats):
                shift = repeat % len(modes)
                for mode in modes[shift:] + modes[:shift]:
                    url = urls[mode]
                    wall, strategy = _timed_run(env, args, url, Path(tmp) / mode, relay, mode)
                    times[mode].append((wall, strategy))
                    print(
                        f"relay {mode:4}: flwr run {wall:6.1f} s, strategy {strategy:6.1f} s",
                        flush=True,
                    )
        finally:
            stop_superlink(home)
            relay.stop()

    columns = {mode: list(zip(*runs, strict=True)) for mode, runs in times.items()}
    fastest = {mode: [min(c) for c in cols] for mode, cols in columns.items()}
    median = {mode: [statistics.median(c) for c in cols] for mode, cols in columns.items()}
    figures: dict[str, float | int] = {
        "clients": args.clients,
        "rounds": args.rounds,
        "repeats": args.repeats,
    }
    for mode in modes:
        figures[f"{mode}_s"] = round(fastest[mode][0], 2)
    figures["ratio"] = round(fastest["on"][0] / fastest["off"][0], 3)
    if args.relay_down:
        figures["down_ratio"] = round(fastest["down"][0] / fastest["off"][0], 3)
    for mode in modes:
        figures[f"{mode}_strategy_s"] = round(fastest[mode][1], 2)
    figures["strategy_ratio"] = round(fastest["on"][1] / fastest["off"][1], 3)
    if args.relay_down:
        figures["down_strategy_ratio"] = round(fastest["down"][1] / fastest["off"][1], 3)
    for mode in modes:
        figures[f"median_{mode}_s"] = round(median[mode][0], 2)
    print(json.dumps(figures))


def _timed_run(
    env: dict[str, str],
    args: argparse.Namespace,
    relay_url: str,
    log_dir: Path,
    relay: RelayProcess,
    mode: str = "off",
) -> tuple[float, float]:
    """One `flwr run`; returns (wall seconds, strategy seconds) after checking it streamed.

    The JSONL log must end with ``training_end``; in mode "on" the run must be in the relay.
    """
    command = flwr_command(
        num_supernodes=args.clients,
        run_config={
            "num-server-rounds": args.rounds,
            "samples-per-client": args.samples_per_client,
            "relay-url": relay_url,
            "metrics-log-dir": str(log_dir),
        },
    )
    started = time.perf_counter()
    done = subprocess.run(
        command,
        cwd=PROJECT_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )
    wall = time.perf_counter() - started
    output = done.stdout + done.stderr
    run_id = re.search(r"Successfully started run (\d+)", output)
    strategy = re.search(r"Strategy execution finished in ([\d.]+)s", output)
    if done.returncode != 0 or not run_id or not strategy:
        sys.exit(f"flwr run failed (exit {done.returncode}):\n{output[-3000:]}")
    logged = list(read_log(log_dir / f"{run_id.group(1)}.jsonl"))
    if not logged or logged[-1]["type"] != "training_end":
        sys.exit(f"run {run_id.group(1)}: the JSONL log is incomplete")
    if mode == "on" and run_id.group(1) not in json.dumps(get_json(f"{relay.http_url}/api/runs")):
        sys.exit(f"run {run_id.group(1)} did not reach the relay")
    return wall, float(strategy.group(1))


if __name__ == "__main__":
    main()
