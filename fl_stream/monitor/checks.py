"""The field checks the protocol's message tables are made of.

A check is a plain predicate (``check(value) -> bool``, fast: validation runs on the training
thread for every message) with a ``description`` attribute, the text an error message gives
after "expected". :func:`check_fields` applies a table of them to a ``data`` object and names
the innermost offending field when one fails, e.g. ``data.clients[0].metrics.loss``. A
:data:`Relation` is a rule between fields of one object (``batch <= num_batches``, made by
:func:`at_most`), which :func:`check_fields` applies once the fields themselves passed.

:mod:`fl_stream.monitor.protocol` declares the messages and re-exports what callers need from
here (``MessageError``, ``NON_FINITE``); import from there.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

__all__ = [
    "INT64_MAX",
    "INT64_MIN",
    "INT64_RANGE",
    "NON_FINITE",
    "Check",
    "Fields",
    "MessageError",
    "Relation",
    "at_most",
    "check_fields",
    "describe",
    "describe_fields",
    "is_bool",
    "is_count",
    "is_id",
    "is_int",
    "is_metric_value",
    "is_metrics",
    "is_non_negative",
    "is_number",
    "is_positive",
    "is_text",
    "is_unicode",
    "json_kind",
    "list_of",
    "mismatch",
    "one_of",
    "optional",
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


# A rule between fields of one object: ``relation(data, path)`` is the error, or None.
Relation = Callable[[Mapping[str, Any], str], MessageError | None]


def _described(description: str) -> Callable[[Check], Check]:
    def attach(check: Check) -> Check:
        check.description = description  # type: ignore[attr-defined]
        return check

    return attach


INT64_RANGE = "integers must fit in 64 bits (-2**63 to 2**63-1)"


def _int_out_of_range(value: Any, path: str) -> MessageError | None:
    if isinstance(value, int) and not isinstance(value, bool) and not is_int(value):
        return MessageError(f"{path}: {_shown(value)} is out of range; {INT64_RANGE}")
    return None


def _integer(minimum: int, description: str) -> Check:
    """A check for a 64-bit integer >= ``minimum`` (never a bool)."""

    def check(value: Any) -> bool:
        return (
            isinstance(value, int) and not isinstance(value, bool) and minimum <= value <= INT64_MAX
        )

    check.description = description  # type: ignore[attr-defined]
    check.locate = _int_out_of_range  # type: ignore[attr-defined]
    return check


is_int = _integer(INT64_MIN, "an integer")
is_count = _integer(0, "an integer >= 0")
is_positive = _integer(1, "an integer >= 1")


@_described('a finite number or "NaN"/"Infinity"/"-Infinity"')
def is_number(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, int):  # never infinite, however large (math.isfinite would overflow)
        return not isinstance(value, bool)
    return isinstance(value, str) and value in NON_FINITE


@_described("a finite number >= 0")
def is_non_negative(value: Any) -> bool:
    return is_number(value) and not isinstance(value, str) and value >= 0


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
                return mismatch(f"{path}.{key}", is_metric_value, item)
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


def at_most(field: str, bound: str) -> Relation:
    """A relation: ``field <= bound`` when both are present (the error names ``field``)."""
    description = f"{field} <= {bound}"

    def relation(data: Mapping[str, Any], path: str) -> MessageError | None:
        if field in data and bound in data and data[field] > data[bound]:
            shown = f"{_shown(data[field])} > {_shown(data[bound])}"
            return MessageError(f"{path}.{field}: expected {description}, got {shown}")
        return None

    relation.description = description  # type: ignore[attr-defined]
    return relation


_MISSING = object()


def check_fields(
    data: Mapping[str, Any],
    required: Mapping[str, Check],
    optional_fields: Mapping[str, Check],
    path: str = "data",
    absent: Any = _MISSING,
    relations: Sequence[Relation] = (),
) -> None:
    """Check ``data`` against a table of fields, then against ``relations`` between them.

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
            raise mismatch(f"{path}.{field}", check, value)
    for field, check in optional_fields.items():
        if field in data and not check(data[field]):
            raise mismatch(f"{path}.{field}", check, data[field])
    for relation in relations:
        error = relation(data, path)
        if error is not None:
            raise error


def describe(check: Check | Relation) -> str:
    """What ``check`` (or a relation) accepts, as errors and the protocol document say it."""
    return getattr(check, "description", None) or check.__name__


def describe_fields(fields: Fields, relations: Sequence[Relation] = ()) -> dict[str, Any]:
    """A table of fields as JSON: ``{"required": {name: what}, "optional": {...}}``.

    With ``relations``, also ``"relations": ["batch <= num_batches", ...]``.
    """
    required, optional_fields = fields
    document: dict[str, Any] = {
        "required": {name: describe(check) for name, check in required.items()},
        "optional": {name: describe(check) for name, check in optional_fields.items()},
    }
    if relations:
        document["relations"] = [describe(relation) for relation in relations]
    return document


def mismatch(path: str, check: Check, value: Any) -> MessageError:
    """The error for ``value`` failing ``check`` at ``path``, at its innermost offending field.

    E.g. ``data.metrics.loss: expected a number ...`` for a bad metric of ``data.metrics``.
    """
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
