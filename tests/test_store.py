"""The message store's run reads: by seq range, by type, and in pages of a byte budget."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from relay.store import MessageStore, RunRead

TIMESTAMP = "2026-01-01T00:00:00+00:00"


@pytest.fixture
def store(tmp_path: Path) -> MessageStore:
    """A run "fed" of 9 messages: training_mode, 4 x (client_metrics, round_end)."""
    store = MessageStore(tmp_path / "relay.db")
    store.append({"type": "training_mode", "timestamp": TIMESTAMP, "run_id": "fed", "data": {}})
    for rnd in range(1, 5):
        clients = [{"client_id": str(c), "metrics": {"loss": 0.5}} for c in range(10)]
        for kind, data in (("client_metrics", {"clients": clients}), ("round_end", {})):
            message = {"type": kind, "timestamp": TIMESTAMP, "run_id": "fed", "data": data}
            message["data"]["round"] = rnd
            store.append(message)
    store.commit()
    return store


def read(store: MessageStore, **fields: object) -> tuple[list[int], int, bool]:
    page = store.run_page("fed", RunRead(**fields))  # type: ignore[arg-type]
    return [json.loads(body)["seq"] for body in page.bodies], page.through_seq, page.more


def test_a_read_by_range_and_type_says_how_far_it_is_complete(store: MessageStore) -> None:
    assert read(store) == ([1, 2, 3, 4, 5, 6, 7, 8, 9], 9, False)
    assert read(store, since=3, until=6) == ([4, 5, 6], 6, False)
    # What the dashboard draws first: all but the clients' lists, complete through seq 9.
    assert read(store, exclude=("client_metrics",)) == ([1, 3, 5, 7, 9], 9, False)
    # What it fetches after: those lists, up to where the first read stopped.
    assert read(store, types=("client_metrics",), until=5) == ([2, 4], 5, False)
    assert read(store, types=("round_end",), exclude=("round_end",)) == ([], 9, False)
    assert read(store, since=20) == ([], 20, False)
    assert store.run_page("nobody", RunRead()).bodies == []


def test_a_byte_budget_cuts_pages_that_read_on_from_through_seq(store: MessageStore) -> None:
    big = len(store.run_page("fed", RunRead(since=1, until=2)).bodies[0])
    seen: list[int] = []
    since, more = 0, True
    while more:
        page, since, more = read(store, since=since, types=("client_metrics",), max_bytes=big * 2)
        assert 1 <= len(page) <= 2
        seen += page
    assert seen == [2, 4, 6, 8]
    # A message larger than the budget still comes, alone: a reader always makes progress.
    assert read(store, since=1, max_bytes=1) == ([2], 2, True)


def test_uncommitted_messages_are_not_read(store: MessageStore) -> None:
    store.append({"type": "round_end", "timestamp": TIMESTAMP, "run_id": "fed", "data": {}})
    assert read(store, since=8) == ([9], 9, False)
    store.commit()
    assert read(store, since=8) == ([9, 10], 10, False)
