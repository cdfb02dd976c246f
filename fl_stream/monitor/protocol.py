"""The fl-stream wire format: one envelope, its message types, builders and one validator.

Every message is a JSON object ``{"type": str, "timestamp": ISO-8601 UTC, "data": object}``.
A run adds ``run_id`` at the top level of every message it sends and ``msg_id`` (unique per
sender) so the relay can drop resent duplicates; the relay adds ``seq`` (1, 2, 3, ... per run).

The sender, the relay, the dashboard's expectations and the tests all use this module: nothing
else declares message shapes.

Non-finite floats are not valid JSON. They are encoded as the strings ``"NaN"``,
``"Infinity"`` and ``"-Infinity"``, which JavaScript's ``Number()`` and Python's ``float()``
both turn back into the same values.
"""

from __future__ import annotations

import json
import math
import numbers
import os
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

__all__ = [
    "CONTROL_TYPES",
    "DEFAULT_RELAY_HOST",
    "DEFAULT_RELAY_PORT",
    "DEFAULT_RELAY_URL",
    "MESSAGE_TYPES",
    "METRIC_NAMES",
    "NON_FINITE",
    "RELAY_TOKEN_ENV",
    "EncodingError",
    "MessageError",
    "decode_message",
    "encode_message",
    "lower_is_better",
    "make_message",
    "relay_token",
    "to_json_value",
    "utc_timestamp",
    "validate_message",
]

Message = dict[str, Any]

# Where the relay listens unless told otherwise: loopback only, so a default start never
# exposes the relay (and its publish endpoint) to the network.
DEFAULT_RELAY_HOST = "127.0.0.1"
DEFAULT_RELAY_PORT = 8765
DEFAULT_RELAY_URL = f"ws://{DEFAULT_RELAY_HOST}:{DEFAULT_RELAY_PORT}"
# One variable holds the publisher token for the relay and for every publisher.
RELAY_TOKEN_ENV = "FL_STREAM_RELAY_TOKEN"


def relay_token(explicit: str | None = None) -> str | None:
    """The publisher token to use: ``explicit`` unless empty, else ``$FL_STREAM_RELAY_TOKEN``.

    Returns None when neither is set (an open relay). Every publisher and the relay itself
    read the token through this one rule.
    """
    return explicit or os.environ.get(RELAY_TOKEN_ENV) or None


NON_FINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}

# The original design's metrics, in the order dashboards show them.
METRIC_NAMES = ("loss", "accuracy", "precision", "recall", "f1", "auroc")


def lower_is_better(metric: str) -> bool:
    """Whether smaller values of ``metric`` are better: a loss (``loss``, ``val_loss``, ...)."""
    return metric.endswith("loss")


# The statuses a finished run may report in ``training_end``.
RUN_STATUSES = ("completed", "early_stopped", "failed")


class MessageError(ValueError):
    """A message does not follow the wire format; the text names the offending field."""


class EncodingError(MessageError):
    """A value cannot be encoded as JSON; the text names the field that holds it."""


def utc_timestamp() -> str:
    """Return the current time as an ISO-8601 UTC string with microseconds."""
    return datetime.now(UTC).isoformat()


# --------------------------------------------------------------------------- encoding


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


_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


def encode_message(message: Message) -> str:
    """Encode a message (already made of JSON-ready values) as compact JSON text."""
    return _ENCODER.encode(message)


def decode_message(text: str | bytes) -> Message:
    """Parse JSON text and validate it as a message.

    Raises:
        MessageError: the text is not JSON, or not a valid message.
    """
    try:
        message = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MessageError(f"not valid JSON: {exc}") from None
    return validate_message(message)


# --------------------------------------------------------------------------- validation

Check = Callable[[Any], bool]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_count(value: Any) -> bool:
    return _is_int(value) and value >= 0


def _is_number(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, int):  # never infinite, however large (math.isfinite would overflow)
        return not isinstance(value, bool)
    return isinstance(value, str) and value in NON_FINITE


def _is_metric_value(value: Any) -> bool:
    return value is None or _is_number(value)


def _is_metrics(value: Any) -> bool:
    if not isinstance(value, dict):
        return False
    for key, item in value.items():  # a plain loop: cheaper than all() over a generator
        if not (isinstance(key, str) and (item is None or _is_number(item))):
            return False
    return True


def _is_text(value: Any) -> bool:
    return isinstance(value, str)


def _is_bool(value: Any) -> bool:
    return isinstance(value, bool)


def _one_of(*allowed: str) -> Check:
    def check(value: Any) -> bool:
        return value in allowed

    check.__doc__ = "one of " + ", ".join(repr(a) for a in allowed)
    return check


_CLIENT_FIELDS: dict[str, Check] = {
    "client_id": _is_text,
    "num_examples": _is_count,
    "metrics": _is_metrics,
}


def _is_client_list(value: Any) -> bool:
    return isinstance(value, list) and all(
        isinstance(c, dict) and all(check(c.get(k)) for k, check in _CLIENT_FIELDS.items())
        for c in value
    )


def _is_optional_int(value: Any) -> bool:
    return value is None or _is_int(value)


def _is_optional_text(value: Any) -> bool:
    return value is None or _is_text(value)


_DESCRIPTIONS: dict[Check, str] = {
    _is_int: "an integer",
    _is_count: "an integer >= 0",
    _is_number: 'a finite number or "NaN"/"Infinity"/"-Infinity"',
    _is_metrics: 'an object of metric name -> number, "NaN"/"Infinity"/"-Infinity" or null',
    _is_metric_value: 'a number, "NaN"/"Infinity"/"-Infinity" or null',
    _is_text: "a string",
    _is_bool: "true or false",
    _is_client_list: "a list of {client_id: str, num_examples: int >= 0, metrics: {...}}",
    _is_optional_int: "an integer or null",
    _is_optional_text: "a string or null",
}

_PHASES = _one_of("train", "val")
_ROUND_PHASES = _one_of("train", "evaluate")
_STATUSES = _one_of(*RUN_STATUSES)

# type -> (required fields, optional fields); each field maps to its check.
MESSAGE_TYPES: dict[str, tuple[dict[str, Check], dict[str, Check]]] = {
    "training_mode": (
        {"is_federated": _is_bool, "num_rounds": _is_count, "num_clients": _is_count},
        {"num_epochs": _is_count},  # a centralized run's planned epochs (num_rounds is 0)
    ),
    "epoch_end": (
        {"epoch": _is_count, "phase": _PHASES, "metrics": _is_metrics},
        {},
    ),
    "round_metrics": (
        {"round": _is_count, "total_rounds": _is_count, "metrics": _is_metrics},
        {"phase": _ROUND_PHASES, "num_clients": _is_count},
    ),
    "round_end": (
        {
            "round": _is_count,
            "total_rounds": _is_count,
            "fit_metrics": _is_metrics,
            "eval_metrics": _is_metrics,
        },
        {},
    ),
    "client_metrics": (
        {
            "round": _is_count,
            "total_rounds": _is_count,
            "phase": _ROUND_PHASES,
            "clients": _is_client_list,
        },
        {},
    ),
    "training_end": (
        {"run_id": _is_text, "status": _STATUSES, "final_metrics": _is_metrics},
        {"best_epoch": _is_optional_int, "best_round": _is_optional_int},
    ),
    "early_stopping": (
        {
            "epoch": _is_count,
            "best_metric_value": _is_number,
            "metric_name": _is_text,
            "patience": _is_count,
            "reason": _is_text,
        },
        {},
    ),
    "error": ({"error": _is_text, "error_type": _is_text}, {}),
}

# Control messages between the relay and its clients; never stored or broadcast.
#   client -> relay: subscribe {run_id: str | null, since: int | null}
#                    unsubscribe {run_id: str | null}
#                    ping {}
#   relay -> client: ack {run_id, seq, msg_id}      (one per accepted message)
#                    rejected {reason, msg_id}      (a refused message, and why)
#                    replay_end {run_id, last_seq}  (stored messages sent; live ones follow)
#                    pong {}
CONTROL_TYPES: dict[str, tuple[dict[str, Check], dict[str, Check]]] = {
    "subscribe": ({}, {"run_id": _is_optional_text, "since": _is_optional_int}),
    "unsubscribe": ({}, {"run_id": _is_optional_text}),
    "ping": ({}, {}),
    "ack": ({"run_id": _is_text, "seq": _is_count}, {"msg_id": _is_optional_text}),
    "rejected": ({"reason": _is_text}, {"msg_id": _is_optional_text}),
    "replay_end": ({}, {"run_id": _is_optional_text, "last_seq": _is_optional_int}),
    "pong": ({}, {}),
}

_ENVELOPE_OPTIONAL: dict[str, Check] = {
    "run_id": _is_text,
    "msg_id": _is_text,
    "seq": _is_count,
}


def validate_message(message: Any) -> Message:
    """Check that ``message`` follows the wire format and return it unchanged.

    Known types (the design's seven, ``client_metrics`` and the control types) must carry
    their required ``data`` fields with the right types. Any other type with a valid
    envelope is accepted as a custom message, its ``data`` unchecked.

    Raises:
        MessageError: the first problem found, naming the field, e.g.
            ``data.metrics: expected an object of metric name -> number, ...``.
    """
    if not isinstance(message, dict):
        raise MessageError(f"message: expected a JSON object, got {_json_kind(message)}")
    for field in ("type", "timestamp", "data"):
        if field not in message:
            raise MessageError(f"{field}: missing; every message needs type, timestamp, data")
    if not isinstance(message["type"], str) or not message["type"]:
        raise MessageError("type: expected a non-empty string")
    _check_timestamp(message["timestamp"])
    if not isinstance(message["data"], dict):
        raise MessageError(f"data: expected a JSON object, got {_json_kind(message['data'])}")
    for field, check in _ENVELOPE_OPTIONAL.items():
        if field in message and not check(message[field]):
            raise MessageError(f"{field}: expected {_describe(check)}")
    spec = MESSAGE_TYPES.get(message["type"]) or CONTROL_TYPES.get(message["type"])
    if spec is not None:
        _check_fields(message["data"], *spec)
    return message


def _check_timestamp(value: Any) -> None:
    if not isinstance(value, str):
        raise MessageError("timestamp: expected an ISO-8601 string")
    try:
        datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise MessageError(f"timestamp: {value[:40]!r} is not ISO-8601") from None


def _check_fields(data: dict, required: dict[str, Check], optional: dict[str, Check]) -> None:
    for field, check in required.items():
        if field not in data:
            raise MessageError(f"data.{field}: missing")
        if not check(data[field]):
            raise _mismatch(f"data.{field}", check, data[field])
    for field, check in optional.items():
        if field in data and not check(data[field]):
            raise _mismatch(f"data.{field}", check, data[field])


def _mismatch(path: str, check: Check, value: Any) -> MessageError:
    """Describe a failed check at the innermost offending field, e.g. ``data.metrics.loss``."""
    if check is _is_metrics and isinstance(value, dict):
        for key, item in value.items():
            if not _is_metric_value(item):
                return _mismatch(f"{path}.{key}", _is_metric_value, item)
    if check is _is_client_list and isinstance(value, list):
        for i, client in enumerate(value):
            if not isinstance(client, dict):
                return MessageError(f"{path}[{i}]: expected an object, got {_shown(client)}")
            for key, field_check in _CLIENT_FIELDS.items():
                if not field_check(client.get(key)):
                    return _mismatch(f"{path}[{i}].{key}", field_check, client.get(key))
    return MessageError(f"{path}: expected {_describe(check)}, got {_shown(value)}")


def _describe(check: Check) -> str:
    return _DESCRIPTIONS.get(check) or check.__doc__ or check.__name__


def _shown(value: Any) -> str:
    if isinstance(value, (dict, list)):
        return _json_kind(value)
    return repr(value)[:60]


def _json_kind(value: Any) -> str:
    kinds = {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}
    if value is None:
        return "null"
    return kinds.get(type(value), "a number")


# --------------------------------------------------------------------------- building


def make_message(
    message_type: str,
    data: Mapping[str, Any],
    *,
    run_id: str | None = None,
    msg_id: str | None = None,
    timestamp: str | None = None,
) -> Message:
    """Build a validated message with JSON-ready values.

    Raises:
        EncodingError: a value in ``data`` cannot be encoded (the field is named).
        MessageError: the message does not follow the wire format.
    """
    message: Message = {
        "type": message_type,
        "timestamp": timestamp or utc_timestamp(),
        "data": to_json_value(data),
    }
    if run_id is not None:
        message["run_id"] = run_id
    if msg_id is not None:
        message["msg_id"] = msg_id
    return validate_message(message)
