"""The envelope every message shares, and how deep a message may nest.

:func:`check_envelope` checks ``type``, ``timestamp``, ``data`` and the optional top-level
fields; :func:`check_nesting` bounds the depth of objects and arrays. The ``data`` of each
type is checked by :func:`fl_stream.monitor.checks.check_fields`.

:mod:`fl_stream.monitor.protocol` applies both; import from there.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from .checks import Check, MessageError, is_text, json_kind, mismatch

__all__ = ["check_envelope", "check_nesting", "too_deep"]


def check_envelope(message: Any, optional_fields: Mapping[str, Check]) -> None:
    """Check a message's envelope: ``type``, ``timestamp``, ``data`` and ``optional_fields``.

    Raises:
        MessageError: the first problem, naming the field.
    """
    if not isinstance(message, dict):
        raise MessageError(f"message: expected a JSON object, got {json_kind(message)}")
    for field in ("type", "timestamp", "data"):
        if field not in message:
            raise MessageError(f"{field}: missing; every message needs type, timestamp, data")
    if not isinstance(message["type"], str) or not message["type"]:
        raise MessageError("type: expected a non-empty string")
    if not is_text(message["type"]):
        raise mismatch("type", is_text, message["type"])
    _check_timestamp(message["timestamp"])
    if not isinstance(message["data"], dict):
        raise MessageError(f"data: expected a JSON object, got {json_kind(message['data'])}")
    for field, check in optional_fields.items():
        if field in message and not check(message[field]):
            raise mismatch(field, check, message[field])


def check_nesting(value: Any, limit: int) -> None:
    """Check that ``value`` nests objects and arrays at most ``limit`` levels deep.

    ``{}`` is 1 level, ``{"a": []}`` 2. The walk stops at ``limit``, so a hostile depth
    cannot exhaust the stack.

    Raises:
        MessageError: it nests deeper.
    """
    if isinstance(value, (dict, list)) and not _nests_within(value, limit):
        raise too_deep(limit)


def too_deep(limit: int) -> MessageError:
    """The error for a message nested deeper than ``limit`` levels."""
    return MessageError(f"message: nested deeper than {limit} levels of objects and arrays")


def _nests_within(container: dict[str, Any] | list[Any], levels: int) -> bool:
    if levels <= 0:
        return False
    for child in container.values() if isinstance(container, dict) else container:
        if isinstance(child, (dict, list)) and not _nests_within(child, levels - 1):
            return False
    return True


def _check_timestamp(value: Any) -> None:
    if not isinstance(value, str):
        raise MessageError("timestamp: expected an ISO-8601 string")
    if not value.isascii():  # fromisoformat() takes any character between date and time
        raise MessageError(f"timestamp: {value[:40]!r} is not ISO-8601 (ASCII only)")
    try:
        datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise MessageError(f"timestamp: {value[:40]!r} is not ISO-8601") from None
