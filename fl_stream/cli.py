"""The ``fl-stream`` command line.

    fl-stream train-centralized [options]    train without federation, streaming every epoch
    fl-stream replay LOG [options]           upload a run log to a relay

The options of ``train-centralized`` are the fields of :class:`CentralizedConfig`, generated
by :mod:`fl_stream.settings` (names, defaults, help, choices, checks). Bad options end with
one line on stderr and exit status 2, before anything is sent. ``replay`` imports neither
torch nor the trainer, so it starts in a fraction of a second; it exits with 0 when every
line of the log is stored by the relay and with 1, after one line saying why, otherwise.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from functools import partial

from tqdm import tqdm

from fl_stream.monitor.connection import RELAY_CA_FILE_ENV
from fl_stream.monitor.protocol import DEFAULT_RELAY_URL, RELAY_TOKEN_ENV
from fl_stream.monitor.replay import ReplayError, ReplayResult, RunLog, read_run_log, replay
from fl_stream.settings import (
    RELAY_URL,
    OneLineErrorParser,
    add_arguments,
    argument_type,
    from_namespace,
)
from fl_stream.watch import add_watch_command

__all__ = ["build_parser", "main"]

REPLAY = "replay"
# Commands that never train: their parser leaves train-centralized (and torch) out.
LIGHT_COMMANDS = (REPLAY, "watch")


def build_parser(*, training: bool = True) -> argparse.ArgumentParser:
    """Return the ``fl-stream`` parser with its subcommands.

    ``training=False`` leaves out ``train-centralized``, whose options come from the trainer
    module and so import torch.
    """
    parser = OneLineErrorParser(
        prog="fl-stream", description="Live monitoring of federated and centralized training."
    )
    commands = parser.add_subparsers(title="commands", required=True, metavar="COMMAND")
    if training:
        _add_train_centralized(commands)
    _add_replay(commands)
    add_watch_command(commands)
    return parser


def _add_train_centralized(commands: argparse._SubParsersAction) -> None:
    from fl_stream.centralized.trainer import CentralizedConfig

    train = commands.add_parser(
        "train-centralized",
        help="train one model on the whole training split, streaming every epoch",
        description=(
            "Train on the whole training split, validate every epoch, stream the metrics to "
            "the relay under a fresh run id, stop early when the monitored metric stops "
            "improving, and save the best epoch's weights."
        ),
    )
    add_arguments(train, CentralizedConfig)
    train.set_defaults(handler=partial(_train_centralized, parser=train))


def _train_centralized(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from fl_stream.centralized.trainer import CentralizedConfig, CentralizedTrainer

    try:
        config = from_namespace(CentralizedConfig, args)
        trainer = CentralizedTrainer(config)
    except (ValueError, FileNotFoundError) as exc:
        parser.error(str(exc))  # exits with status 2
    print(f"run id: {trainer.run_id}", flush=True)
    target = f"streaming to {config.relay_url}" if config.relay_url else "no relay"
    print(f"{target}; every message is logged to {trainer.log_path}", flush=True)
    try:
        result = trainer.run()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    print(f"{result.status} after {result.epochs_run} epoch(s); best epoch {result.best_epoch}")
    print("final metrics: " + ", ".join(f"{k}={v:.4f}" for k, v in result.final_metrics.items()))
    print(f"best weights saved to {result.save_path}")
    return 0


# --------------------------------------------------------------------------- replay


def _add_replay(commands: argparse._SubParsersAction) -> None:
    command = commands.add_parser(
        REPLAY,
        help="upload a run log (runs/<run id>.jsonl) to a relay",
        description=(
            "Send every message of a run log to the relay, in order, and wait until the relay "
            "has acknowledged each: the run then appears in the relay's store and on its "
            "dashboards as if it had streamed live. The relay stores each message once, so "
            "replaying a log again, or one the relay has in part, stores nothing twice. "
            "Lines that cannot be sent are reported with their line number and skipped. "
            "Exit status: 0 when every line is stored, 1 otherwise."
        ),
    )
    command.add_argument("log", metavar="LOG", help="the JSONL run log the sender wrote")
    command.add_argument(
        "--relay-url",
        type=argument_type(RELAY_URL),
        default=DEFAULT_RELAY_URL,
        help=f"the relay, ws:// or wss:// (default: {DEFAULT_RELAY_URL})",
    )
    command.add_argument(
        "--token",
        default=None,
        help=f"publisher token, if the relay requires one (default: ${RELAY_TOKEN_ENV})",
    )
    command.add_argument(
        "--ca-file",
        default=None,
        help=f"for wss://, the PEM certificate of the relay's CA (default: ${RELAY_CA_FILE_ENV}, "
        "else the system's CAs)",
    )
    command.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        help="give up after this many seconds in which the relay takes no message (default: 30)",
    )
    command.set_defaults(handler=_replay)


def _replay(args: argparse.Namespace) -> int:
    # The connection's outage notices would repeat what the one error line below says.
    notices = logging.getLogger("fl_stream.monitor.sender")
    level = notices.level
    notices.setLevel(logging.ERROR)
    try:
        return _replay_log(args)
    finally:
        notices.setLevel(level)


def _replay_log(args: argparse.Namespace) -> int:
    try:
        log = read_run_log(args.log)
    except OSError as exc:
        return _replay_failed(f"cannot read {args.log}: {exc.strerror or exc}")
    for skipped in log.skipped:
        print(f"{args.log}:{skipped.line}: skipped: {skipped.reason}", file=sys.stderr)
    if not log.messages:
        return _replay_failed(f"{args.log} holds no message to replay")
    # The bar shows on a terminal only and is cleared when done.
    with tqdm(total=len(log.messages), unit="msg", disable=None, leave=False) as bar:
        try:
            result = replay(
                log,
                args.relay_url,
                token=args.token,
                ca_file=args.ca_file,
                timeout=args.timeout,
                progress=bar.update,
            )
        except (ReplayError, ValueError) as exc:
            bar.close()
            return _replay_failed(str(exc))
        except KeyboardInterrupt:
            bar.close()
            return _replay_failed("interrupted; replay again to send the rest", status=130)
    for skipped in result.skipped[len(log.skipped) :]:
        print(f"{args.log}:{skipped.line}: skipped: {skipped.reason}", file=sys.stderr)
    print(_replay_summary(log, result, args.relay_url))
    if result.complete:
        return 0
    missing = len(result.skipped) + result.sent - result.acked
    return _replay_failed(f"{missing} line(s) of {args.log} are not stored by the relay")


def _replay_summary(log: RunLog, result: ReplayResult, uri: str) -> str:
    runs = ", ".join(log.run_ids)
    parts = [f"{result.acked} acknowledged"]
    if result.rejected:
        parts.append(f"{result.rejected} rejected by the relay (reasons above)")
    if result.unconfirmed:
        parts.append(f"{result.unconfirmed} sent unconfirmed (the relay sends no acks)")
    if result.skipped:
        parts.append(f"{len(result.skipped)} line(s) skipped")
    if log.repeated:
        parts.append(f"{log.repeated} repeated line(s) sent once")
    return f"{log.path} -> {uri} (run {runs}): {result.sent} message(s), " + ", ".join(parts)


def _replay_failed(reason: str, status: int = 1) -> int:
    print(f"fl-stream {REPLAY}: error: {reason}", file=sys.stderr)
    return status


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``fl-stream`` command line; return the exit status."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    # Only train-centralized needs the trainer (and torch); other commands skip the import.
    parser = build_parser(training=arguments[:1] not in ([c] for c in LIGHT_COMMANDS))
    args = parser.parse_args(arguments)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
