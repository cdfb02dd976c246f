"""The ``fl-stream`` command line.

    fl-stream train-centralized [options]    train without federation, streaming every epoch

Bad options end with one line on stderr and exit status 2, before anything is sent.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from functools import partial
from typing import NoReturn

from fl_stream.centralized.early_stopping import MODES, monitorable_metrics
from fl_stream.centralized.trainer import CentralizedConfig, CentralizedTrainer
from fl_stream.monitor.protocol import RELAY_TOKEN_ENV
from fl_stream.pneumonia.model import MODELS

__all__ = ["build_parser", "main"]


class OneLineErrorParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line: what is wrong and where to read more."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """Return the ``fl-stream`` parser with its subcommands."""
    parser = OneLineErrorParser(
        prog="fl-stream", description="Live monitoring of federated and centralized training."
    )
    commands = parser.add_subparsers(title="commands", required=True, metavar="COMMAND")
    _add_train_centralized(commands)
    return parser


def _add_train_centralized(commands: argparse._SubParsersAction) -> None:
    defaults = CentralizedConfig()
    train = commands.add_parser(
        "train-centralized",
        help="train one model on the whole training split, streaming every epoch",
        description=(
            "Train on the whole training split, validate every epoch, stream the metrics to "
            "the relay under a fresh run id, stop early when the monitored metric stops "
            "improving, and save the best epoch's weights."
        ),
    )
    data = train.add_argument_group("data and model")
    data.add_argument(
        "--data-path",
        default=defaults.data_path,
        help="PneumoniaMNIST .npz file or chest_xray folder; omit for the built-in synthetic set",
    )
    data.add_argument(
        "--image-size",
        type=int,
        default=defaults.image_size,
        help="image side in pixels (default: %(default)s)",
    )
    data.add_argument(
        "--model", choices=MODELS, default=defaults.model, help="default: %(default)s"
    )
    data.add_argument(
        "--seed",
        type=int,
        default=defaults.seed,
        help="seed for data, weights and shuffling (default: %(default)s)",
    )

    optim = train.add_argument_group("training")
    optim.add_argument("--epochs", type=int, default=defaults.epochs, help="default: %(default)s")
    optim.add_argument(
        "--batch-size", type=int, default=defaults.batch_size, help="default: %(default)s"
    )
    optim.add_argument(
        "--learning-rate",
        type=float,
        default=defaults.learning_rate,
        help="SGD step size, momentum 0.9 (default: %(default)s)",
    )

    stopping = train.add_argument_group("early stopping and best epoch")
    stopping.add_argument(
        "--early-stopping-metric",
        choices=monitorable_metrics(),
        default=defaults.early_stopping_metric,
        metavar="METRIC",
        help=(
            "metric that picks the best epoch and stops training, one of "
            f"{', '.join(monitorable_metrics())} (default: %(default)s)"
        ),
    )
    stopping.add_argument(
        "--patience",
        type=int,
        default=defaults.patience,
        help="epochs without improvement before stopping; 0 never stops (default: %(default)s)",
    )
    stopping.add_argument(
        "--min-delta",
        type=float,
        default=defaults.min_delta,
        help="smallest change that counts as an improvement (default: %(default)s)",
    )
    stopping.add_argument(
        "--mode",
        choices=MODES,
        default=defaults.mode,
        help="default: min for a loss, max otherwise",
    )

    output = train.add_argument_group("monitoring and output")
    output.add_argument(
        "--relay-url",
        default=defaults.relay_url,
        help='relay WebSocket address; "" for the log only (default: %(default)s)',
    )
    output.add_argument(
        "--relay-token",
        help=f"publisher token, if the relay requires one (default: ${RELAY_TOKEN_ENV})",
    )
    output.add_argument(
        "--log-path",
        default=defaults.log_path,
        help="JSONL copy of every message (default: runs/<run id>.jsonl)",
    )
    output.add_argument(
        "--save-path",
        default=defaults.save_path,
        help="best weights, a torch state_dict (default: runs/<run id>/best_model.pt)",
    )
    output.add_argument(
        "--no-progress",
        action="store_true",
        help="hide the per-epoch progress bar and summary lines",
    )
    train.set_defaults(handler=partial(_train_centralized, parser=train))


def _train_centralized(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    try:
        trainer = CentralizedTrainer(
            CentralizedConfig(
                epochs=args.epochs,
                batch_size=args.batch_size,
                learning_rate=args.learning_rate,
                data_path=args.data_path,
                image_size=args.image_size,
                model=args.model,
                seed=args.seed,
                early_stopping_metric=args.early_stopping_metric,
                patience=args.patience,
                min_delta=args.min_delta,
                mode=args.mode,
                relay_url=args.relay_url,
                relay_token=args.relay_token,
                log_path=args.log_path,
                save_path=args.save_path,
                progress=not args.no_progress,
            )
        )
    except (ValueError, FileNotFoundError) as exc:
        parser.error(str(exc))  # exits with status 2
    print(f"run id: {trainer.run_id}", flush=True)
    target = f"streaming to {args.relay_url}" if args.relay_url else "no relay"
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
