"""The relay's settings and its command line, generated from them by :mod:`fl_stream.settings`."""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from fl_stream.monitor.control import RedactCredentials
from fl_stream.monitor.protocol import (
    DEFAULT_RELAY_HOST,
    DEFAULT_RELAY_PORT,
    MAX_MESSAGE_BYTES,
    RELAY_TOKEN_ENV,
    VIEWER_TOKEN_ENV,
    relay_token,
    viewer_token,
)
from fl_stream.settings import (
    ORIGIN,
    PORT,
    POSITIVE_INT,
    POSITIVE_NUMBER,
    OneLineErrorParser,
    Rule,
    SettingError,
    add_arguments,
    finite_at_least,
    one_of,
    setting,
    validate,
)
from fl_stream.settings import parse_args as parse_settings

__all__ = ["RelayConfig", "build_parser", "parse_args"]

DATA_DIR_ENV = "FL_STREAM_DATA_DIR"
DEFAULT_DB = "relay.db"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def _is_http_url(value: str, *, bare: bool = False) -> bool:
    """An http(s) URL with a host; ``bare``: no query, fragment or user name either."""
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        return False
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return False
    return not (bare and (parts.query or parts.fragment or "@" in parts.netloc))


WEBHOOK_URL = Rule(_is_http_url, "an http:// or https:// URL, e.g. https://hooks.example.com/fl")
PUBLIC_URL = Rule(
    lambda value: _is_http_url(value, bare=True),
    "an http:// or https:// URL with no query, fragment or user name, "
    "e.g. https://example.com/fl-stream",
)


def default_db() -> Path:
    """``$FL_STREAM_DATA_DIR/relay.db``, or ``data/relay.db`` when the variable is unset."""
    return Path(os.environ.get(DATA_DIR_ENV) or "data") / DEFAULT_DB


@dataclass(frozen=True)
class RelayConfig:
    """Everything the relay needs to start; each field is also a ``fl-stream-relay`` option.

    The database and the token default to what the environment says, as on the command line.
    """

    host: str = setting(DEFAULT_RELAY_HOST, help="interface to listen on")
    port: int = setting(DEFAULT_RELAY_PORT, check=PORT, help="port, 0 for any free one")
    db: Path = setting(
        default_factory=default_db, help=f"SQLite file; its folder follows ${DATA_DIR_ENV}"
    )
    token: str | None = setting(
        default_factory=relay_token,
        repr=False,  # never in a log line
        help="publishers must send 'Authorization: Bearer <token>'",
        default_help=f"${RELAY_TOKEN_ENV}; unset: anyone may publish",
    )
    viewer_token: str | None = setting(
        default_factory=viewer_token,
        repr=False,
        help="reading runs (subscriptions, /api/*) needs this token or the publisher token, "
        "sent as 'Authorization: Bearer <token>' or in an auth message",
        default_help=f"${VIEWER_TOKEN_ENV}; unset: anyone may read",
    )
    allowed_origins: tuple[str, ...] = setting(
        (),
        check=ORIGIN,
        flag="--allowed-origin",
        metavar="ORIGIN",
        help="a browser origin allowed to connect, e.g. http://myhost:8080 (repeatable; clients "
        "without an Origin and the relay's own http(s)://127.0.0.1:PORT and "
        "http(s)://localhost:PORT are always allowed)",
    )
    max_message_bytes: int = setting(
        MAX_MESSAGE_BYTES, check=POSITIVE_INT, help="larger frames close the connection with 1009"
    )
    max_buffer_bytes: int = setting(
        1024 * 1024,
        check=POSITIVE_INT,
        help="unsent bytes a subscriber may have before it is closed with 4008",
    )
    certfile: Path | None = setting(
        None, help="TLS certificate chain (PEM): serve wss:// and https://; needs --keyfile"
    )
    keyfile: Path | None = setting(None, help="the private key (PEM) of --certfile")
    alert_webhooks: tuple[str, ...] = setting(
        (),
        check=WEBHOOK_URL,
        flag="--alert-webhook",
        metavar="URL",
        repr=False,  # webhook URLs often hold a secret: never in a log line or an error
        help="POST a JSON alert here when a run fails, stops early, completes or stalls "
        "(repeatable)",
        group="alerts",
    )
    public_url: str | None = setting(
        None,
        check=PUBLIC_URL,
        metavar="URL",
        help="the dashboard's address in alert links, for a relay behind a proxy",
        default_help="the relay's own http(s)://host:port",
        group="alerts",
    )
    stall_factor: float = setting(
        5.0,
        check=finite_at_least(1.0),
        metavar="FACTOR",
        help="a running run is stalled after this many of its median round or epoch "
        "intervals without a message",
        group="alerts",
    )
    stall_floor: float = setting(
        60.0,
        check=POSITIVE_NUMBER,
        metavar="SECONDS",
        help="the shortest silence that is a stall, however fast the run",
        group="alerts",
    )
    alert_timeout: float = setting(
        5.0,
        check=POSITIVE_NUMBER,
        metavar="SECONDS",
        help="how long one delivery attempt waits for the webhook",
        group="alerts",
    )
    log_level: str = setting(
        "INFO", check=one_of(LOG_LEVELS), parse=str.upper, help="log level, in any case"
    )

    def __post_init__(self) -> None:
        validate(self)
        if (self.certfile is None) != (self.keyfile is None):
            raise SettingError("--certfile and --keyfile go together: pass both, or neither")


def build_parser() -> argparse.ArgumentParser:
    """Return the ``fl-stream-relay`` parser: one option per :class:`RelayConfig` field."""
    parser = OneLineErrorParser(
        prog="fl-stream-relay",
        description="WebSocket relay: validates, numbers, stores and fans out training metrics "
        "to dashboards; serves the dashboard and a small run API on the same port.",
    )
    add_arguments(parser, RelayConfig)
    return parser


def parse_args(argv: Sequence[str] | None = None) -> RelayConfig:
    """Parse the command line (``argv``; ``sys.argv[1:]`` when None) into a config.

    A bad option exits with status 2 and one line on stderr.
    """
    return parse_settings(build_parser(), RelayConfig, argv)


def configure_logging(level: str) -> None:
    """Log one line per event to stderr; websockets' own chatter only when debugging."""
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("websockets").setLevel(logging.DEBUG if level == "DEBUG" else logging.WARNING)
    for handler in logging.getLogger().handlers:  # websockets' DEBUG lines show every header
        handler.addFilter(RedactCredentials())
