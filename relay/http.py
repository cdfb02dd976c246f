"""Plain HTTP on the relay's port: the dashboard's files, health, counters and the run API.

websockets answers these from ``process_request`` (one response per connection, no
keep-alive), which is plenty for a dashboard page, its scripts and a small JSON API.

Routes (GET):
    ``/``                              the dashboard page, ``relay/static/index.html``
    ``/static/<file>``                 files from ``relay/static/``
    ``/static/vendor/<file>``          third-party files shipped with the relay (Plotly, as
                                       scripts/plotly builds it): versioned names, cached
    ``/favicon.ico``                   ``relay/static/favicon.ico``, or 204 when there is none
    ``/healthz``                       ``{"status": "ok", "epoch"}``
    ``/stats``                         the relay's counters
    ``/api/protocol``                  the wire protocol, ``fl_stream.monitor.protocol.describe()``
                                       (the dashboard loads it before anything else)
    ``/api/runs``                      ``{"epoch", "runs"}``: every run's summary, newest first
    ``/api/runs/{run_id}/metrics``     one run: summary, final metrics, and its messages with
                                       ``since < seq <= until``, only ``types=a,b``, none of
                                       ``exclude=a,b``, at most ``max_bytes`` of them (at least
                                       one; ``more`` says the page was cut): every such message
                                       up to ``through_seq`` is in ``messages``

With a viewer token, ``/api/*`` needs ``Authorization: Bearer <token>`` (401 without);
``/healthz``, ``/stats``, ``/`` and ``/static/*`` hold no run data and stay open. Run
summaries come from memory (:class:`relay.runs.RunIndex`); a run's messages are read in a
worker thread, so no request holds up the event loop.
"""

from __future__ import annotations

import asyncio
import http
import json
import mimetypes
import time
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from websockets.http11 import Request, Response

from fl_stream.monitor import protocol
from relay.access import Gate
from relay.responses import error_response, json_response, response
from relay.runs import RunIndex
from relay.store import MessageStore, RunRead

__all__ = ["STATIC_DIR", "HttpRoutes"]

STATIC_DIR = Path(__file__).with_name("static")

_RUN_PREFIX = "/api/runs/"
_RUN_SUFFIX = "/metrics"
_MAX_TYPES = 32  # message types one read may name in types= or exclude=


class HttpRoutes:
    """Answers the relay's HTTP requests.

    Args:
        store: the message store (a run's messages, the epoch).
        runs: the run summaries.
        gate: decides who may read ``/api/*``.
        stats: returns the relay's counters for ``/stats``.
        static_dir: the folder served under ``/static/`` and ``/``.
    """

    def __init__(
        self,
        store: MessageStore,
        runs: RunIndex,
        gate: Gate,
        stats: Callable[[], dict[str, Any]],
        static_dir: Path = STATIC_DIR,
    ) -> None:
        self.store = store
        self.runs = runs
        self.gate = gate
        self.stats = stats
        self.static_dir = static_dir.resolve()
        self._started = time.monotonic()

    async def respond(self, request: Request) -> Response:
        """Return the response to a plain (non-WebSocket) GET request."""
        url = urlsplit(request.path)  # the server refused the URLs this cannot split
        path = url.path
        if path == "/healthz":
            return json_response({"status": "ok", "epoch": self.store.epoch})
        if path == "/stats":
            uptime = round(time.monotonic() - self._started, 3)
            return json_response({**self.stats(), "uptime_s": uptime})
        if path.startswith("/api/"):
            return self.gate.reader(request) or await self._api(path, url.query)
        if path == "/":
            return self._file(self.static_dir / "index.html")
        if path == "/favicon.ico":
            icon = self.static_dir / "favicon.ico"
            return self._file(icon) if icon.is_file() else response(http.HTTPStatus.NO_CONTENT)
        if path.startswith("/static/"):
            return self._file(self.static_dir / unquote(path[len("/static/") :]))
        return _not_found(f"no such path: {path}")

    async def _api(self, path: str, query: str) -> Response:
        if path == "/api/protocol":
            return _protocol_response()
        if path == "/api/runs":
            body = self.runs.encoded_list(self.store.epoch)
            return response(http.HTTPStatus.OK, body, "application/json")
        if path.startswith(_RUN_PREFIX) and path.endswith(_RUN_SUFFIX):
            name = unquote(path[len(_RUN_PREFIX) : -len(_RUN_SUFFIX)])
            return await self._run_metrics(name, query)
        return _not_found(f"no such path: {path}")

    async def _run_metrics(self, name: str, query: str) -> Response:
        try:
            read = _run_read(parse_qs(query, keep_blank_values=True))
        except ValueError as exc:
            return error_response(http.HTTPStatus.BAD_REQUEST, str(exc))
        run_id = self.runs.resolve(name)
        summary = self.runs.summary(run_id) if run_id is not None else None
        if run_id is None or summary is None:
            return _not_found(f"unknown run: {name[:100]!r}")
        end = self.runs.end(run_id)
        final = end["data"] if end is not None and end["type"] == "training_end" else None
        page = await asyncio.to_thread(self.store.run_page, run_id, read)
        head = {
            **summary,
            "epoch": self.store.epoch,  # whose seqs these are (a reader may hold another's)
            "final_metrics": final["final_metrics"] if final else None,
            "training_end": final,
            "through_seq": page.through_seq,
            "more": page.more,
        }
        # The stored frames are already JSON: splice them in rather than decode and re-encode.
        body = json.dumps(head)[:-1] + ',"messages":[' + ",".join(page.bodies) + "]}"
        return response(http.HTTPStatus.OK, body.encode(), "application/json")

    def _file(self, path: Path) -> Response:
        try:
            resolved = path.resolve()
            # resolve() folds "..": anything outside the static folder does not exist here.
            found = resolved.is_relative_to(self.static_dir) and resolved.is_file()
            body = resolved.read_bytes() if found else None
        except (OSError, ValueError):  # a NUL byte, a name too long for the file system
            body = None
        if body is None:
            return _not_found(f"no such file: {path.name[:100]}")
        kind = mimetypes.guess_type(resolved.name)[0] or "application/octet-stream"
        # The page's own files always come fresh from this relay; vendored ones carry their
        # version in their name, so a browser may keep them (Plotly: 1.2 MB, compiled once).
        vendored = resolved.is_relative_to(self.static_dir / "vendor")
        return response(http.HTTPStatus.OK, body, kind, cache=vendored)


def _run_read(query: dict[str, list[str]]) -> RunRead:
    """The read that ``/api/runs/{run_id}/metrics``'s query asks for.

    Raises:
        ValueError: a parameter is malformed (the message names it and what it expects).
    """

    def last(name: str) -> str | None:
        return query[name][-1] if name in query else None

    def names(name: str) -> tuple[str, ...]:
        text = last(name)
        found = tuple(part for part in (text or "").split(",") if part)
        if text is not None and not 0 < len(found) <= _MAX_TYPES:
            raise ValueError(f"{name}: expected 1 to {_MAX_TYPES} comma-separated message types")
        return found

    since = _integer(last("since") or "0", "since")
    until_text, max_bytes_text = last("until"), last("max_bytes")
    max_bytes = None if max_bytes_text is None else _integer(max_bytes_text, "max_bytes")
    if max_bytes is not None and max_bytes < 1:
        raise ValueError(f"max_bytes: expected a positive integer, got {max_bytes}")
    until = None if until_text is None else _integer(until_text, "until")
    return RunRead(since, until, names("types"), names("exclude"), max_bytes)


def _integer(text: str, name: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or not protocol.INT64_MIN <= value <= protocol.INT64_MAX:
        raise ValueError(f"{name}: expected an integer from -2**63 to 2**63-1, got {text[:40]!r}")
    return value


def _not_found(error: str) -> Response:
    return error_response(http.HTTPStatus.NOT_FOUND, error)


@cache
def _protocol_body() -> bytes:
    return json.dumps(protocol.describe()).encode()


def _protocol_response() -> Response:
    # Not cached by browsers, like the page's own files: both always come from this relay.
    return response(http.HTTPStatus.OK, _protocol_body(), "application/json")
