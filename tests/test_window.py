"""DeliveryWindow, the sender's delivery rules, without a socket, a thread or a clock.

Each test plays the part of the I/O layers: it adds messages, asks what to send, and tells
the window about connections and replies, with ``now`` in plain seconds.
"""

from __future__ import annotations

import pytest

from fl_stream.monitor.window import Added, DeliveryWindow, SenderStats


def make_window(**options: float) -> DeliveryWindow:
    settings = {"max_queue": 100, "max_in_flight": 10, "max_message_bytes": 1000, "ack_timeout": 5}
    settings.update(options)
    return DeliveryWindow(
        max_queue=int(settings["max_queue"]),
        max_in_flight=int(settings["max_in_flight"]),
        max_message_bytes=int(settings["max_message_bytes"]),
        ack_timeout=settings["ack_timeout"],
    )


def offer(window: DeliveryWindow, *msg_ids: str) -> list[Added]:
    """Accept and add each message as the sender's thread does; its text names its id."""
    added = []
    for msg_id in msg_ids:
        window.accept()
        added.append(window.add(msg_id, f"text-{msg_id}"))
    return added


def drain(window: DeliveryWindow, now: float = 0.0) -> list[str]:
    """Take everything the window hands out now; return the ids, checking each text."""
    sent = []
    while (item := window.next_to_send(now)) is not None:
        msg_id, text = item
        assert text == f"text-{msg_id}"
        sent.append(msg_id)
    return sent


def resent_ids(window: DeliveryWindow, now: float = 0.0) -> list[str]:
    return [msg_id for msg_id, _ in window.on_connected(now)]


def assert_consistent(stats: SenderStats) -> None:
    settled = stats.acked + stats.rejected + stats.dropped + stats.unconfirmed
    assert stats.accepted == settled + stats.pending
    assert stats.pending >= 0


@pytest.fixture
def window() -> DeliveryWindow:
    return make_window()


# --------------------------------------------------------------------------- acks


def test_nothing_is_sent_without_a_connection(window: DeliveryWindow) -> None:
    offer(window, "a")
    assert window.next_to_send(0.0) is None
    assert window.on_connected(0.0) == []  # nothing was in flight
    assert window.next_to_send(0.0) == ("a", "text-a")
    window.on_connection_lost()
    offer(window, "b")
    assert window.next_to_send(0.0) is None


def test_acks_in_order_settle_each_message(window: DeliveryWindow) -> None:
    window.on_connected(0.0)
    offer(window, "a", "b", "c")
    assert drain(window) == ["a", "b", "c"]
    assert window.stats().pending == 3
    for msg_id in ("a", "b", "c"):
        window.on_ack(msg_id)
    stats = window.stats()
    assert (stats.accepted, stats.sent, stats.acked, stats.pending) == (3, 3, 3, 0)
    assert window.settled == 3


def test_acks_out_of_order_settle_each_message_once(window: DeliveryWindow) -> None:
    window.on_connected(0.0)
    offer(window, "a", "b", "c")
    drain(window)
    window.on_ack("c")
    window.on_ack("a")
    window.on_ack("a")  # a repeated ack (the relay re-acks a duplicate) changes nothing
    window.on_ack("unknown")
    window.on_ack(None)
    assert (window.stats().acked, window.pending) == (2, 1)
    window.on_connection_lost()
    assert resent_ids(window) == ["b"]


# --------------------------------------------------------------------------- reconnects


def test_after_a_reconnect_unacked_messages_go_first_oldest_first(window: DeliveryWindow) -> None:
    window.on_connected(0.0)
    offer(window, "a", "b", "c", "d")
    assert drain(window) == ["a", "b", "c", "d"]
    window.on_ack("b")
    window.on_connection_lost()
    offer(window, "e")
    resend = window.on_connected(1.0)
    assert resend == [("a", "text-a"), ("c", "text-c"), ("d", "text-d")]
    assert drain(window) == ["e"]  # new messages follow the resent ones
    stats = window.stats()
    assert (stats.sent, stats.resent, stats.acked, stats.pending) == (5, 3, 1, 4)


def test_acked_messages_are_never_resent(window: DeliveryWindow) -> None:
    window.on_connected(0.0)
    offer(window, "a", "b")
    drain(window)
    window.on_ack("a")
    window.on_ack("b")
    window.on_connection_lost()
    assert window.on_connected(1.0) == []
    window.on_connection_lost()
    offer(window, "c")
    assert window.on_connected(2.0) == []  # "c" was never sent: it is sent, not resent
    assert drain(window) == ["c"]
    assert window.stats().resent == 0


def test_a_message_is_resent_on_every_reconnect_until_acked(window: DeliveryWindow) -> None:
    window.on_connected(0.0)
    offer(window, "a")
    drain(window)
    for attempt in range(3):
        window.on_connection_lost()
        assert resent_ids(window, float(attempt)) == ["a"]
    window.on_ack("a")
    assert (window.stats().resent, window.pending) == (3, 0)


# --------------------------------------------------------------------------- bounds


def test_a_full_window_pauses_sending_until_an_ack() -> None:
    window = make_window(max_in_flight=2)
    window.on_connected(0.0)
    offer(window, "a", "b", "c", "d")
    assert drain(window) == ["a", "b"]
    assert window.queued == 2
    window.on_ack("b")  # any ack makes room, not only the oldest
    assert drain(window) == ["c"]
    window.on_ack("a")
    window.on_ack("c")
    assert drain(window) == ["d"]


def test_resends_may_fill_the_window_and_new_messages_wait() -> None:
    window = make_window(max_in_flight=2)
    window.on_connected(0.0)
    offer(window, "a", "b")
    drain(window)
    window.on_connection_lost()
    offer(window, "c")
    assert resent_ids(window) == ["a", "b"]
    assert window.next_to_send(0.0) is None
    window.on_ack("a")
    assert drain(window) == ["c"]


def test_a_full_queue_drops_the_oldest_and_counts_it() -> None:
    window = make_window(max_queue=3)
    added = offer(window, "a", "b", "c", "d", "e")
    assert added == [Added.QUEUED] * 3 + [Added.DROPPED_OLDEST] * 2
    assert (window.queued, window.stats().dropped, window.pending) == (3, 2, 3)
    assert window.unreported_drops == 2
    assert window.take_unreported_drops() == 2
    assert window.take_unreported_drops() == 0
    window.on_connected(0.0)
    assert drain(window) == ["c", "d", "e"]
    assert_consistent(window.stats())


def test_in_flight_messages_do_not_count_against_the_queue() -> None:
    window = make_window(max_queue=2)
    window.on_connected(0.0)
    offer(window, "a", "b")
    drain(window)
    assert offer(window, "c", "d") == [Added.QUEUED, Added.QUEUED]
    assert window.stats().dropped == 0


def test_a_message_dropped_before_it_is_added_is_counted(window: DeliveryWindow) -> None:
    window.accept()
    window.accept()
    window.drop_accepted()  # the callers' hand-off overflowed
    assert (window.stats().dropped, window.pending, window.unreported_drops) == (1, 1, 1)
    window.add("b", "text-b")
    assert_consistent(window.stats())


def test_too_large_messages_are_refused_and_counted_as_rejected() -> None:
    window = make_window(max_message_bytes=10)
    window.on_connected(0.0)
    for _ in range(3):
        window.accept()
    assert window.add("fits", "x" * 10) is Added.QUEUED
    assert window.add("big", "x" * 11) is Added.TOO_LARGE
    assert window.add("wide", "é" * 6) is Added.TOO_LARGE  # 12 bytes in UTF-8, 6 characters
    assert window.next_to_send(0.0) == ("fits", "x" * 10)
    assert window.next_to_send(0.0) is None
    stats = window.stats()
    assert (stats.rejected, stats.sent, stats.pending) == (2, 1, 1)


# --------------------------------------------------------------------------- rejections


def test_a_rejection_naming_a_message_settles_it(window: DeliveryWindow) -> None:
    window.on_connected(0.0)
    offer(window, "a", "b")
    drain(window)
    assert window.on_rejected("a") is False
    window.on_ack("b")
    window.on_connection_lost()
    assert window.on_connected(1.0) == []  # a rejected message is not resent
    stats = window.stats()
    assert (stats.rejected, stats.acked, stats.pending) == (1, 1, 0)


def test_a_rejection_without_msg_id_resends_everything_unacked_on_a_new_connection(
    window: DeliveryWindow,
) -> None:
    window.on_connected(0.0)
    offer(window, "a", "b", "c")
    drain(window)
    window.on_ack("a")
    assert window.on_rejected(None) is True  # the relay's store failed: replace the link
    offer(window, "d")
    assert window.next_to_send(0.0) is None  # nothing more on the connection being replaced
    window.on_ack("b")  # replies still in transit are taken
    window.on_connection_lost()
    assert resent_ids(window, 1.0) == ["c"]
    assert drain(window) == ["d"]
    assert window.stats().rejected == 0


# --------------------------------------------------------------------------- a relay without acks


def test_no_reply_within_ack_timeout_makes_the_connection_at_most_once() -> None:
    window = make_window(ack_timeout=5)
    window.on_connected(100.0)
    assert window.ack_deadline() is None  # nothing sent yet
    offer(window, "a", "b")
    drain(window, now=101.0)
    offer(window, "c")
    drain(window, now=103.0)
    assert window.ack_deadline() == 106.0  # from the first send on the connection
    assert window.expire(105.9) is False
    assert window.expire(106.0) is True
    assert window.ack_deadline() is None and window.expire(200.0) is False
    stats = window.stats()
    assert (stats.unconfirmed, stats.pending) == (3, 0)

    offer(window, "d", "e")
    assert drain(window, now=107.0) == ["d", "e"]  # sent once, settled at once
    assert (window.stats().unconfirmed, window.pending) == (5, 0)
    window.on_connection_lost()
    assert window.on_connected(108.0) == []  # nothing resent
    assert window.stats().resent == 0


def test_at_most_once_ignores_the_in_flight_bound() -> None:
    window = make_window(max_in_flight=1, ack_timeout=1)
    window.on_connected(0.0)
    offer(window, "a", "b", "c")
    assert drain(window) == ["a"]
    assert window.expire(1.0)
    assert drain(window, now=1.0) == ["b", "c"]


def test_a_late_ack_brings_back_tracking() -> None:
    window = make_window(ack_timeout=1)
    window.on_connected(0.0)
    offer(window, "a")
    drain(window)
    assert window.expire(1.0)
    window.on_ack("a")  # late: "a" stays unconfirmed, later messages are tracked again
    offer(window, "b")
    assert drain(window, now=2.0) == ["b"]
    assert window.pending == 1
    assert window.ack_deadline() is None  # this relay acks: no deadline any more
    window.on_connection_lost()
    assert resent_ids(window, 3.0) == ["b"]
    window.on_ack("b")
    stats = window.stats()
    assert (stats.unconfirmed, stats.acked, stats.pending) == (1, 1, 0)


def test_any_reply_in_time_keeps_acks_tracked() -> None:
    window = make_window(ack_timeout=1)
    window.on_connected(0.0)
    offer(window, "a", "b")
    drain(window)
    window.on_rejected("a")
    assert window.ack_deadline() is None and window.expire(10.0) is False
    assert window.pending == 1


def test_each_connection_gets_its_own_ack_deadline() -> None:
    window = make_window(ack_timeout=1)
    window.on_connected(0.0)
    offer(window, "a")
    drain(window)
    window.on_ack("a")
    window.on_connection_lost()
    offer(window, "b")
    window.on_connected(10.0)
    drain(window, now=10.5)
    assert window.ack_deadline() == 11.5  # acks on the old connection do not count here
    window.on_connection_lost()
    assert window.ack_deadline() is None and window.expire(20.0) is False
    assert window.on_connected(20.0) == [("b", "text-b")]
    assert window.ack_deadline() == 21.0  # the resend is the first send


# --------------------------------------------------------------------------- counters


def test_counters_stay_consistent_through_every_outcome() -> None:
    window = make_window(max_queue=4, max_in_flight=3, max_message_bytes=20, ack_timeout=1)
    window.count_invalid()
    assert_consistent(window.stats())
    offer(window, *"abcdef")  # a and b dropped
    window.accept()
    window.add("big", "x" * 21)
    window.accept()  # accepted, not yet added: pending
    assert_consistent(window.stats())
    window.on_connected(0.0)
    assert drain(window) == ["c", "d", "e"]
    window.on_ack("d")
    window.on_rejected("e")
    window.on_connection_lost()
    assert resent_ids(window, 1.0) == ["c"]
    assert drain(window, now=1.0) == ["f"]
    assert window.expire(2.0)  # c and f unconfirmed
    window.add("g", "text-g")
    assert drain(window, now=2.0) == ["g"]
    stats = window.stats()
    assert stats == SenderStats(
        accepted=8,
        invalid=1,
        sent=5,
        resent=1,
        acked=1,
        rejected=2,
        dropped=2,
        unconfirmed=3,
        pending=0,
        connected=True,
    )
    assert_consistent(stats)
    window.on_connection_lost()
    assert window.stats().connected is False


def test_messages_without_a_relay_are_settled_by_the_log(window: DeliveryWindow) -> None:
    for _ in range(3):
        window.accept()
    window.settle_logged(3)
    stats = window.stats()
    assert (stats.accepted, stats.pending, stats.sent, stats.acked) == (3, 0, 0, 0)
    assert window.settled == 3
