"""The wire format: builders, the validator, numpy/torch encoding and non-finite numbers."""

from __future__ import annotations

import enum
import json
import math
from typing import Any

import numpy as np
import pytest
import torch

from fl_stream.monitor.protocol import (
    CONTROL_TYPES,
    MESSAGE_TYPES,
    EncodingError,
    MessageError,
    decode_message,
    encode_message,
    make_message,
    to_json_value,
    validate_message,
)

METRICS = {
    "loss": 0.25,
    "accuracy": 0.9,
    "precision": 0.8,
    "recall": 0.7,
    "f1": 0.75,
    "auroc": 0.88,
}

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
}


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
            r"^data\.status: expected one of 'completed', 'early_stopped', 'failed'",
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
    assert {"subscribe", "unsubscribe", "ping", "ack", "rejected", "replay_end", "pong"} == set(
        CONTROL_TYPES
    )


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
