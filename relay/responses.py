"""HTTP responses as the relay writes them: exactly one ``Content-Type``, JSON errors."""

from __future__ import annotations

import email.utils
import http
import json
from typing import Any

from websockets.datastructures import Headers
from websockets.http11 import Response

__all__ = ["error_response", "json_response", "response"]


def json_response(payload: Any, status: http.HTTPStatus = http.HTTPStatus.OK) -> Response:
    """Return ``payload`` as an ``application/json`` response."""
    return response(status, json.dumps(payload).encode(), "application/json")


def error_response(status: http.HTTPStatus, error: str) -> Response:
    """Return ``{"error": ...}`` with ``status``."""
    return json_response({"error": error}, status)


def response(
    status: http.HTTPStatus, body: bytes = b"", content_type: str | None = None, cache: bool = False
) -> Response:
    """A response with ``body``; text types get ``charset=utf-8``; not cached unless ``cache``."""
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
