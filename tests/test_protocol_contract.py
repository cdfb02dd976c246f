"""The wire protocol has one definition: ``fl_stream/monitor/protocol.py``.

The relay serves it (``/api/protocol``, :func:`fl_stream.monitor.protocol.describe`) and the
dashboard loads it from there. These tests fail when the two could disagree: the served
document differs from the module, the document leaves out part of the message tables, a file
of the dashboard declares a constant of its own (a metric list, a status, a label, the default
run), the page's styles name a status the protocol does not have, or docs/protocol.md misses a
field or a relation between fields. That the page runs on the served document is checked in a
real browser by ``tests/test_dashboard.py::test_the_pages_constants_come_from_the_relay``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from fl_stream.monitor import protocol
from fl_stream.monitor.checks import check_fields, describe
from tests.support import RelayProcess, get_json, publish

REPO = Path(__file__).resolve().parents[1]
STATIC = REPO / "relay" / "static"
PAGE_FILES = sorted([*STATIC.glob("*.js"), *STATIC.glob("*.html")])
# The page's own state before a run's first message: not a run status, never on the wire.
PAGE_ONLY_STATUS = "waiting"


def _declared_values() -> set[str]:
    """Every constant the protocol declares for dashboards, as the page would spell it."""
    return {
        *protocol.METRIC_NAMES,
        *protocol.FRACTION_METRICS,
        *protocol.LOSS_SUFFIXES,
        *protocol.DURATION_SUFFIXES,
        protocol.RUNNING,
        *protocol.RUN_STATUSES,
        *protocol.STATUS_LABELS.values(),
        protocol.FEDERATED,
        protocol.CENTRALIZED,
        *protocol.ROUND_PHASES.values(),
        *protocol.EVAL_SOURCES.values(),
        protocol.DEFAULT_RUN,
    }


def test_the_relay_serves_exactly_what_the_protocol_declares(relay: RelayProcess) -> None:
    assert get_json(f"{relay.http_url}/api/protocol") == protocol.describe()


def test_the_relays_run_summaries_have_the_declared_shape(relay: RelayProcess) -> None:
    message = {"type": "custom", "timestamp": "2026-01-01T00:00:00Z", "data": {}, "run_id": "r"}
    assert publish(relay.ws_url, [message])[0]["type"] == "ack"
    [summary] = get_json(f"{relay.http_url}/api/runs")["runs"]
    required, optional = protocol.RUN_SUMMARY
    assert set(required) <= set(summary) <= set(required) | set(optional)
    check_fields(summary, *protocol.RUN_SUMMARY)
    assert protocol.CONTROL_TYPES["run_summary"] == protocol.RUN_SUMMARY  # the same shape


def test_the_document_is_plain_json() -> None:
    document = protocol.describe()
    assert json.loads(json.dumps(document)) == document


def test_the_document_holds_every_message_type_and_field() -> None:
    document = protocol.describe()
    for key, table in (
        ("message_types", protocol.MESSAGE_TYPES),
        ("control_types", protocol.CONTROL_TYPES),
    ):
        assert set(document[key]) == set(table)
        for name, (required, optional) in table.items():
            assert set(document[key][name]["required"]) == set(required), name
            assert set(document[key][name]["optional"]) == set(optional), name
    for name, relations in protocol.MESSAGE_RELATIONS.items():
        assert name in protocol.MESSAGE_TYPES
        assert document["message_types"][name]["relations"] == [
            describe(relation) for relation in relations
        ]
    required, optional = protocol.CLIENT_ENTRY
    assert document["client_entry"] == {
        "required": {name: document["client_entry"]["required"][name] for name in required},
        "optional": {name: document["client_entry"]["optional"][name] for name in optional},
    }
    assert document["metric_names"] == list(protocol.METRIC_NAMES)
    assert document["run_statuses"] == list(protocol.RUN_STATUSES)
    assert document["status_labels"] == protocol.STATUS_LABELS
    assert document["default_run"] == protocol.DEFAULT_RUN
    assert set(document["statuses"].values()) == {protocol.RUNNING, *protocol.RUN_STATUSES}


def _declarations(source: str) -> list[str]:
    """Where ``source`` spells a protocol constant: ``line: text`` for each place."""
    found = []
    for value in sorted(_declared_values()):
        word = re.escape(value)
        quoted = rf"""(["'`]){word}\1"""
        alternation = rf"(?<![\w|]){word}\||\|{word}(?![\w|])"  # a regex or "a|b" list
        for pattern in (quoted, alternation):
            for match in re.finditer(pattern, source):
                found.append(f"{source.count(chr(10), 0, match.start()) + 1}: {match.group(0)}")
    return found


@pytest.mark.parametrize(
    "snippet",
    [
        'export const METRICS = ["loss", "accuracy", "precision", "recall", "f1", "auroc"];',
        'const FINISHED = new Set(["completed", "early_stopped", "failed"]);',
        "const STATUS_LABELS = { early_stopped: 'early-stopped' };",
        'const DEFAULT_RUN = "default";',
        'const PHASE_LABELS = { train: "fit", evaluate: "eval" };',
        "const isTime = (name) => /time|duration|seconds/i.test(name);",
        'const PREFERRED = ["evaluate|accuracy"];',
        "const CENTRAL_EVAL = `central eval`;",
    ],
)
def test_the_scan_finds_the_old_declarations(snippet: str) -> None:
    assert _declarations(snippet)


@pytest.mark.parametrize("path", PAGE_FILES, ids=lambda path: path.name)
def test_no_page_file_declares_a_protocol_constant(path: Path) -> None:
    """No quoted "loss", "completed", "central eval", "default", ... and no /time|.../ rule."""
    found = [f"{path.name}:{where}" for where in _declarations(path.read_text())]
    assert not found, "declare these in fl_stream/monitor/protocol.py instead:\n" + "\n".join(found)


def test_only_protocol_js_loads_the_protocol() -> None:
    loaders = [path.name for path in PAGE_FILES if "api/protocol" in path.read_text()]
    assert loaders == ["protocol.js"]


def test_the_page_styles_exactly_the_protocols_statuses() -> None:
    css = (STATIC / "dashboard.css").read_text()
    styled = set(re.findall(r'\[data-status="([^"]+)"\]', css))
    assert styled == {protocol.RUNNING, *protocol.RUN_STATUSES}
    html = (STATIC / "index.html").read_text()
    assert set(re.findall(r'data-status="([^"]+)"', html)) == {PAGE_ONLY_STATUS}


def test_docs_name_every_type_and_field() -> None:
    text = (REPO / "docs" / "protocol.md").read_text()
    missing = [
        f"{name}.{field}"
        for table in (protocol.MESSAGE_TYPES, protocol.CONTROL_TYPES)
        for name, (required, optional) in table.items()
        for field in [name, *required, *optional]
        if f"`{field}`" not in text
    ]
    missing += [
        f"client.{field}"
        for fields in protocol.CLIENT_ENTRY
        for field in fields
        if f"`{field}`" not in text
    ]
    missing += [
        f"{name}: {describe(relation)}"
        for name, relations in protocol.MESSAGE_RELATIONS.items()
        for relation in relations
        if f"`{describe(relation)}`" not in text
    ]
    assert not missing, f"docs/protocol.md does not mention: {', '.join(missing)}"
