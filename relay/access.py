"""Who may connect, read and publish: browser origins, the publisher and the viewer token.

Tokens travel only as ``Authorization: Bearer <token>`` (HTTP and the WebSocket handshake) or
in an ``auth`` frame (browsers cannot set headers on a WebSocket); a URL that carries one is
refused, since URLs end up in logs and histories. Tokens are compared in constant time and
never logged.

Without a viewer token anyone may read; without a publisher token anyone may publish. The
publisher token also allows reading.
"""

from __future__ import annotations

import hmac
import http
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from relay.responses import error_response

__all__ = ["Access", "Gate"]

# Query parameters that look like a token: refused, never read.
_TOKEN_PARAMETERS = frozenset({"token", "access_token", "auth", "authorization"})


@dataclass(frozen=True)
class Access:
    """What a connection or request may do."""

    can_read: bool
    can_publish: bool


class _Refused(Exception):
    def __init__(self, response: Response) -> None:
        super().__init__(response.reason_phrase)
        self.response = response


class Gate:
    """Decides who may connect, read and publish.

    Args:
        token: the publisher token, or None when anyone may publish.
        viewer_token: the token that allows reading, or None when anyone may read.
        allowed_origins: browser origins allowed to connect; a client that sends no
            ``Origin`` (not a browser) is always allowed.
    """

    def __init__(
        self, token: str | None, viewer_token: str | None, allowed_origins: set[str]
    ) -> None:
        self._publisher = token.encode() if token else None
        self._viewer = viewer_token.encode() if viewer_token else None
        self.allowed_origins = allowed_origins
        self.anonymous = Access(can_read=self._viewer is None, can_publish=self._publisher is None)

    def for_token(self, token: str | None) -> Access | None:
        """What ``token`` allows (None: nothing presented); None for a token that is wrong."""
        if token is None or (self._publisher is None and self._viewer is None):
            return self.anonymous
        presented = token.encode()
        # Both comparisons always run: the time taken tells nothing about either token.
        publisher = self._publisher is not None and hmac.compare_digest(presented, self._publisher)
        viewer = self._viewer is not None and hmac.compare_digest(presented, self._viewer)
        if publisher:
            return Access(can_read=True, can_publish=True)
        if viewer:
            return Access(can_read=True, can_publish=self.anonymous.can_publish)
        return None

    def handshake(self, request: Request) -> Access | Response:
        """What a WebSocket handshake may do, or the HTTP error that refuses it."""
        try:
            origin = _single(request.headers, "Origin")
            if origin is not None and origin not in self.allowed_origins:
                return error_response(
                    http.HTTPStatus.FORBIDDEN,
                    f"origin {origin} is not allowed; start the relay with "
                    f"--allowed-origin {origin}",
                )
            return self._access(request)
        except _Refused as refused:
            return refused.response

    def reader(self, request: Request) -> Response | None:
        """None when an HTTP request may read runs; else the 4xx that refuses it."""
        try:
            access = self._access(request)
        except _Refused as refused:
            return refused.response
        if access.can_read:
            return None
        return _unauthorised("this relay needs 'Authorization: Bearer <viewer token>' to read")

    def refuse_token_in_url(self, request: Request) -> Response | None:
        """A 400 for a URL that carries a token; None for any other."""
        query = parse_qs(urlsplit(request.path).query, keep_blank_values=True)
        if _TOKEN_PARAMETERS.isdisjoint(name.lower() for name in query):
            return None
        return error_response(
            http.HTTPStatus.BAD_REQUEST,
            "tokens are not accepted in URLs (they end up in logs and histories); send "
            "'Authorization: Bearer <token>' or, from a browser's WebSocket, an auth message",
        )

    def _access(self, request: Request) -> Access:
        header = _single(request.headers, "Authorization")
        token = None
        if header is not None:
            scheme, _, token = header.partition(" ")
            token = token.strip() if scheme.lower() == "bearer" else ""
        access = self.for_token(token)
        if access is None:
            raise _Refused(_unauthorised("invalid token"))
        return access


def _single(headers: Headers, name: str) -> str | None:
    values = headers.get_all(name)
    if len(values) > 1:
        raise _Refused(
            error_response(http.HTTPStatus.BAD_REQUEST, f"more than one {name} header; send one")
        )
    return values[0] if values else None


def _unauthorised(reason: str) -> Response:
    response = error_response(http.HTTPStatus.UNAUTHORIZED, f"unauthorised: {reason}")
    response.headers["WWW-Authenticate"] = "Bearer"
    return response
