"""Plain HTTP on the relay's port: the dashboard's files, health, counters and the run API.

websockets answers these from ``process_request`` (one response per connection, no
keep-alive), which is plenty for a dashboard page, its scripts and a small JSON API.

Routes (GET):
    ``/``                              the dashboard page, ``relay/static/index.html``
    ``/static/<file>``                 files from ``relay/static/``
    ``/static/plotly.min.js``          Plotly, from the installed ``plotly`` package
    ``/favicon.ico``                   ``relay/static/favicon.ico``, or 204 when there is none
    ``/healthz``                       ``{"status": "ok"}``
    ``/stats``                         the relay's counters
    ``/api/protocol``                  the wire protocol, ``fl_stream.monitor.protocol.describe()``
                                       (the dashboard loads it before anything else)
    ``/api/runs``                      every run's summary, the most recently active first
    ``/api/runs/{run_id}/metrics``     one run: summary, messages (``?since=<seq>``), final metrics
"""

from __future__ import annotations

import email.utils
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

from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from fl_stream.monitor import protocol
from relay.store import MessageStore

__all__ = ["STATIC_DIR", "HttpRoutes"]

STATIC_DIR = Path(__file__).with_name("static")

_RUN_PREFIX = "/api/runs/"
_RUN_SUFFIX = "/metrics"


class HttpRoutes:
    """Answers the relay's HTTP requests.

    Args:
        store: the message store the API reads.
        stats: returns the relay's counters for ``/stats``.
        static_dir: the folder served under ``/static/`` and ``/``.
    """

    def __init__(
        self,
        store: MessageStore,
        stats: Callable[[], dict[str, Any]],
        static_dir: Path = STATIC_DIR,
    ) -> None:
        self.store = store
        self.stats = stats
        self.static_dir = static_dir.resolve()
        self._started = time.monotonic()

    def respond(self, request: Request) -> Response:
        """Return the response to a plain (non-WebSocket) GET request."""
        url = urlsplit(request.path)
        path = url.path
        if path == "/healthz":
            return json_response({"status": "ok"})
        if path == "/stats":
            uptime = round(time.monotonic() - self._started, 3)
            return json_response({**self.stats(), "uptime_s": uptime})
        if path == "/api/protocol":
            return _protocol_response()
        if path == "/api/runs":
            return json_response({"runs": self.store.runs()})
        if path.startswith(_RUN_PREFIX) and path.endswith(_RUN_SUFFIX):
            run_id = unquote(path[len(_RUN_PREFIX) : -len(_RUN_SUFFIX)])
            return self._run_metrics(run_id, parse_qs(url.query).get("since", ["0"])[-1])
        if path == "/":
            return self._file(self.static_dir / "index.html")
        if path == "/favicon.ico":
            icon = self.static_dir / "favicon.ico"
            return self._file(icon) if icon.is_file() else _response(http.HTTPStatus.NO_CONTENT)
        if path == "/static/plotly.min.js":
            return _plotly_response()
        if path.startswith("/static/"):
            return self._file(self.static_dir / unquote(path[len("/static/") :]))
        return error_response(http.HTTPStatus.NOT_FOUND, f"no such path: {path}")

    def _run_metrics(self, run_id: str, since_text: str) -> Response:
        try:
            since = int(since_text)
        except ValueError:
            return error_response(
                http.HTTPStatus.BAD_REQUEST, f"since: expected an integer, got {since_text!r}"
            )
        summary = self.store.run_summary(run_id)
        if summary is None:
            return error_response(http.HTTPStatus.NOT_FOUND, f"unknown run: {run_id!r}")
        end = self.store.run_end(run_id)
        final = end["data"] if end is not None and end["type"] == "training_end" else None
        head = {
            **summary,
            "final_metrics": final["final_metrics"] if final else None,
            "training_end": final,
        }
        # The stored frames are already JSON: splice them in rather than decode and re-encode.
        messages = ",".join(self.store.run_bodies(run_id, since))
        body = json.dumps(head)[:-1] + ',"messages":[' + messages + "]}"
        return _response(http.HTTPStatus.OK, body.encode(), "application/json")

    def _file(self, path: Path) -> Response:
        resolved = path.resolve()
        # resolve() folds "..": anything outside the static folder does not exist here.
        if not resolved.is_relative_to(self.static_dir) or not resolved.is_file():
            return error_response(http.HTTPStatus.NOT_FOUND, f"no such file: {path.name}")
        kind = mimetypes.guess_type(resolved.name)[0] or "application/octet-stream"
        return _response(http.HTTPStatus.OK, resolved.read_bytes(), kind)


def json_response(payload: Any, status: http.HTTPStatus = http.HTTPStatus.OK) -> Response:
    """Return ``payload`` as an ``application/json`` response."""
    return _response(status, json.dumps(payload).encode(), "application/json")


def error_response(status: http.HTTPStatus, error: str) -> Response:
    """Return ``{"error": ...}`` with ``status``."""
    return json_response({"error": error}, status)


@cache
def _protocol_body() -> bytes:
    return json.dumps(protocol.describe()).encode()


def _protocol_response() -> Response:
    # Not cached by browsers, like the page's own files: both always come from this relay.
    return _response(http.HTTPStatus.OK, _protocol_body(), "application/json")


@cache
def _plotly_bytes() -> bytes:
    return importlib.resources.files("plotly").joinpath("package_data/plotly.min.js").read_bytes()


def _plotly_response() -> Response:
    try:
        body = _plotly_bytes()
    except (ModuleNotFoundError, OSError) as exc:
        return error_response(
            http.HTTPStatus.NOT_FOUND, f"plotly.min.js unavailable ({exc}); pip install plotly"
        )
    return _response(http.HTTPStatus.OK, body, "text/javascript", cache=True)


def _response(
    status: http.HTTPStatus, body: bytes = b"", content_type: str | None = None, cache: bool = False
) -> Response:
    # Built whole rather than through connection.respond(), whose Content-Type header a
    # later assignment would duplicate (Headers appends).
    headers = Headers(
        [
            ("Date", email.utils.formatdate(usegmt=True)),
            ("Connection", "close"),
            ("Content-Length", str(len(body))),
            ("Cache-Control", "max-age=3600" if cache else "no-store"),
        ]
    )
    if content_type is not None:
        text = content_type.startswith("text/") or content_type == "application/json"
        headers["Content-Type"] = f"{content_type}; charset=utf-8" if text else content_type
    return Response(status.value, status.phrase, headers, body)
