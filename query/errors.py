"""Errors the handlers raise; the app turns them into JSON responses."""

from __future__ import annotations


class QueryError(Exception):
    status = 400

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(QueryError):
    status = 400


class NotFound(QueryError):
    status = 404
