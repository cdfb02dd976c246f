"""The fl-stream wire protocol: the one place that declares it.

Every message is a JSON object ``{"type": str, "timestamp": ISO-8601 UTC, "data": object}``.
A run adds ``run_id`` at the top level of every message it sends and ``msg_id`` (unique per
sender) so the relay can drop resent duplicates; the relay adds ``seq`` (1, 2, 3, ... per run).
Non-finite numbers travel as the strings ``"NaN"``, ``"Infinity"``, ``"-Infinity"``.

Declared here: every message type with its required and optional ``data`` fields
(:data:`MESSAGE_TYPES`) and the rules between them (:data:`MESSAGE_RELATIONS`), the phases of
an epoch and of a round and their display names, where a round's eval metrics come from, the
original design's metric names and which metrics are better lower. Declared in
:mod:`fl_stream.monitor.control` and exported from here too: the control types
(:data:`CONTROL_TYPES`), run statuses and modes and how they are shown, the default run, the
relay's default address and the token variables.

The sender, the relay and the tests import this module; the dashboard gets the same facts from
the relay, which serves :func:`describe` at ``/api/protocol``. The field checks the tables use
live in :mod:`fl_stream.monitor.checks`, the envelope's in :mod:`fl_stream.monitor.envelope`,
the JSON encoding in :mod:`fl_stream.monitor.encoding`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from .checks import (
    INT64_MAX,
    INT64_MIN,
    INT64_RANGE,
    NON_FINITE,
    Fields,
    MessageError,
    Relation,
    at_most,
    check_fields,
    describe_fields,
    is_bool,
    is_config,
    is_count,
    is_id,
    is_int,
    is_metrics,
    is_non_negative,
    is_number,
    is_positive,
    is_text,
    list_of,
    one_of,
    optional,
)
from .control import (
    CENTRALIZED,
    CLIENT_CONTROL_TYPES,
    COMPLETED,
    CONTROL_TYPES,
    DEFAULT_RELAY_HOST,
    DEFAULT_RELAY_PORT,
    DEFAULT_RELAY_URL,
    DEFAULT_RUN,
    EARLY_STOPPED,
    FAILED,
    FEDERATED,
    MAX_MESSAGE_BYTES,
    RELAY_TOKEN_ENV,
    RUN_STATUSES,
    RUN_SUMMARY,
    RUNNING,
    STATUS_LABELS,
    VIEWER_TOKEN_ENV,
    relay_token,
    run_status,
    viewer_token,
)
from .encoding import EncodingError, encode_message, to_json_value
from .envelope import check_envelope, check_nesting, too_deep

__all__ = [
    "CENTRALIZED",
    "CLIENT_CONTROL_TYPES",
    "CLIENT_ENTRY",
    "COMPLETED",
    "CONTROL_TYPES",
    "DEFAULT_EVAL_SOURCE",
    "DEFAULT_RELAY_HOST",
    "DEFAULT_RELAY_PORT",
    "DEFAULT_RELAY_URL",
    "MAX_MESSAGE_BYTES",
    "DEFAULT_ROUND_PHASE",
    "DEFAULT_RUN",
    "DURATION_SUFFIXES",
    "EARLY_STOPPED",
    "EPOCH_PHASES",
    "EVAL_BY_CLIENTS",
    "EVAL_BY_SERVER",
    "EVAL_SOURCES",
    "FAILED",
    "FEDERATED",
    "FRACTION_METRICS",
    "INT64_MAX",
    "INT64_MIN",
    "LOSS_SUFFIXES",
    "MAX_NESTING",
    "MESSAGE_RELATIONS",
    "MESSAGE_TYPES",
    "METRIC_NAMES",
    "NON_FINITE",
    "RELAY_TOKEN_ENV",
    "ROUND_PHASES",
    "RUNNING",
    "RUN_STATUSES",
    "RUN_SUMMARY",
    "STATUS_LABELS",
    "VIEWER_TOKEN_ENV",
    "EncodingError",
    "Message",
    "MessageError",
    "decode_message",
    "describe",
    "encode_message",
    "is_duration",
    "lower_is_better",
    "make_message",
    "relay_token",
    "run_status",
    "to_json_value",
    "utc_timestamp",
    "validate_message",
    "viewer_token",
]

Message = dict[str, Any]

# --------------------------------------------------------------------------- metrics

# The original design's metrics, in the order dashboards show them.
METRIC_NAMES = ("loss", "accuracy", "precision", "recall", "f1", "auroc")
# Those that are fractions in [0, 1].
FRACTION_METRICS = ("accuracy", "precision", "recall", "f1", "auroc")
# How the names of lower-is-better metrics end (any case): losses (loss, val_loss, ...) and
# durations (train-time, fit_duration, epoch_seconds, ...).
LOSS_SUFFIXES = ("loss",)
DURATION_SUFFIXES = ("time", "duration", "seconds")


def is_duration(metric: str) -> bool:
    """Whether ``metric`` is a duration (``train-time``, ``fit_duration``, ...)."""
    return metric.lower().endswith(DURATION_SUFFIXES)


def lower_is_better(metric: str) -> bool:
    """Whether smaller values of ``metric`` are better: a loss or a duration."""
    return metric.lower().endswith(LOSS_SUFFIXES + DURATION_SUFFIXES)


# --------------------------------------------------------------------------- phases

# The phases of a centralized epoch (epoch_end) -> the name of their line on a chart.
EPOCH_PHASES = {"train": "train", "val": "val"}
# The phases of a federated round (round_metrics, client_metrics) -> their display names.
ROUND_PHASES = {"train": "fit", "evaluate": "eval"}
# round_metrics without a phase (the original format) are the clients' evaluation averages.
DEFAULT_ROUND_PHASE = "evaluate"
# Who computed a round_end's eval_metrics (its eval_source) -> the name of their line: the
# clients' federated evaluation, or the server's own (centralized) evaluation of the
# global model. Without eval_source (the original format) they are the clients'.
EVAL_BY_CLIENTS = "clients"
EVAL_BY_SERVER = "server"
EVAL_SOURCES = {EVAL_BY_CLIENTS: ROUND_PHASES["evaluate"], EVAL_BY_SERVER: "central eval"}
DEFAULT_EVAL_SOURCE = EVAL_BY_CLIENTS

# --------------------------------------------------------------------------- messages

# One client's entry in client_metrics.
CLIENT_ENTRY: Fields = (
    {"client_id": is_text, "num_examples": is_count, "metrics": is_metrics},
    {
        "node_id": is_text,  # the Flower node; a string: 64-bit ids lose precision in JS
        "error": is_text,  # why its reply failed (then num_examples is 0, metrics empty)
        "device": is_text,  # where it trained, e.g. "cpu" or "cuda:0" (the client mod's report)
    },
)

_EPOCH_PHASE = one_of(*EPOCH_PHASES)
_ROUND_PHASE = one_of(*ROUND_PHASES)

# type -> (required fields, optional fields); each field maps to its check.
MESSAGE_TYPES: dict[str, Fields] = {
    "training_mode": (
        {"is_federated": is_bool, "num_rounds": is_count, "num_clients": is_count},
        {
            "num_epochs": is_count,  # a centralized run's planned epochs (num_rounds is 0)
            "config": is_config,  # the run's settings, so runs can be told apart and compared
        },
    ),
    "epoch_end": (
        {"epoch": is_count, "phase": _EPOCH_PHASE, "metrics": is_metrics},
        {},
    ),
    "round_metrics": (
        {"round": is_count, "total_rounds": is_count, "metrics": is_metrics},
        {"phase": _ROUND_PHASE, "num_clients": is_count},
    ),
    "round_end": (
        {
            "round": is_count,
            "total_rounds": is_count,
            "fit_metrics": is_metrics,
            "eval_metrics": is_metrics,
        },
        {"eval_source": one_of(*EVAL_SOURCES)},
    ),
    "client_metrics": (
        {
            "round": is_count,
            "total_rounds": is_count,
            "phase": _ROUND_PHASE,
            "clients": list_of("client", CLIENT_ENTRY),
        },
        {},
    ),
    # A client's live progress through its local epochs, sent by the client itself.
    "client_progress": (
        {
            "round": is_count,  # the server round (0: none known)
            "phase": _ROUND_PHASE,
            "client_id": is_text,  # as in client_metrics: the partition id, else the node id
            "epoch": is_positive,
            "num_epochs": is_positive,
            "batch": is_count,  # batches done in this epoch
            "num_batches": is_count,  # batches per epoch
        },
        {"node_id": is_text, "examples_per_second": is_non_negative, "metrics": is_metrics},
    ),
    "training_end": (
        # run_id: an integer in the original design's example, a string from our producers
        {"run_id": is_id, "status": one_of(*RUN_STATUSES), "final_metrics": is_metrics},
        {
            "best_epoch": optional(is_int),
            "best_round": optional(is_int),
            "best_metric": is_text,  # the metric that picked the best round or epoch
        },
    ),
    "early_stopping": (
        {
            "epoch": is_count,
            "best_metric_value": is_number,
            "metric_name": is_text,
            "patience": is_count,
            "reason": is_text,
        },
        {},
    ),
    "error": ({"error": is_text, "error_type": is_text}, {}),
}
# type -> the rules between its fields, checked once the fields themselves passed.
MESSAGE_RELATIONS: dict[str, tuple[Relation, ...]] = {
    "client_progress": (at_most("epoch", "num_epochs"), at_most("batch", "num_batches")),
}

# How deep objects and arrays may nest in a message (the envelope is the first level).
MAX_NESTING = 32

# The envelope: type, timestamp and data, and optional top-level fields.
_ENVELOPE_REQUIRED = {
    "type": "a non-empty string",
    "timestamp": "an ISO-8601 string",
    "data": "an object",
}
_ENVELOPE_OPTIONAL = {"run_id": is_text, "msg_id": is_text, "seq": is_count}


def utc_timestamp() -> str:
    """Return the current time as an ISO-8601 UTC string with microseconds."""
    return datetime.now(UTC).isoformat()


def validate_message(message: Any) -> Message:
    """Check that ``message`` follows the wire format and return it unchanged.

    Known types (the design's seven, ``client_metrics``, ``client_progress`` and the control
    types) must carry their required ``data`` fields with the right types, and their
    optional ones, when present, too, and keep their :data:`MESSAGE_RELATIONS`. Any other
    type with a valid envelope is accepted as a custom message, its ``data`` unchecked.

    Raises:
        MessageError: the first problem found, naming the field, e.g.
            ``data.metrics: expected an object of metric name -> number, ...``.
    """
    check_envelope(message, _ENVELOPE_OPTIONAL)
    kind = message["type"]
    spec = MESSAGE_TYPES.get(kind) or CONTROL_TYPES.get(kind)
    if spec is not None:
        check_fields(message["data"], *spec, relations=MESSAGE_RELATIONS.get(kind, ()))
    return message


def decode_message(text: str | bytes) -> Message:
    """Parse JSON text and validate it as a message, nested at most :data:`MAX_NESTING` deep.

    Raises:
        MessageError: the text is not JSON, or not a valid message.
    """
    try:
        message = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MessageError(f"not valid JSON: {exc}") from None
    except RecursionError:
        raise too_deep(MAX_NESTING) from None
    except ValueError:  # Python's limit on the digits of an integer (4300)
        raise MessageError(f"message: a number has too many digits; {INT64_RANGE}") from None
    # Fewer brackets than the limit cannot nest deeper: most messages skip the walk.
    opened = text.count("{") + text.count("[") if isinstance(text, str) else MAX_NESTING + 1
    if opened > MAX_NESTING:
        check_nesting(message, MAX_NESTING)
    return validate_message(message)


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


# --------------------------------------------------------------------------- the document


def describe() -> dict[str, Any]:
    """The protocol as one JSON-ready document; the relay serves it at ``/api/protocol``.

    Dashboards take every constant they need from it (metric names, statuses and their
    labels, phase and series names, the default run, ...) instead of declaring their own.
    """
    return {
        "envelope": {
            "required": dict(_ENVELOPE_REQUIRED),
            "optional": describe_fields(({}, _ENVELOPE_OPTIONAL))["optional"],
        },
        "message_types": {
            name: describe_fields(spec, MESSAGE_RELATIONS.get(name, ()))
            for name, spec in MESSAGE_TYPES.items()
        },
        "control_types": {name: describe_fields(spec) for name, spec in CONTROL_TYPES.items()},
        "client_control_types": sorted(CLIENT_CONTROL_TYPES),
        "run_summary": describe_fields(RUN_SUMMARY),
        "max_nesting": MAX_NESTING,
        "client_entry": describe_fields(CLIENT_ENTRY),
        "non_finite": list(NON_FINITE),
        "metric_names": list(METRIC_NAMES),
        "fraction_metrics": list(FRACTION_METRICS),
        "loss_suffixes": list(LOSS_SUFFIXES),
        "duration_suffixes": list(DURATION_SUFFIXES),
        "statuses": {
            "running": RUNNING,
            "completed": COMPLETED,
            "early_stopped": EARLY_STOPPED,
            "failed": FAILED,
        },
        "run_statuses": list(RUN_STATUSES),
        "status_labels": dict(STATUS_LABELS),
        "modes": {"federated": FEDERATED, "centralized": CENTRALIZED},
        "epoch_phases": dict(EPOCH_PHASES),
        "round_phases": dict(ROUND_PHASES),
        "default_round_phase": DEFAULT_ROUND_PHASE,
        "eval_sources": dict(EVAL_SOURCES),
        "default_eval_source": DEFAULT_EVAL_SOURCE,
        "default_run": DEFAULT_RUN,
        "default_relay_url": DEFAULT_RELAY_URL,
        "relay_token_env": RELAY_TOKEN_ENV,
    }
