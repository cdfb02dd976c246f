"""Tokens never reach a log, even at DEBUG, where websockets logs every handshake header."""

from __future__ import annotations

import io
import logging

from websockets.sync.client import connect

from fl_stream.monitor.control import RedactCredentials

TOKEN = "s3cret-publisher-token"


def test_the_filter_blanks_an_authorization_header_and_keeps_other_lines() -> None:
    stream = io.StringIO()
    logger = logging.getLogger("tests.redaction")
    logger.addHandler(logging.StreamHandler(stream))
    logger.addFilter(RedactCredentials())
    logger.setLevel(logging.DEBUG)
    logger.debug("> %s: %s", "Authorization", f"Bearer {TOKEN}")
    logger.debug("< authorization: %s", TOKEN)
    logger.debug("> Host: %s", "127.0.0.1")
    assert TOKEN not in stream.getvalue()
    assert stream.getvalue().splitlines() == [
        "> Authorization: Bearer <redacted>",
        "< authorization: <redacted>",
        "> Host: 127.0.0.1",
    ]


def test_a_relay_at_debug_level_logs_handshakes_without_the_token(relay_factory) -> None:
    relay = relay_factory(token=TOKEN, args=["--log-level", "DEBUG"])
    with connect(
        f"{relay.ws_url}/?publish", additional_headers={"Authorization": f"Bearer {TOKEN}"}
    ):
        pass
    relay.stop()
    log = relay.log_text()
    assert "Authorization" in log or "authorization" in log  # the header was logged...
    assert TOKEN not in log  # ...without its value
