"""The ``fl-stream`` command line.

    fl-stream train-centralized [options]    train without federation, streaming every epoch

The options of ``train-centralized`` are the fields of :class:`CentralizedConfig`, generated
by :mod:`fl_stream.settings` (names, defaults, help, choices, checks). Bad options end with
one line on stderr and exit status 2, before anything is sent.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from functools import partial

from fl_stream.centralized.trainer import CentralizedConfig, CentralizedTrainer
from fl_stream.settings import OneLineErrorParser, add_arguments, from_namespace

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """Return the ``fl-stream`` parser with its subcommands."""
    parser = OneLineErrorParser(
        prog="fl-stream", description="Live monitoring of federated and centralized training."
    )
    commands = parser.add_subparsers(title="commands", required=True, metavar="COMMAND")
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
    return parser


def _train_centralized(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
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


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``fl-stream`` command line; return the exit status."""
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
