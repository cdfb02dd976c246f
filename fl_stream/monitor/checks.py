"""The field checks the protocol's message tables are made of.

A check is a plain predicate (``check(value) -> bool``, fast: validation runs on the training
thread for every message) with a ``description`` attribute, the text an error message gives
after "expected". :func:`check_fields` applies a table of them to a ``data`` object and names
the innermost offending field when one fails, e.g. ``data.clients[0].metrics.loss``.

:mod:`fl_stream.monitor.protocol` declares the messages and re-exports what callers need from
here (``MessageError``, ``NON_FINITE``); import from there.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

__all__ = [
    "INT64_MAX",
    "INT64_MIN",
    "INT64_RANGE",
    "NON_FINITE",
    "Check",
    "Fields",
    "MessageError",
    "check_envelope",
    "check_fields",
    "check_nesting",
    "describe",
    "describe_fields",
    "is_bool",
    "is_count",
    "is_id",
    "is_int",
    "is_metric_value",
    "is_metrics",
    "is_number",
    "is_text",
    "is_unicode",
    "json_kind",
    "list_of",
    "one_of",
    "optional",
    "too_deep",
]

Check = Callable[[Any], bool]
# A table of fields: (required, optional), each field name -> its check.
Fields = tuple[Mapping[str, Check], Mapping[str, Check]]

# Non-finite floats are not valid JSON: on the wire they are these strings, which
# JavaScript's Number() and Python's float() both read back as the same values.
NON_FINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}
# Integers must fit SQLite's (and most languages') 64-bit signed integers.
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1


class MessageError(ValueError):
    """A message does not follow the wire format; the text names the offending field."""


def _described(description: str) -> Callable[[Check], Check]:
    def attach(check: Check) -> Check:
        check.description = description  # type: ignore[attr-defined]
        return check

    return attach


@_described("an integer")
def is_int(value: Any) -> bool:
    return (
        isinstance(value, int) and not isinstance(value, bool) and INT64_MIN <= value <= INT64_MAX
    )


@_described("an integer >= 0")
def is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= INT64_MAX


INT64_RANGE = "integers must fit in 64 bits (-2**63 to 2**63-1)"


def _int_out_of_range(value: Any, path: str) -> MessageError | None:
    if isinstance(value, int) and not isinstance(value, bool) and not is_int(value):
        return MessageError(f"{path}: {_shown(value)} is out of range; {INT64_RANGE}")
    return None


is_int.locate = _int_out_of_range  # type: ignore[attr-defined]
is_count.locate = _int_out_of_range  # type: ignore[attr-defined]


@_described('a finite number or "NaN"/"Infinity"/"-Infinity"')
def is_number(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, int):  # never infinite, however large (math.isfinite would overflow)
        return not isinstance(value, bool)
    return isinstance(value, str) and value in NON_FINITE


@_described('a number, "NaN"/"Infinity"/"-Infinity" or null')
def is_metric_value(value: Any) -> bool:
    return value is None or is_number(value)


@_described('an object of metric name -> number, "NaN"/"Infinity"/"-Infinity" or null')
def is_metrics(value: Any) -> bool:
    if not isinstance(value, dict):
        return False
    for key, item in value.items():  # a plain loop: cheaper than all() over a generator
        if not (isinstance(key, str) and (item is None or is_number(item))):
            return False
    return True


def _first_bad_metric(value: Any, path: str) -> MessageError | None:
    if isinstance(value, dict):
        for key, item in value.items():
            if not is_metric_value(item):
                return _mismatch(f"{path}.{key}", is_metric_value, item)
    return None


is_metrics.locate = _first_bad_metric  # type: ignore[attr-defined]


@_described("an object of setting name -> string, number, true/false or null")
def is_config(value: Any) -> bool:
    if not isinstance(value, dict):
        return False
    for key, item in value.items():
        if not isinstance(key, str):
            return False
        if not (item is None or isinstance(item, (str, bool, int)) or is_number(item)):
            return False
    return True


def is_unicode(text: str) -> bool:
    """Whether ``text`` can be encoded as UTF-8: no lone surrogate such as ``"\\ud800"``.

    JSON's ``\\u`` escapes can spell one; SQLite, UTF-8 files and most programs cannot
    store it.
    """
    if text.isascii():
        return True
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


@_described("a string")
def is_text(value: Any) -> bool:
    return isinstance(value, str) and is_unicode(value)


def _not_unicode(value: Any, path: str) -> MessageError | None:
    if isinstance(value, str) and not is_unicode(value):
        return MessageError(
            f"{path}: not valid Unicode text (it holds a lone surrogate such as \\ud800); "
            "send text that can be encoded as UTF-8"
        )
    return None


is_text.locate = _not_unicode  # type: ignore[attr-defined]


@_described("a string or an integer")
def is_id(value: Any) -> bool:
    return is_text(value) or is_int(value)


def _bad_id(value: Any, path: str) -> MessageError | None:
    return _not_unicode(value, path) or _int_out_of_range(value, path)


is_id.locate = _bad_id  # type: ignore[attr-defined]


@_described("true or false")
def is_bool(value: Any) -> bool:
    return isinstance(value, bool)


def one_of(*allowed: str) -> Check:
    """A check that passes exactly the ``allowed`` values."""

    def check(value: Any) -> bool:
        return value in allowed

    check.description = "one of " + ", ".join(repr(a) for a in allowed)  # type: ignore[attr-defined]
    check.allowed = allowed  # type: ignore[attr-defined]
    return check


def optional(check: Check) -> Check:
    """``check``, or null."""

    def check_or_null(value: Any) -> bool:
        return value is None or check(value)

    check_or_null.description = f"{describe(check)} or null"  # type: ignore[attr-defined]
    if hasattr(check, "locate"):
        check_or_null.locate = check.locate  # type: ignore[attr-defined]
    return check_or_null


def list_of(name: str, fields: Fields) -> Check:
    """A check for a list of objects (``name`` in messages), each with ``fields``."""
    required, optional_fields = fields

    def check(value: Any) -> bool:
        if not isinstance(value, list):
            return False
        for item in value:
            if not isinstance(item, dict):
                return False
            for key, field_check in required.items():
                if not field_check(item.get(key)):
                    return False
            for key, field_check in optional_fields.items():
                if key in item and not field_check(item[key]):
                    return False
        return True

    def locate(value: Any, path: str) -> MessageError | None:
        if not isinstance(value, list):
            return None
        for i, item in enumerate(value):
            if not isinstance(item, dict):
                return MessageError(f"{path}[{i}]: expected an object, got {_shown(item)}")
            try:
                check_fields(item, required, optional_fields, f"{path}[{i}]", absent=None)
            except MessageError as exc:
                return exc
        return None

    names = ", ".join(required) + "".join(f", optional {key}" for key in optional_fields)
    check.description = f"a list of {name} objects {{{names}}}"  # type: ignore[attr-defined]
    check.locate = locate  # type: ignore[attr-defined]
    check.fields = fields  # type: ignore[attr-defined]
    check.item_name = name  # type: ignore[attr-defined]
    return check


_MISSING = object()


def check_fields(
    data: Mapping[str, Any],
    required: Mapping[str, Check],
    optional_fields: Mapping[str, Check],
    path: str = "data",
    absent: Any = _MISSING,
) -> None:
    """Check ``data`` against a table of fields.

    A missing required field is reported as missing, unless ``absent`` is given: then it is
    checked as that value (a list entry's missing field reads as null).

    Raises:
        MessageError: the first problem, at the innermost field, e.g. ``data.epoch: ...``.
    """
    for field, check in required.items():
        if field not in data:
            if absent is _MISSING:
                raise MessageError(f"{path}.{field}: missing")
            value = absent
        else:
            value = data[field]
        if not check(value):
            raise _mismatch(f"{path}.{field}", check, value)
    for field, check in optional_fields.items():
        if field in data and not check(data[field]):
            raise _mismatch(f"{path}.{field}", check, data[field])


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
    if not is_unicode(message["type"]):
        raise _not_unicode(message["type"], "type")  # type: ignore[misc]
    _check_timestamp(message["timestamp"])
    if not isinstance(message["data"], dict):
        raise MessageError(f"data: expected a JSON object, got {json_kind(message['data'])}")
    for field, check in optional_fields.items():
        if field in message and not check(message[field]):
            raise _mismatch(field, check, message[field])


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


def describe(check: Check) -> str:
    """What ``check`` accepts, as error messages and the protocol document say it."""
    return getattr(check, "description", None) or check.__name__


def describe_fields(fields: Fields) -> dict[str, dict[str, str]]:
    """A table of fields as JSON: ``{"required": {name: what}, "optional": {...}}``."""
    required, optional_fields = fields
    return {
        "required": {name: describe(check) for name, check in required.items()},
        "optional": {name: describe(check) for name, check in optional_fields.items()},
    }


def _mismatch(path: str, check: Check, value: Any) -> MessageError:
    """Describe a failed check at the innermost offending field, e.g. ``data.metrics.loss``."""
    locate = getattr(check, "locate", None)
    inner = locate(value, path) if locate is not None else None
    return inner or MessageError(f"{path}: expected {describe(check)}, got {_shown(value)}")


def _shown(value: Any) -> str:
    if isinstance(value, (dict, list)):
        return json_kind(value)
    if isinstance(value, int) and value.bit_length() > 128:  # repr() refuses > 4300 digits
        return f"an integer of {value.bit_length()} bits"
    return repr(value)[:60]


def json_kind(value: Any) -> str:
    """``value``'s JSON kind in words: "an object", "an array", "null", ..."""
    kinds = {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}
    if value is None:
        return "null"
    return kinds.get(type(value), "a number")
