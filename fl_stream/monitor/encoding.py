"""JSON encoding of wire messages: plain JSON-ready values from numpy, torch and friends.

Non-finite floats are not valid JSON: they become the strings ``"NaN"``, ``"Infinity"`` and
``"-Infinity"`` (:data:`~fl_stream.monitor.checks.NON_FINITE`), which JavaScript's ``Number()``
and Python's ``float()`` both turn back into the same values.

:mod:`fl_stream.monitor.protocol` re-exports everything here; import from there.
"""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Mapping
from typing import Any

from .checks import MessageError

__all__ = ["EncodingError", "encode_message", "to_json_value"]


class EncodingError(MessageError):
    """A value cannot be encoded as JSON; the text names the field that holds it."""


def to_json_value(value: Any, field: str = "data") -> Any:
    """Return ``value`` as plain JSON-ready Python (dict, list, str, int, float, bool, None).

    Accepts numpy scalars, 0-d numpy arrays and one-element torch tensors (anything with
    ``.item()`` and a single element); non-finite floats become ``"NaN"``, ``"Infinity"``
    or ``"-Infinity"``.

    Raises:
        EncodingError: ``value`` (or something inside it) cannot be encoded; the message
            names its path, e.g. ``data.metrics.loss``.
    """
    try:
        return _plain(value)
    except _Unencodable as exc:
        raise EncodingError(f"{field}{exc.path}: {exc.problem}") from None


_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


def encode_message(message: Mapping[str, Any]) -> str:
    """Encode a message (already made of JSON-ready values) as compact JSON text."""
    return _ENCODER.encode(message)


class _Unencodable(Exception):
    """Raised by :func:`_plain`; each container adds its key to ``path`` on the way up.

    Building the path only on failure keeps the common case cheap: this runs on the
    training thread for every message.
    """

    def __init__(self, problem: str) -> None:
        super().__init__(problem)
        self.problem = problem
        self.path = ""


def _plain(value: Any) -> Any:
    kind = type(value)
    # Exact-type checks first: metrics are mostly plain floats.
    if kind is float:
        return value if math.isfinite(value) else _non_finite_name(value)
    if kind is str or kind is int or kind is bool or value is None:
        return value
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise _Unencodable(f"keys must be strings, got {type(key).__name__} {key!r}")
            try:
                out[key] = _plain(item)
            except _Unencodable as exc:
                exc.path = f".{key}{exc.path}"
                raise
        return out
    if isinstance(value, (list, tuple)):
        items = []
        for i, item in enumerate(value):
            try:
                items.append(_plain(item))
            except _Unencodable as exc:
                exc.path = f"[{i}]{exc.path}"
                raise
        return items
    # Subclasses of the plain types: numpy.float64, IntEnum, (str, Enum) members.
    if isinstance(value, float):
        return _plain(float(value))
    if isinstance(value, int):
        return int(value)
    if isinstance(value, str):
        return str.__str__(value)
    item = getattr(value, "item", None)
    if callable(item):
        count = _element_count(value)
        if count == 1:
            return _plain(_as_python_scalar(item()))
        raise _Unencodable(
            f"cannot encode {kind.__name__} with {count} elements as one value; "
            "pass a scalar (e.g. tensor.item()) or a list (e.g. array.tolist())"
        )
    if isinstance(value, numbers.Real):
        return _plain(float(value))
    raise _Unencodable(
        f"cannot encode {kind.__name__} as JSON; "
        "pass a number, string, bool, list, dict, numpy scalar or one-element tensor"
    )


def _non_finite_name(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    return "Infinity" if value > 0 else "-Infinity"


def _element_count(value: Any) -> int:
    size = getattr(value, "size", None)
    if callable(size):  # torch.Tensor.size() is a method; numel() is the count
        return int(value.numel())
    return int(size) if size is not None else 1


def _as_python_scalar(item: Any) -> Any:
    if isinstance(item, (bool, int, float, str)):
        return item
    raise _Unencodable(f"cannot encode {type(item).__name__} as JSON")
