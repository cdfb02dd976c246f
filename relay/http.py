"""Plain HTTP on the relay's port: the dashboard's files, health, counters and the run API.

websockets answers these from ``process_request`` (one response per connection, no
keep-alive), which is plenty for a dashboard page, its scripts and a small JSON API.

Routes (GET):
    ``/``                              the dashboard page, ``relay/static/index.html``
    ``/static/<file>``                 files from ``relay/static/``
    ``/static/plotly.min.js``          Plotly, from the installed ``plotly`` package
    ``/favicon.ico``                   ``relay/static/favicon.ico``, or 204 when there is none
    ``/healthz``                       ``{"status": "ok", "epoch"}``
    ``/stats``                         the relay's counters
    ``/api/protocol``                  the wire protocol, ``fl_stream.monitor.protocol.describe()``
                                       (the dashboard loads it before anything else)
    ``/api/runs``                      ``{"epoch", "runs"}``: every run's summary, newest first
    ``/api/runs/{run_id}/metrics``     one run: summary, messages (``?since=<seq>``), final metrics

With a viewer token, ``/api/*`` needs ``Authorization: Bearer <token>`` (401 without);
``/healthz``, ``/stats``, ``/`` and ``/static/*`` hold no run data and stay open. Run
summaries come from memory (:class:`relay.runs.RunIndex`); a run's messages are read in a
worker thread, so no request holds up the event loop.
"""

from __future__ import annotations

import asyncio
import http
import importlib.resources
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
from relay.store import MessageStore

__all__ = ["STATIC_DIR", "HttpRoutes"]

STATIC_DIR = Path(__file__).with_name("static")

_RUN_PREFIX = "/api/runs/"
_RUN_SUFFIX = "/metrics"


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
        if path == "/static/plotly.min.js":
            return _plotly_response()
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
            return await self._run_metrics(name, parse_qs(query).get("since", ["0"])[-1])
        return _not_found(f"no such path: {path}")

    async def _run_metrics(self, name: str, since_text: str) -> Response:
        try:
            since = int(since_text)
        except ValueError:
            since = None
        if since is None or not protocol.INT64_MIN <= since <= protocol.INT64_MAX:
            return error_response(
                http.HTTPStatus.BAD_REQUEST,
                f"since: expected an integer from -2**63 to 2**63-1, got {since_text[:40]!r}",
            )
        run_id = self.runs.resolve(name)
        summary = self.runs.summary(run_id) if run_id is not None else None
        if run_id is None or summary is None:
            return _not_found(f"unknown run: {name[:100]!r}")
        end = self.runs.end(run_id)
        final = end["data"] if end is not None and end["type"] == "training_end" else None
        head = {
            **summary,
            "final_metrics": final["final_metrics"] if final else None,
            "training_end": final,
        }
        bodies = await asyncio.to_thread(self.store.run_bodies, run_id, since)
        # The stored frames are already JSON: splice them in rather than decode and re-encode.
        body = json.dumps(head)[:-1] + ',"messages":[' + ",".join(bodies) + "]}"
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
        return response(http.HTTPStatus.OK, body, kind)


def _not_found(error: str) -> Response:
    return error_response(http.HTTPStatus.NOT_FOUND, error)


@cache
def _protocol_body() -> bytes:
    return json.dumps(protocol.describe()).encode()


def _protocol_response() -> Response:
    # Not cached by browsers, like the page's own files: both always come from this relay.
    return response(http.HTTPStatus.OK, _protocol_body(), "application/json")


@cache
def _plotly_bytes() -> bytes:
    return importlib.resources.files("plotly").joinpath("package_data/plotly.min.js").read_bytes()


def _plotly_response() -> Response:
    try:
        body = _plotly_bytes()
    except (ModuleNotFoundError, OSError) as exc:
        return _not_found(f"plotly.min.js unavailable ({exc}); pip install plotly")
    return response(http.HTTPStatus.OK, body, "text/javascript", cache=True)
