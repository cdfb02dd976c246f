"""The frames the relay writes itself: acks, refusals and the other control messages."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from fl_stream.monitor.checks import is_text
from fl_stream.monitor.protocol import encode_message, utc_timestamp

__all__ = ["ack", "control", "msg_id_of", "rejected", "store_failure"]


def control(kind: str, data: dict[str, Any]) -> bytes:
    """A control message of ``kind``, stamped now, as the UTF-8 frame to send."""
    return encode_message({"type": kind, "timestamp": utc_timestamp(), "data": data}).encode()


def ack(run_id: str, seq: int, msg_id: str | None) -> bytes:
    """The reply to a stored message."""
    return control("ack", {"run_id": run_id, "seq": seq, "msg_id": msg_id})


def rejected(reason: str, msg_id: str | None, retry: bool = False) -> bytes:
    """The reply to a refused frame; ``retry``: it was valid, send it again later."""
    data: dict[str, Any] = {"reason": reason, "msg_id": msg_id}
    if retry:
        data["retry"] = True
    return control("rejected", data)


def store_failure(exc: sqlite3.Error) -> str:
    """Why a message the store could not take is refused."""
    return f"relay could not store the message ({exc}); send it again later"


def msg_id_of(frame: str) -> str | None:
    """Best-effort msg_id of a refused frame, so its sender can match the rejection."""
    try:
        message = json.loads(frame)
    except (ValueError, RecursionError):
        return None
    msg_id = message.get("msg_id") if isinstance(message, dict) else None
    return msg_id if is_text(msg_id) else None
