"""A Flower client mod that adds each call's system figures to the train and evaluate replies.

Add it to any ClientApp: ``ClientApp(mods=[sys_metrics_mod])``. Each reply that carries a
``MetricRecord`` gets, in that record (so they travel with the client's metrics):

- ``sys_wall_time``: seconds the call took on the client;
- ``sys_examples_per_second``: the reply's ``num-examples`` divided by that time;
- ``sys_peak_rss_mb``: the client process's peak resident memory so far, in MiB;
- ``sys_cuda_peak_mb``: peak CUDA memory allocated by torch during the call, in MiB (0 when
  the process has not used CUDA: every client reports the same keys, which Flower's
  strategies require of the records they aggregate);

and a ``ConfigRecord`` named ``sys`` (:data:`SYS_RECORD`) with the ``device`` the call ran
on (``cpu`` or ``cuda:<index>``) and the node's ``partition-id`` when its node config has
one. The mod never imports torch: it looks at torch only when the app already imported it.
A reply without a ``MetricRecord`` (or with an error) passes through unchanged, and a failure
of the mod itself is logged and leaves the reply as the app made it.
"""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Callable
from logging import WARNING
from types import ModuleType
from typing import Any

from flwr.app import ConfigRecord, Context, Message, MessageType
from flwr.clientapp.typing import ClientAppCallable
from flwr.common.logger import log

__all__ = ["SYS_RECORD", "sys_metrics_mod"]

SYS_RECORD = "sys"
"""The name of the reply's ``ConfigRecord`` that holds ``device`` (and ``partition-id``)."""

_MEASURED = (MessageType.TRAIN, MessageType.EVALUATE)
_MIB = 2**20


def sys_metrics_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Time the train or evaluate call and add the system figures to its reply."""
    if msg.metadata.message_type.split(".")[0] not in _MEASURED:  # e.g. "train.custom"
        return call_next(msg, context)
    _safely(_reset_cuda_peak)
    started = time.perf_counter()
    reply = call_next(msg, context)
    wall_time = time.perf_counter() - started
    _safely(_add_sys_figures, reply, context, wall_time)
    return reply


def _safely(step: Callable[..., None], *args: Any) -> None:
    """Run one step of the mod; a failure is logged, never raised into the ClientApp."""
    try:
        step(*args)
    except Exception as exc:
        log(
            WARNING,
            "sys_metrics_mod: %s failed, reply left as the app made it: %r",
            step.__name__,
            exc,
        )


def _reset_cuda_peak() -> None:
    cuda = _cuda_in_use()
    if cuda is not None:
        cuda.reset_peak_memory_stats()


def _add_sys_figures(reply: Message, context: Context, wall_time: float) -> None:
    if not reply.has_content() or not reply.content.metric_records:
        return
    metrics = next(iter(reply.content.metric_records.values()))
    cuda = _cuda_in_use()  # the call may have been the first to use CUDA
    figures = {
        "sys_wall_time": wall_time,
        "sys_peak_rss_mb": _peak_rss_mb(),
        "sys_cuda_peak_mb": cuda.max_memory_allocated() / _MIB if cuda is not None else 0.0,
    }
    examples = metrics.get("num-examples")
    if isinstance(examples, (int, float)) and wall_time > 0:
        figures["sys_examples_per_second"] = examples / wall_time
    sys_record = ConfigRecord({"device": _device(cuda)})
    partition_id = context.node_config.get("partition-id")
    if partition_id is not None:
        sys_record["partition-id"] = partition_id
    metrics.update(figures)
    reply.content[SYS_RECORD] = sys_record


def _cuda_in_use() -> ModuleType | None:
    """``torch.cuda`` when the app imported torch and this process has used CUDA."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_initialized():
        return None
    cuda: ModuleType = torch.cuda
    return cuda


def _device(cuda: ModuleType | None) -> str:
    return f"cuda:{cuda.current_device()}" if cuda is not None else "cpu"


def _peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / _MIB if sys.platform == "darwin" else peak / 1024  # bytes on macOS, else KiB
