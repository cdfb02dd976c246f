"""`make demo`: the relay, a live dashboard and a federated run streaming to it, then clean up.

1. starts the relay (``python -m relay``; database ``data/relay.db``) unless one already
   answers on the port, and prints the dashboard URL;
2. runs ``flwr run . --stream --federation-config 'num-supernodes=N'`` with a project-local
   ``FLWR_HOME`` (``runs/flwr-home``) on free ports, so the SuperLink it starts is ours;
3. stops that SuperLink (found by the ``FLWR_HOME`` on its command line) and the relay it
   started, by pid, also after Ctrl-C, and prints how to look at the stored run again.
"""

from __future__ import annotations

import argparse
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a fresh checkout

from fl_stream.monitor.protocol import DEFAULT_RELAY_PORT
from fl_stream.monitor.runlog import read_log
from scripts.localrun import (
    PROJECT_DIR,
    RelayProcess,
    flwr_command,
    flwr_environment,
    free_port,
    is_healthy,
    stop_superlink,
)

RUNS_DIR = PROJECT_DIR / "runs"
FLWR_HOME = RUNS_DIR / "flwr-home"
RELAY_DB = PROJECT_DIR / "data" / "relay.db"


def main() -> int:
    args = _parse_args()
    signal.signal(signal.SIGTERM, _interrupt)
    relay = None
    run_id = None
    try:
        relay = _start_relay(args.port)
        dashboard = f"http://127.0.0.1:{args.port}/"
        print(
            f"\n  Dashboard: {dashboard}   (open it now; the run starts in a few seconds)\n",
            flush=True,
        )
        run_id = _run_federation(args)
    except KeyboardInterrupt:
        print("\nInterrupted; stopping what the demo started.", file=sys.stderr)
        return 130
    finally:
        stopped = stop_superlink(FLWR_HOME)
        if stopped:
            print(f"Stopped the Flower SuperLink (pid {', '.join(map(str, stopped))}).")
        if relay is not None:
            pid = relay.pid
            relay.stop()
            print(f"Stopped the relay (pid {pid}); its database stays at {RELAY_DB}.")
    if run_id is None:
        print("The federated run did not start; see the output above.", file=sys.stderr)
        return 1
    status = _final_status(RUNS_DIR / f"{run_id}.jsonl")
    if status != "completed":
        # `flwr run --stream` exits 0 even when the ServerApp fails: the log tells.
        print(
            f"Run {run_id} did not complete (status: {status}); see the output above.",
            file=sys.stderr,
        )
        return 1
    print(
        f"\nRun {run_id} is stored. To look at it again:\n"
        f"  .venv/bin/python -m relay --port {args.port} --db {RELAY_DB.relative_to(PROJECT_DIR)}\n"
        f"  open http://127.0.0.1:{args.port}/?run={run_id}\n"
        f"Its messages are also in {RUNS_DIR.relative_to(PROJECT_DIR)}/{run_id}.jsonl"
    )
    return 0


def _interrupt(signum: int, frame: object) -> None:
    """SIGTERM (e.g. from a CI runner) cleans up exactly like Ctrl-C."""
    raise KeyboardInterrupt


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=3, help="simulated clients (default: 3)")
    parser.add_argument("--rounds", type=int, default=3, help="federated rounds (default: 3)")
    parser.add_argument(
        "--port",
        type=int,
        default=DEFAULT_RELAY_PORT,
        help="relay port (default: %(default)s)",
    )
    parser.add_argument(
        "--samples-per-client",
        type=int,
        default=200,
        help="training examples per client, before 20%% are held out (default: 200)",
    )
    return parser.parse_args()


def _start_relay(port: int) -> RelayProcess | None:
    """Start the relay, or return None when one already answers on ``port`` (we keep it)."""
    relay = RelayProcess(RELAY_DB, port=port, log_path=RUNS_DIR / "relay.log")
    if is_healthy(relay.http_url):
        print(f"Using the relay already running on port {port}.")
        return None
    try:
        relay.start()
    except RuntimeError as exc:
        reason = f"the relay did not start on port {port} (is it taken? try --port): {exc}"
        raise SystemExit(reason) from None
    print(f"Relay started (pid {relay.pid}, log {relay.log_path}).")
    return relay


def _run_federation(args: argparse.Namespace) -> str | None:
    """Run ``flwr run . --stream``, echoing its output; return the Flower run id."""
    env = flwr_environment(FLWR_HOME, http_port=free_port(), control_port=free_port())
    command = flwr_command(
        num_supernodes=args.clients,
        run_config={
            "num-server-rounds": args.rounds,
            "samples-per-client": args.samples_per_client,
            "relay-url": f"ws://127.0.0.1:{args.port}",
            "metrics-log-dir": str(RUNS_DIR),  # absolute: the ServerApp's cwd is the SuperLink's
        },
    )
    print("$", shlex.join(["flwr", *command[1:]]), flush=True)
    run_id = None
    flwr = subprocess.Popen(
        command,
        cwd=PROJECT_DIR,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
    )
    assert flwr.stdout is not None  # stdout=PIPE
    try:
        for line in flwr.stdout:
            print(line, end="", flush=True)
            found = re.search(r"Successfully started run (\d+)", line)
            run_id = found.group(1) if found else run_id
        flwr.wait()
    finally:
        if flwr.poll() is None:  # interrupted: stop following the logs
            _stop(flwr)
        flwr.stdout.close()
    if flwr.returncode != 0:
        print(f"flwr run exited with code {flwr.returncode}", file=sys.stderr)
    return run_id


def _final_status(log_path: Path) -> str:
    """The status in the run's ``training_end`` message, or why there is none."""
    try:
        messages = list(read_log(log_path))
    except OSError:
        return f"no run log at {log_path}"
    ends = [m["data"].get("status") for m in messages if m.get("type") == "training_end"]
    return ends[-1] if ends else "no training_end message"


def _stop(process: subprocess.Popen, timeout: float = 10.0) -> None:
    process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


if __name__ == "__main__":
    sys.exit(main())
