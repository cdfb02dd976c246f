"""The relay's command line and its settings."""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from fl_stream.monitor.protocol import (
    DEFAULT_RELAY_HOST,
    DEFAULT_RELAY_PORT,
    RELAY_TOKEN_ENV,
    relay_token,
)

__all__ = ["RelayConfig", "parse_args"]

DATA_DIR_ENV = "FL_STREAM_DATA_DIR"
DEFAULT_DB = "relay.db"


@dataclass(frozen=True)
class RelayConfig:
    """Everything the relay needs to start; the defaults are the command line's."""

    host: str = DEFAULT_RELAY_HOST
    port: int = DEFAULT_RELAY_PORT
    db: Path = Path("data") / DEFAULT_DB
    token: str | None = field(default=None, repr=False)  # never in a log line
    allowed_origins: tuple[str, ...] = ()
    max_message_bytes: int = 64 * 1024
    max_buffer_bytes: int = 1024 * 1024
    log_level: str = "INFO"


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number 0-65535, got {text}")
    return value


def parse_args(argv: Sequence[str] | None = None) -> RelayConfig:
    """Parse the command line (``argv``; ``sys.argv[1:]`` when None) into a config."""
    defaults = RelayConfig()
    data_dir = os.environ.get(DATA_DIR_ENV)
    parser = argparse.ArgumentParser(
        prog="fl-stream-relay",
        description="WebSocket relay: validates, numbers, stores and fans out training metrics "
        "to dashboards; serves the dashboard and a small run API on the same port.",
    )
    parser.add_argument(
        "--host", default=defaults.host, help="interface to listen on (default: %(default)s)"
    )
    parser.add_argument(
        "--port",
        type=_port,
        default=defaults.port,
        help="port, 0 for any free one (default: %(default)s)",
    )
    parser.add_argument(
        "--db",
        type=Path,
        default=Path(data_dir) / DEFAULT_DB if data_dir else defaults.db,
        help=f"SQLite file (default: %(default)s; the folder follows ${DATA_DIR_ENV})",
    )
    parser.add_argument(
        "--token",
        default=relay_token(),
        help=f"publishers must send 'Authorization: Bearer <token>' (default: ${RELAY_TOKEN_ENV}; "
        "unset: anyone may publish)",
    )
    parser.add_argument(
        "--allowed-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="a browser origin allowed to connect, e.g. http://myhost:8080 (repeatable; clients "
        "without an Origin and the relay's own http://127.0.0.1:PORT and http://localhost:PORT "
        "are always allowed)",
    )
    parser.add_argument(
        "--max-message-bytes",
        type=_positive_int,
        default=defaults.max_message_bytes,
        help="larger frames close the connection with 1009 (default: %(default)s)",
    )
    parser.add_argument(
        "--max-buffer-bytes",
        type=_positive_int,
        default=defaults.max_buffer_bytes,
        help="unsent bytes a subscriber may have before it is closed with 4008 "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--log-level",
        default=defaults.log_level,
        type=str.upper,
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="(default: %(default)s)",
    )
    args = parser.parse_args(argv)
    return RelayConfig(
        host=args.host,
        port=args.port,
        db=args.db,
        token=args.token,
        allowed_origins=tuple(args.allowed_origin),
        max_message_bytes=args.max_message_bytes,
        max_buffer_bytes=args.max_buffer_bytes,
        log_level=args.log_level,
    )


def configure_logging(level: str) -> None:
    """Log one line per event to stderr; websockets' own chatter only when debugging."""
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("websockets").setLevel(logging.DEBUG if level == "DEBUG" else logging.WARNING)
