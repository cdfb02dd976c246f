"""``fl-stream watch [RUN_ID]``: the command line and :func:`watch`, which runs it."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from rich.console import Console

from fl_stream.monitor.connection import RELAY_CA_FILE_ENV, tls_context
from fl_stream.monitor.protocol import (
    DEFAULT_RELAY_URL,
    RELAY_TOKEN_ENV,
    VIEWER_TOKEN_ENV,
    relay_token,
    viewer_token,
)
from fl_stream.settings import RELAY_URL, OneLineErrorParser, argument_type

from .display import LiveDisplay, PlainDisplay
from .follow import Follower
from .link import RelayAddress, WatchError

__all__ = ["RECONNECT_FOR_S", "WATCH", "add_watch_command", "build_parser", "main", "watch"]

WATCH = "watch"
# How long a dropped link is retried before the watcher gives up (exit status 2).
RECONNECT_FOR_S = 60.0
# Exit statuses besides the run's own (0 completed or early-stopped, 1 failed).
EXIT_NO_RELAY = 2
EXIT_INTERRUPTED = 130

_DESCRIPTION = (
    "Follow a run in the terminal: its mode and status, a progress bar of rounds or epochs "
    "with the time left, the latest aggregated metrics, each client's progress during a "
    "round, and banners for early stopping and errors. Without RUN_ID it follows the newest "
    "run (or the first to start). A live view on a terminal, plain lines when the output is "
    "piped. Exit status: 0 when the run completes or stops early, 1 when it fails, 2 when "
    "the relay cannot be reached (or refuses the watcher), 130 on Ctrl+C."
)


def add_watch_command(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``watch`` to the ``fl-stream`` subcommands; its handler returns the exit status."""
    command = commands.add_parser(
        WATCH, help="follow a run in the terminal until it ends", description=_DESCRIPTION
    )
    _add_arguments(command)
    command.set_defaults(handler=_run)
    return command


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``fl-stream watch`` alone (for :func:`main`)."""
    parser = OneLineErrorParser(prog=f"fl-stream {WATCH}", description=_DESCRIPTION)
    _add_arguments(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``fl-stream watch`` with ``argv`` (default: ``sys.argv[1:]``); return the exit status."""
    return _run(build_parser().parse_args(argv))


def watch(
    run_id: str | None = None,
    *,
    relay_url: str = DEFAULT_RELAY_URL,
    token: str | None = None,
    ca_file: str | None = None,
    reconnect_for: float = RECONNECT_FOR_S,
    console: Console | None = None,
) -> int:
    """Follow ``run_id`` (None: the newest run, or the first to start) until it ends.

    Args:
        relay_url: the relay, ``ws://`` or ``wss://``.
        token: the viewer or publisher token; None or ``""``: ``$FL_STREAM_VIEWER_TOKEN``,
            else ``$FL_STREAM_RELAY_TOKEN``, else none. Sent as ``Authorization: Bearer``.
        ca_file: for ``wss://``, the PEM certificate of the relay's CA (default:
            ``$FL_STREAM_RELAY_CA_FILE``, else the system's CAs).
        reconnect_for: seconds to keep reconnecting after the link drops mid-run.
        console: where to draw; a terminal gets the live view, anything else plain lines.
            Default: stdout.

    Returns:
        0 when the run completed or stopped early, 1 when it failed, 2 when the relay cannot
        be reached or refuses the watcher (one line on stderr says why), 130 on Ctrl+C.
    """
    console = console or Console()
    try:
        ssl_context = tls_context(relay_url, ca_file)
    except ValueError as exc:
        return _failed(str(exc), EXIT_NO_RELAY)
    address = RelayAddress(relay_url, viewer_token(token) or relay_token(), ssl_context)
    live = console.is_terminal and not console.is_dumb_terminal
    display = LiveDisplay(console) if live else PlainDisplay(console)
    try:
        with display:
            return Follower(address, run_id, display, reconnect_for).run()
    except WatchError as exc:
        return _failed(str(exc), EXIT_NO_RELAY)
    except KeyboardInterrupt:
        return _failed("interrupted", EXIT_INTERRUPTED)


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "run_id",
        metavar="RUN_ID",
        nargs="?",
        default=None,
        help="the run to follow (default: the newest run, or the first to start)",
    )
    parser.add_argument(
        "--relay-url",
        type=argument_type(RELAY_URL),
        default=DEFAULT_RELAY_URL,
        help=f"the relay, ws:// or wss:// (default: {DEFAULT_RELAY_URL})",
    )
    parser.add_argument(
        "--token",
        default=None,
        help=f"viewer or publisher token, if the relay requires one (default: "
        f"${VIEWER_TOKEN_ENV}, else ${RELAY_TOKEN_ENV}); prefer the variables: an argument "
        "shows in ps",
    )
    parser.add_argument(
        "--ca-file",
        default=None,
        help=f"for wss://, the PEM certificate of the relay's CA (default: ${RELAY_CA_FILE_ENV}, "
        "else the system's CAs)",
    )
    parser.add_argument(
        "--reconnect-for",
        type=_seconds,
        default=RECONNECT_FOR_S,
        metavar="SECONDS",
        help="after the link drops, keep reconnecting this long before giving up "
        f"(default: {RECONNECT_FOR_S:g})",
    )


def _run(args: argparse.Namespace) -> int:
    return watch(
        args.run_id,
        relay_url=args.relay_url,
        token=args.token,
        ca_file=args.ca_file,
        reconnect_for=args.reconnect_for,
    )


def _seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not seconds >= 0:  # NaN too
        raise argparse.ArgumentTypeError(f"expected a number of seconds >= 0, got {text!r}")
    return seconds


def _failed(reason: str, status: int) -> int:
    print(f"fl-stream {WATCH}: error: {reason}", file=sys.stderr)
    return status
