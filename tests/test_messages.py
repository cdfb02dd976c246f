"""The wire format: builders, the validator, numpy/torch encoding and non-finite numbers."""

from __future__ import annotations

import enum
import json
import math
from typing import Any

import numpy as np
import pytest
import torch

from fl_stream.monitor import protocol
from fl_stream.monitor.protocol import (
    CONTROL_TYPES,
    EVAL_BY_SERVER,
    MESSAGE_TYPES,
    METRIC_NAMES,
    RUN_STATUSES,
    EncodingError,
    MessageError,
    decode_message,
    encode_message,
    is_duration,
    lower_is_better,
    make_message,
    run_status,
    to_json_value,
    validate_message,
)

# One value per metric of the original design, in METRIC_NAMES order.
METRICS = dict(zip(METRIC_NAMES, (0.25, 0.9, 0.8, 0.7, 0.75, 0.88), strict=True))

# One valid data object per message type of the design, plus per-client metrics.
VALID_DATA: dict[str, dict[str, Any]] = {
    "training_mode": {"is_federated": True, "num_rounds": 3, "num_clients": 2},
    "epoch_end": {"epoch": 0, "phase": "train", "metrics": METRICS},
    "round_metrics": {"round": 1, "total_rounds": 3, "metrics": METRICS},
    "round_end": {"round": 1, "total_rounds": 3, "fit_metrics": METRICS, "eval_metrics": METRICS},
    "client_metrics": {
        "round": 1,
        "total_rounds": 3,
        "phase": "evaluate",
        "clients": [{"client_id": "7", "num_examples": 40, "metrics": METRICS}],
    },
    "training_end": {
        "run_id": "r",
        "status": "completed",
        "best_epoch": 4,
        "final_metrics": METRICS,
    },
    "early_stopping": {
        "epoch": 9,
        "best_metric_value": 0.91,
        "metric_name": "val_auroc",
        "patience": 3,
        "reason": "val_auroc did not improve for 3 epochs",
    },
    "error": {"error": "CUDA out of memory", "error_type": "RuntimeError"},
    "client_progress": {
        "round": 2,
        "phase": "train",
        "client_id": "0",
        "epoch": 1,
        "num_epochs": 3,
        "batch": 4,
        "num_batches": 10,
    },
}
PROGRESS = VALID_DATA["client_progress"]


def test_every_type_of_the_design_has_a_valid_example() -> None:
    assert set(VALID_DATA) == set(MESSAGE_TYPES)


@pytest.mark.parametrize("message_type", sorted(VALID_DATA))
def test_make_message_builds_the_envelope(message_type: str) -> None:
    message = make_message(message_type, VALID_DATA[message_type], run_id="r", msg_id="s-1")
    assert set(message) == {"type", "timestamp", "data", "run_id", "msg_id"}
    assert message["type"] == message_type and message["data"] == VALID_DATA[message_type]
    assert message["timestamp"].endswith("+00:00")
    assert decode_message(encode_message(message)) == message


@pytest.mark.parametrize("message_type", sorted(VALID_DATA))
def test_each_required_field_is_named_when_missing(message_type: str) -> None:
    required, _ = MESSAGE_TYPES[message_type]
    for field in required:
        data = {k: v for k, v in VALID_DATA[message_type].items() if k != field}
        with pytest.raises(MessageError, match=rf"^data\.{field}: missing"):
            make_message(message_type, data)


def test_run_id_and_msg_id_are_optional() -> None:
    message = make_message("error", VALID_DATA["error"])
    assert set(message) == {"type", "timestamp", "data"}


def test_numpy_scalars_arrays_and_tensors_become_plain_json() -> None:
    class Phase(str, enum.Enum):
        TRAIN = "train"

    class Epoch(enum.IntEnum):
        THIRD = 3

    value = to_json_value(
        {
            "f32": np.float32(0.5),
            "f64": np.float64(0.25),
            "i64": np.int64(7),
            "flag": np.bool_(True),
            "zero_d": np.array(1.5),
            "tensor": torch.tensor(2.0),
            "int_tensor": torch.tensor([4]),
            "grad": torch.tensor(0.5, requires_grad=True) * 2,
            "phase": Phase.TRAIN,
            "epoch": Epoch.THIRD,
            "nested": [np.float16(1.0), (1, "a", None)],
        }
    )
    assert value == {
        "f32": 0.5,
        "f64": 0.25,
        "i64": 7,
        "flag": True,
        "zero_d": 1.5,
        "tensor": 2.0,
        "int_tensor": 4,
        "grad": 1.0,
        "phase": "train",
        "epoch": 3,
        "nested": [1.0, [1, "a", None]],
    }
    assert json.dumps(value) == json.dumps(json.loads(json.dumps(value)))
    assert [type(v) for v in (value["f32"], value["i64"], value["flag"], value["phase"])] == [
        float,
        int,
        bool,
        str,
    ]


def test_non_finite_floats_are_strings_that_decode_back() -> None:
    metrics = {"nan": math.nan, "inf": np.float32("inf"), "ninf": torch.tensor(-math.inf)}
    message = make_message("epoch_end", {"epoch": 1, "phase": "val", "metrics": metrics})
    text = encode_message(message)
    assert '"nan":"NaN"' in text and '"inf":"Infinity"' in text and '"ninf":"-Infinity"' in text
    decoded = decode_message(text)["data"]["metrics"]
    assert math.isnan(float(decoded["nan"])) and float(decoded["inf"]) == math.inf
    assert float(decoded["ninf"]) == -math.inf


@pytest.mark.parametrize(
    ("metrics", "error"),
    [
        ({"loss": object()}, r"^data\.metrics\.loss: cannot encode object"),
        ({"loss": np.zeros(3)}, r"^data\.metrics\.loss: cannot encode ndarray with 3 elements"),
        ({"loss": torch.ones(2, 2)}, r"^data\.metrics\.loss: cannot encode Tensor with 4 elements"),
        ({"loss": {1, 2}}, r"^data\.metrics\.loss: cannot encode set"),
        ({1: 0.5}, r"^data\.metrics: keys must be strings, got int"),
    ],
)
def test_values_that_cannot_be_encoded_name_their_field(metrics: dict, error: str) -> None:
    with pytest.raises(EncodingError, match=error):
        make_message("epoch_end", {"epoch": 1, "phase": "train", "metrics": metrics})


@pytest.mark.parametrize(
    ("message_type", "data", "error"),
    [
        (
            "epoch_end",
            {"epoch": 1, "phase": "train", "metrics": {"loss": [1, 2]}},
            r"^data\.metrics\.loss: expected a number",
        ),
        (
            "epoch_end",
            {"epoch": 1, "phase": "train", "metrics": {"loss": "low"}},
            r"^data\.metrics\.loss: .* got 'low'",
        ),
        (
            "epoch_end",
            {"epoch": -1, "phase": "train", "metrics": {}},
            r"^data\.epoch: expected an integer >= 0, got -1",
        ),
        ("epoch_end", {"epoch": True, "phase": "train", "metrics": {}}, r"^data\.epoch: "),
        (
            "epoch_end",
            {"epoch": 1, "phase": "test", "metrics": {}},
            r"^data\.phase: expected one of 'train', 'val'",
        ),
        (
            "early_stopping",
            {**VALID_DATA["early_stopping"], "best_metric_value": [0.9]},
            r"^data\.best_metric_value: expected a finite number",
        ),
        (
            "client_metrics",
            {
                **VALID_DATA["client_metrics"],
                "clients": [{"client_id": 3, "num_examples": 1, "metrics": {}}],
            },
            r"^data\.clients\[0\]\.client_id: expected a string, got 3",
        ),
        (
            "client_metrics",
            {
                **VALID_DATA["client_metrics"],
                "clients": [{"client_id": "3", "num_examples": 1, "metrics": {"x": "y"}}],
            },
            r"^data\.clients\[0\]\.metrics\.x: ",
        ),
        (
            "training_end",
            {**VALID_DATA["training_end"], "status": "done"},
            r"^data\.status: expected one of " + ", ".join(repr(s) for s in RUN_STATUSES),
        ),
        (
            "training_mode",
            {"is_federated": 1, "num_rounds": 3, "num_clients": 2},
            r"^data\.is_federated: expected true or false",
        ),
        (
            "training_mode",
            {**VALID_DATA["training_mode"], "num_epochs": -1},
            r"^data\.num_epochs: expected an integer >= 0",
        ),
        (
            "client_metrics",
            {
                **VALID_DATA["client_metrics"],
                "clients": [{"client_id": "3", "num_examples": 1, "metrics": {}, "node_id": 9}],
            },
            r"^data\.clients\[0\]\.node_id: expected a string, got 9",
        ),
        (
            "client_metrics",
            {
                **VALID_DATA["client_metrics"],
                "clients": [{"client_id": "3", "num_examples": 0, "metrics": {}, "error": None}],
            },
            r"^data\.clients\[0\]\.error: expected a string, got None",
        ),
        (
            "client_metrics",
            {**VALID_DATA["client_metrics"], "clients": [{"num_examples": 1, "metrics": {}}]},
            r"^data\.clients\[0\]\.client_id: expected a string, got None",
        ),
        (
            "training_end",
            {**VALID_DATA["training_end"], "best_metric": 3},
            r"^data\.best_metric: expected a string, got 3",
        ),
        (
            "training_end",
            {**VALID_DATA["training_end"], "run_id": 4.5},
            r"^data\.run_id: expected a string or an integer",
        ),
        (
            "round_end",
            {**VALID_DATA["round_end"], "eval_source": "gpu"},
            r"^data\.eval_source: expected one of 'clients', 'server', got 'gpu'",
        ),
        (
            "client_progress",
            {**PROGRESS, "phase": "val"},
            r"^data\.phase: expected one of 'train', 'evaluate', got 'val'",
        ),
        (
            "client_progress",
            {**PROGRESS, "epoch": 0},
            r"^data\.epoch: expected an integer >= 1, got 0",
        ),
        (
            "client_progress",
            {**PROGRESS, "num_epochs": 0, "epoch": 0},
            r"^data\.epoch: expected an integer >= 1",
        ),
        ("client_progress", {**PROGRESS, "batch": -1}, r"^data\.batch: expected an integer >= 0"),
        (
            "client_progress",
            {**PROGRESS, "batch": 11},
            r"^data\.batch: expected batch <= num_batches, got 11 > 10",
        ),
        (
            "client_progress",
            {**PROGRESS, "epoch": 4},
            r"^data\.epoch: expected epoch <= num_epochs, got 4 > 3",
        ),
        (
            "client_progress",
            {**PROGRESS, "client_id": 0},
            r"^data\.client_id: expected a string, got 0",
        ),
        (
            "client_progress",
            {**PROGRESS, "examples_per_second": -0.5},
            r"^data\.examples_per_second: expected a finite number >= 0, got -0.5",
        ),
        (
            "client_progress",
            {**PROGRESS, "examples_per_second": "Infinity"},
            r"^data\.examples_per_second: expected a finite number >= 0",
        ),
        (
            "client_progress",
            {**PROGRESS, "metrics": {"loss": "low"}},
            r"^data\.metrics\.loss: .* got 'low'",
        ),
        ("client_progress", {**PROGRESS, "node_id": 7}, r"^data\.node_id: expected a string"),
    ],
)
def test_invalid_fields_are_named(message_type: str, data: dict, error: str) -> None:
    with pytest.raises(MessageError, match=error):
        make_message(message_type, data)


@pytest.mark.parametrize(
    ("message", "error"),
    [
        ([], r"^message: expected a JSON object, got an array"),
        ({"timestamp": "2026-01-01T00:00:00Z", "data": {}}, r"^type: missing"),
        ({"type": "", "timestamp": "2026-01-01T00:00:00Z", "data": {}}, r"^type: "),
        ({"type": "x", "timestamp": "yesterday", "data": {}}, r"^timestamp: 'yesterday' is not"),
        (
            {"type": "x", "timestamp": "2026-01-01T00:00:00Z", "data": []},
            r"^data: expected a JSON object",
        ),
        ({"type": "x", "timestamp": "2026-01-01T00:00:00Z", "data": {}, "run_id": 5}, r"^run_id: "),
        ({"type": "x", "timestamp": "2026-01-01T00:00:00Z", "data": {}, "seq": -2}, r"^seq: "),
        (
            {"type": "ack", "timestamp": "2026-01-01T00:00:00Z", "data": {"run_id": "r"}},
            r"^data\.seq: missing",
        ),
    ],
)
def test_invalid_envelopes_are_refused(message: Any, error: str) -> None:
    with pytest.raises(MessageError, match=error):
        validate_message(message)


def test_custom_types_and_control_types_are_accepted() -> None:
    custom = {"type": "learning_rate", "timestamp": "2026-01-01T00:00:00Z", "data": {"lr": 0.1}}
    assert validate_message(custom) is custom
    ack = {
        "type": "ack",
        "timestamp": "2026-01-01T00:00:00Z",
        "data": {"run_id": "r", "seq": 3, "msg_id": "s-1"},
    }
    assert validate_message(ack) is ack
    assert set(CONTROL_TYPES) == {
        "auth",
        "subscribe",
        "unsubscribe",
        "ping",
        "authenticated",
        "ack",
        "rejected",
        "replay_end",
        "pong",
        "run_summary",
    }
    assert protocol.CLIENT_CONTROL_TYPES == {"auth", "subscribe", "unsubscribe", "ping"}


SUMMARY = {
    "run_id": "r",
    "mode": "federated",
    "status": "running",
    "first_timestamp": "2026-01-01T00:00:00+00:00",
    "last_timestamp": "2026-01-01T00:01:00+00:00",
    "message_count": 3,
    "last_seq": 3,
}


@pytest.mark.parametrize(
    ("message_type", "data"),
    [
        ("auth", {"token": "t"}),
        ("authenticated", {"can_publish": False}),
        ("subscribe", {"run_id": "r", "since": 4, "epoch": "5f2c"}),
        ("replay_end", {"run_id": "r", "last_seq": 4, "epoch": "5f2c", "recovered": False}),
        ("replay_end", {"run_id": None, "last_seq": None, "epoch": "5f2c", "recovered": None}),
        ("rejected", {"reason": "disk full", "msg_id": "m-1", "retry": True}),
        ("run_summary", SUMMARY),
        ("run_summary", {**SUMMARY, "mode": None, "status": "early_stopped"}),
    ],
)
def test_the_control_types_of_auth_epochs_and_run_summaries(message_type: str, data: dict) -> None:
    message = {"type": message_type, "timestamp": "2026-01-01T00:00:00Z", "data": data}
    assert validate_message(message) is message


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ({"run_id": "\ud800"}, r"^run_id: not valid Unicode text"),
        ({"msg_id": "m-\udfff"}, r"^msg_id: not valid Unicode text"),
        ({"type": "epoch_end\ud800"}, r"^type: not valid Unicode text"),
        ({"timestamp": "2026-01-01\ud80000:00:00"}, r"^timestamp: .* is not ISO-8601"),
        ({"type": "subscribe", "data": {"run_id": "\ud800"}}, r"^data\.run_id: not valid Unicode"),
        ({"type": "subscribe", "data": {"epoch": "\ud800"}}, r"^data\.epoch: not valid Unicode"),
        (
            {"type": "training_end", "data": {**VALID_DATA["training_end"], "run_id": "\ud800"}},
            r"^data\.run_id: not valid Unicode",
        ),
    ],
)
def test_ids_types_and_timestamps_must_be_encodable_text(fields: dict, error: str) -> None:
    # A lone surrogate is valid JSON ("\ud800") but no UTF-8: SQLite could not bind it.
    message = {"type": "x", "timestamp": "2026-01-01T00:00:00Z", "data": {}, **fields}
    with pytest.raises(MessageError, match=error):
        validate_message(message)


@pytest.mark.parametrize(
    ("data", "error"),
    [
        ({"since": 2**63}, r"^data\.since: 9223372036854775808 is out of range"),
        ({"since": -(2**63) - 1}, r"^data\.since: -9223372036854775809 is out of range"),
        ({"since": 10**5000}, r"^data\.since: an integer of 16610 bits is out of range"),
    ],
)
def test_integers_must_fit_in_64_bits(data: dict, error: str) -> None:
    message = {"type": "subscribe", "timestamp": "2026-01-01T00:00:00Z", "data": data}
    with pytest.raises(MessageError, match=error):
        validate_message(message)


def test_the_64_bit_limits_themselves_are_valid() -> None:
    for since in (protocol.INT64_MIN, protocol.INT64_MAX):
        validate_message(
            {"type": "subscribe", "timestamp": "2026-01-01T00:00:00Z", "data": {"since": since}}
        )
    with pytest.raises(MessageError, match=r"^data\.epoch: an integer of"):
        make_message("epoch_end", {**VALID_DATA["epoch_end"], "epoch": 10**5000})


def test_decode_refuses_numbers_with_too_many_digits_and_deep_nesting() -> None:
    head = '{"type": "x", "timestamp": "2026-01-01T00:00:00Z", "data": '
    with pytest.raises(MessageError, match=r"^message: a number has too many digits"):
        decode_message(head + '{"n": 1' + "0" * 5000 + "}}")
    for deep in ("[" * 10_000 + "]" * 10_000, '{"a":' * 10_000 + "1" + "}" * 10_000):
        with pytest.raises(MessageError, match=r"^message: nested deeper than 32 levels"):
            decode_message(deep)
    within = '{"a":' * (protocol.MAX_NESTING - 2) + "{}" + "}" * (protocol.MAX_NESTING - 2)
    assert decode_message(head + within + "}")["type"] == "x"  # exactly 32 levels
    with pytest.raises(MessageError, match=r"nested deeper than 32"):
        decode_message(head + '{"a":' + within + "}}")


@pytest.mark.parametrize("text", ["{", b"\xff", "[1, 2]", '{"type": "x"}'])
def test_decode_message_refuses_what_is_not_a_message(text: str | bytes) -> None:
    with pytest.raises(MessageError):
        decode_message(text)


def test_encoding_is_compact_valid_json() -> None:
    message = make_message("epoch_end", VALID_DATA["epoch_end"], run_id="r", msg_id="s-1")
    text = encode_message(message)
    assert ", " not in text and ": " not in text
    assert json.loads(text) == message


def test_huge_integers_validate_without_overflow() -> None:
    message = decode_message(
        '{"type": "epoch_end", "timestamp": "2026-01-01T00:00:00Z", '
        '"data": {"epoch": 1, "phase": "val", "metrics": {"n": 1' + "0" * 400 + "}}}"
    )
    assert message["data"]["metrics"]["n"] == 10**400


def test_the_original_designs_messages_stay_valid() -> None:
    # As the original design wrote them: no run_id or msg_id, no optional field, and its
    # training_end names the run with an integer.
    for message_type, data in VALID_DATA.items():
        validate_message({"type": message_type, "timestamp": "2026-01-01T00:00:00Z", "data": data})
    end = {**VALID_DATA["training_end"], "run_id": 42}
    assert make_message("training_end", end)["data"]["run_id"] == 42


def test_fields_beyond_the_original_are_declared_optional() -> None:
    failed_client = {
        "client_id": "1",
        "node_id": "8123456789012345678",
        "num_examples": 0,
        "metrics": {},
        "error": "node went away",
    }
    for message_type, extra in [
        ("client_metrics", {"clients": [failed_client]}),
        ("round_end", {"eval_source": EVAL_BY_SERVER}),
        ("training_end", {"best_round": 2, "best_metric": "loss"}),
        ("round_metrics", {"phase": "train", "num_clients": 2}),
        ("training_mode", {"num_epochs": 5}),
        (
            "client_progress",
            {"node_id": "81", "examples_per_second": 0, "metrics": {"loss": 0.4, "acc": None}},
        ),
    ]:
        required, optional = MESSAGE_TYPES[message_type]
        assert set(extra) - {"clients"} <= set(optional), message_type
        make_message(message_type, {**VALID_DATA[message_type], **extra})
    assert set(protocol.CLIENT_ENTRY[1]) == {"node_id", "error", "device"}


@pytest.mark.parametrize(
    ("metric", "lower"),
    [
        ("loss", True),
        ("val_loss", True),
        ("train-time", True),
        ("fit_duration", True),
        ("epoch_seconds", True),
        ("Train_Time", True),
        ("accuracy", False),
        ("val_auroc", False),
        ("f1", False),
    ],
)
def test_lower_is_better_covers_losses_and_durations(metric: str, lower: bool) -> None:
    assert lower_is_better(metric) is lower
    assert is_duration(metric) is (lower and not metric.endswith("loss"))


def test_every_seed_metric_has_a_direction() -> None:
    lower = [name for name in METRIC_NAMES if lower_is_better(name)]
    assert lower == [METRIC_NAMES[0]]  # the loss; all the others are fractions, higher better
    assert set(protocol.FRACTION_METRICS) == set(METRIC_NAMES) - set(lower)


def test_run_status_follows_the_last_end_message() -> None:
    assert run_status(None) == protocol.RUNNING
    assert run_status(make_message("error", VALID_DATA["error"])) == protocol.FAILED
    for status in RUN_STATUSES:
        end = make_message("training_end", {**VALID_DATA["training_end"], "status": status})
        assert run_status(end) == status
    assert set(protocol.STATUS_LABELS) == {protocol.RUNNING, *RUN_STATUSES}


@pytest.mark.parametrize(
    "fields",
    [
        {"batch": 10, "num_batches": 10, "epoch": 3, "num_epochs": 3},  # the last batch
        {"batch": 0, "num_batches": 0},  # an epoch of no batches, before it starts
        {"epoch": 1, "num_epochs": 1, "phase": "evaluate", "round": 0},
    ],
)
def test_client_progress_bounds_are_inclusive(fields: dict) -> None:
    assert make_message("client_progress", {**PROGRESS, **fields})["data"]["batch"] >= 0


def test_the_relations_are_checked_and_described() -> None:
    assert [relation.description for relation in protocol.MESSAGE_RELATIONS["client_progress"]] == [
        "epoch <= num_epochs",
        "batch <= num_batches",
    ]
    described = protocol.describe()["message_types"]
    assert described["client_progress"]["relations"] == [
        "epoch <= num_epochs",
        "batch <= num_batches",
    ]
    assert "relations" not in described["epoch_end"]  # only types that have some
    text = encode_message(make_message("client_progress", {**PROGRESS, "batch": 10}))
    assert decode_message(text)["data"]["batch"] == 10
    with pytest.raises(MessageError, match=r"^data\.batch: expected batch <= num_batches"):
        decode_message(text.replace('"batch":10', '"batch":12'))
