"""Errors the handlers raise; the app turns them into JSON responses."""

from __future__ import annotations


class QueryError(Exception):
    status = 400

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(QueryError):
    status = 400


class Unauthorized(QueryError):
    """No token, or one that is unknown or revoked."""

    status = 401


class Forbidden(QueryError):
    """A token without the scope the request needs."""

    status = 403


class NotFound(QueryError):
    status = 404


class Unavailable(QueryError):
    """Not ready (storage or a companion service is not answering): try again later."""

    status = 503
