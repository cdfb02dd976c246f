"""The relay's side of the protocol: its address and tokens, its runs, its control messages.

Declared here: the relay's default address, the token variables and :func:`relay_token`, the
default run, a run's statuses and modes and how dashboards show them, :func:`run_status`, the
shape of a run summary (:data:`RUN_SUMMARY`), and the control types the relay and its clients
exchange (:data:`CONTROL_TYPES`), which are never stored or broadcast.

:mod:`fl_stream.monitor.protocol` re-exports all of it; import from there.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from typing import Any

from .checks import Fields, is_bool, is_count, is_int, is_text, one_of, optional

__all__ = [
    "RedactCredentials",
    "CENTRALIZED",
    "CLIENT_CONTROL_TYPES",
    "COMPLETED",
    "CONTROL_TYPES",
    "DEFAULT_RELAY_HOST",
    "DEFAULT_RELAY_PORT",
    "DEFAULT_RELAY_URL",
    "MAX_MESSAGE_BYTES",
    "DEFAULT_RUN",
    "EARLY_STOPPED",
    "FAILED",
    "FEDERATED",
    "RELAY_TOKEN_ENV",
    "RUNNING",
    "RUN_STATUSES",
    "RUN_SUMMARY",
    "STATUS_LABELS",
    "VIEWER_TOKEN_ENV",
    "relay_token",
    "run_status",
    "viewer_token",
]

# --------------------------------------------------------------------------- the relay

# Where the relay listens unless told otherwise: loopback only, so a default start never
# exposes the relay (and its publish endpoint) to the network.
DEFAULT_RELAY_HOST = "127.0.0.1"
DEFAULT_RELAY_PORT = 8765
DEFAULT_RELAY_URL = f"ws://{DEFAULT_RELAY_HOST}:{DEFAULT_RELAY_PORT}"
# One variable holds the publisher token for the relay and for every publisher.
RELAY_TOKEN_ENV = "FL_STREAM_RELAY_TOKEN"
# The relay's default frame limit; publishers keep larger messages in their log only.
MAX_MESSAGE_BYTES = 64 * 1024
# And one the viewer token: with it set, reading runs from the relay needs it (or the
# publisher token).
VIEWER_TOKEN_ENV = "FL_STREAM_VIEWER_TOKEN"
# Messages that carry no run_id belong to this run.
DEFAULT_RUN = "default"


def relay_token(explicit: str | None = None) -> str | None:
    """The publisher token to use: ``explicit`` unless empty, else ``$FL_STREAM_RELAY_TOKEN``.

    Returns None when neither is set (an open relay). Every publisher and the relay itself
    read the token through this one rule.
    """
    return explicit or os.environ.get(RELAY_TOKEN_ENV) or None


def viewer_token(explicit: str | None = None) -> str | None:
    """The viewer token: ``explicit`` unless empty, else ``$FL_STREAM_VIEWER_TOKEN``, else None."""
    return explicit or os.environ.get(VIEWER_TOKEN_ENV) or None


# --------------------------------------------------------------------------- runs

# A run's status: running until its training_end (or error) arrives, then what that says.
RUNNING = "running"
COMPLETED = "completed"
EARLY_STOPPED = "early_stopped"
FAILED = "failed"
# The statuses a finished run may report in training_end.
RUN_STATUSES = (COMPLETED, EARLY_STOPPED, FAILED)
# How dashboards show them.
STATUS_LABELS = {
    RUNNING: "running",
    COMPLETED: "completed",
    EARLY_STOPPED: "early-stopped",
    FAILED: "failed",
}
# A run's mode, from its training_mode's is_federated.
FEDERATED = "federated"
CENTRALIZED = "centralized"


def run_status(end: Mapping[str, Any] | None) -> str:
    """A run's status from its last ``training_end`` or ``error`` message (None: none yet)."""
    if end is None:
        return RUNNING
    if end["type"] == "error":
        return FAILED
    status: str = end["data"]["status"]
    return status


# --------------------------------------------------------------------------- control messages

# A run as the relay summarises it: in /api/runs and in run_summary messages.
RUN_SUMMARY: Fields = (
    {
        "run_id": is_text,
        "mode": optional(one_of(FEDERATED, CENTRALIZED)),  # null until its training_mode
        "status": one_of(RUNNING, *RUN_STATUSES),
        "first_timestamp": is_text,
        "last_timestamp": is_text,
        "message_count": is_count,
        "last_seq": is_count,
    },
    {},
)

# Control messages between the relay and its clients; never stored or broadcast. Clients
# send auth, subscribe, unsubscribe and ping (CLIENT_CONTROL_TYPES); the relay answers
# authenticated, ack (one per accepted message), rejected (a refused message, and why),
# replay_end (stored messages sent; live ones follow) and pong, and tells dashboards about
# runs with run_summary.
CONTROL_TYPES: dict[str, Fields] = {
    "auth": ({"token": is_text}, {}),
    "subscribe": (
        {},
        {"run_id": optional(is_text), "since": optional(is_int), "epoch": optional(is_text)},
    ),
    "unsubscribe": ({}, {"run_id": optional(is_text)}),
    "ping": ({}, {}),
    "authenticated": ({"can_publish": is_bool}, {}),
    "ack": ({"run_id": is_text, "seq": is_count}, {"msg_id": optional(is_text)}),
    "rejected": ({"reason": is_text}, {"msg_id": optional(is_text), "retry": is_bool}),
    "replay_end": (
        {},
        {
            "run_id": optional(is_text),
            "last_seq": optional(is_int),
            "epoch": is_text,  # the relay database's identity
            "recovered": optional(is_bool),  # null: the subscribe named no epoch
        },
    ),
    "pong": ({}, {}),
    "run_summary": RUN_SUMMARY,
}
CLIENT_CONTROL_TYPES = frozenset({"auth", "subscribe", "unsubscribe", "ping"})


_CREDENTIAL = re.compile(r"(authorization\W+\s*(?:bearer\s+)?)\S+", re.IGNORECASE)


class RedactCredentials(logging.Filter):
    """Blank the credential of any ``Authorization`` header in a log record.

    websockets logs every handshake header at DEBUG; with this filter on its logger, a
    debugging session never writes a publisher or viewer token to the log.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if "uthorization" in text or "UTHORIZATION" in text:
            record.msg, record.args = _CREDENTIAL.sub(r"\1<redacted>", text), ()
        return True
