"""sys_metrics_mod, called as Flower calls a mod: with a message, a context and a call_next."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Context,
    Error,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.supercore.task_identity import TaskIdentity

from fl_stream.flower import mods
from fl_stream.flower.mods import SYS_RECORD, sys_metrics_mod

ROOT = Path(__file__).resolve().parent.parent
WORK = 0.05  # seconds the fake ClientApp takes


@pytest.fixture(autouse=True)
def task_identity() -> None:
    """Messages take their ids from the task identity a SuperNode would set."""
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 7, 0


def _context(**node_config: int) -> Context:
    return Context(run_id=7, node_id=3, node_config=node_config, state=RecordDict(), run_config={})


def _message(message_type: str) -> Message:
    return Message(RecordDict(), dst_node_id=3, message_type=message_type)


def _app(content: RecordDict | None = None, work: float = WORK):
    """A fake next layer that works ``work`` seconds and replies ``content``."""
    calls: list[Message] = []

    def call_next(msg: Message, context: Context) -> Message:
        calls.append(msg)
        time.sleep(work)
        reply = content if content is not None else _content(num_examples=50)
        return Message(reply, reply_to=msg)

    call_next.calls = calls  # type: ignore[attr-defined]
    return call_next


def _content(num_examples: int | None = None) -> RecordDict:
    values = {"loss": 0.5} if num_examples is None else {"loss": 0.5, "num-examples": num_examples}
    return RecordDict({"metrics": MetricRecord(values), "arrays": ArrayRecord()})


@pytest.mark.parametrize("message_type", ["train", "evaluate", "train.custom_action"])
def test_train_and_evaluate_replies_get_the_calls_figures(message_type, monkeypatch):
    monkeypatch.delitem(sys.modules, "torch", raising=False)  # an app without torch
    before = time.perf_counter()
    reply = sys_metrics_mod(_message(message_type), _context(**{"partition-id": 4}), _app())
    elapsed = time.perf_counter() - before

    metrics = reply.content["metrics"]
    assert WORK <= metrics["sys_wall_time"] <= elapsed
    assert metrics["sys_examples_per_second"] == pytest.approx(50 / metrics["sys_wall_time"])
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert 0 < metrics["sys_peak_rss_mb"] <= peak_kib / 1024
    assert metrics["sys_cuda_peak_mb"] == 0.0  # no torch, no CUDA
    assert (metrics["loss"], metrics["num-examples"]) == (0.5, 50)  # the app's own, untouched
    assert dict(reply.content[SYS_RECORD]) == {"device": "cpu", "partition-id": 4}


def test_the_cuda_peak_is_reset_before_the_call_and_read_after(monkeypatch):
    events: list[str] = []
    cuda = SimpleNamespace(
        is_initialized=lambda: True,
        reset_peak_memory_stats=lambda: events.append("reset"),
        max_memory_allocated=lambda: 3 * 2**20,
        current_device=lambda: 1,
    )
    monkeypatch.setitem(sys.modules, "torch", SimpleNamespace(cuda=cuda))

    def call_next(msg: Message, context: Context) -> Message:
        events.append("call")
        return Message(_content(num_examples=5), reply_to=msg)

    reply = sys_metrics_mod(_message("train"), _context(), call_next)
    assert events == ["reset", "call"]
    assert reply.content["metrics"]["sys_cuda_peak_mb"] == 3.0
    assert dict(reply.content[SYS_RECORD]) == {"device": "cuda:1"}  # no partition-id: none set


def test_a_reply_without_num_examples_gets_no_throughput():
    reply = sys_metrics_mod(_message("evaluate"), _context(), _app(_content()))
    assert "sys_examples_per_second" not in reply.content["metrics"]
    assert reply.content["metrics"]["sys_wall_time"] >= WORK


def test_a_reply_without_a_metric_record_passes_through_unchanged():
    content = RecordDict({"arrays": ArrayRecord(), "config": ConfigRecord({"note": "hi"})})
    reply = sys_metrics_mod(_message("train"), _context(), _app(content))
    assert set(reply.content) == {"arrays", "config"}
    assert dict(reply.content["config"]) == {"note": "hi"}


def test_query_messages_are_not_measured():
    reply = sys_metrics_mod(_message("query"), _context(), _app(work=0))
    assert set(reply.content["metrics"]) == {"loss", "num-examples"}
    assert SYS_RECORD not in reply.content


def test_an_error_reply_passes_through_unchanged():
    def failing_app(msg: Message, context: Context) -> Message:
        return Message(Error(code=0, reason="out of memory"), reply_to=msg)

    reply = sys_metrics_mod(_message("train"), _context(), failing_app)
    assert reply.has_error() and reply.error.reason == "out of memory"


def test_a_failing_mod_logs_and_leaves_the_reply_as_the_app_made_it(monkeypatch):
    logged: list[str] = []
    monkeypatch.setattr(mods, "log", lambda level, text, *args: logged.append(text % args))

    def broken() -> float:
        raise OSError("getrusage unavailable")

    monkeypatch.setattr(mods, "_peak_rss_mb", broken)
    reply = sys_metrics_mod(_message("train"), _context(), _app())
    assert set(reply.content["metrics"]) == {"loss", "num-examples"}
    assert SYS_RECORD not in reply.content
    assert len(logged) == 1 and "getrusage unavailable" in logged[0]


def test_the_apps_own_exception_still_propagates():
    def crashing_app(msg: Message, context: Context) -> Message:
        raise RuntimeError("training diverged")

    with pytest.raises(RuntimeError, match="training diverged"):
        sys_metrics_mod(_message("train"), _context(), crashing_app)


def test_the_mod_never_imports_torch():
    probe = (
        "import json, sys\n"
        "from flwr.app import Context, Message, MetricRecord, RecordDict\n"
        "from flwr.supercore.task_identity import TaskIdentity\n"
        "from fl_stream.flower import sys_metrics_mod\n"
        "TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 7, 0\n"
        "msg = Message(RecordDict(), dst_node_id=3, message_type='train')\n"
        "ctx = Context(run_id=7, node_id=3, node_config={}, state=RecordDict(), run_config={})\n"
        "reply = sys_metrics_mod(msg, ctx, lambda m, c: Message("
        "RecordDict({'m': MetricRecord({'num-examples': 1})}), reply_to=m))\n"
        "print(json.dumps([reply.content['sys']['device'], 'torch' in sys.modules]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1]) == ["cpu", False]
