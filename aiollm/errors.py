"""Errors the engine raises at its edge; the HTTP layer maps them to status codes."""

from __future__ import annotations


class InvalidRequest(ValueError):
    """Bad input from a caller (HTTP 400). `param` names the offending field when known."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


class Overloaded(RuntimeError):
    """The waiting queue is full (HTTP 503 with Retry-After)."""


class RequestFailed(RuntimeError):
    """Serving one request failed inside the engine (HTTP 500); other requests go on."""
