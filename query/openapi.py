"""The service's OpenAPI document, served at ``GET /api/v1/openapi.json``.

Every operation is declared once here, with its parameters and the
:mod:`stride.api_types` Structs of its body and answer; the schemas come from
those Structs (``msgspec.json.schema_components``), so the document cannot
drift from what the service encodes. ``tests/test_openapi.py`` checks that it
lists exactly the app's routes and runs schemathesis against it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import msgspec

from stride._api_columns import NEXT_CURSOR_HEADER
from stride.api_types import (
    Access,
    AlertsPage,
    ArtifactDoc,
    ArtifactsPage,
    ErrorBody,
    EventsPage,
    FileDoc,
    FilesPage,
    FileUpdate,
    FoldersPage,
    MetricKeys,
    MetricStats,
    ProjectsPage,
    RunDoc,
    RunSearch,
    RunsPage,
    RunUpdate,
    Status,
)
from stride.ids import KEY_PATTERN, NAME_PATTERN
from stride.wire import FILE_CATEGORIES, LEVELS

from .auth import AUTH_EXEMPT

__all__ = ["OPERATIONS", "Operation", "openapi_document"]

_NAME = {"type": "string", "pattern": f"^{NAME_PATTERN}$"}
_KEY = {"type": "string", "pattern": f"^{KEY_PATTERN}$"}
_INT64 = {"type": "integer", "minimum": -(2**63), "maximum": 2**63 - 1}


@dataclasses.dataclass(frozen=True)
class Param:
    name: str
    schema: dict[str, Any]
    where: str = "query"
    description: str = ""
    repeated: bool = False

    def document(self) -> dict[str, Any]:
        schema = {"type": "array", "items": self.schema} if self.repeated else self.schema
        doc: dict[str, Any] = {
            "name": self.name,
            "in": self.where,
            "required": self.where == "path",
            "schema": schema,
        }
        if self.repeated:
            doc |= {"style": "form", "explode": True}
        if self.description:
            doc["description"] = self.description
        return doc


@dataclasses.dataclass(frozen=True)
class Operation:
    method: str
    path: str
    summary: str
    params: tuple[Param, ...] = ()
    body: type | None = None
    answer: type | None = Status
    #: For answers that are not one JSON Struct (streams, files): their media types.
    media: tuple[str, ...] = ()
    #: Headers of the answer, beside its body: (name, what it holds).
    headers: tuple[tuple[str, str], ...] = ()


_ENTITY = Param("entity", _NAME, "path")
_PROJECT = Param("project", _NAME, "path")
_RUN = (_ENTITY, _PROJECT, Param("run_id", _NAME, "path"))
_STREAM = Param("stream", _NAME, description="metric stream (default: default)")
_KEYS = Param("keys", _KEY, repeated=True, description="metric keys (default: all)")
_RANGE = (Param("min_step", _INT64), Param("max_step", _INT64))
_FILE_NAME = Param("name", {"type": "string"}, description="the file's name, as listed")
_VERSION = Param("version", {"type": "integer", "minimum": 0, "maximum": 2**31},
                 description="from 0, in the order saved (default: the latest)")  # fmt: skip
_ARTIFACTS = "/api/v1/artifacts/{entity}/{project}"
_ARTIFACT = _ARTIFACTS + "/{name}"
_ART = (_ENTITY, _PROJECT, Param("name", _NAME, "path"))
_ART_VERSION = Param("version", _NAME, description="vN, latest (the default) or an alias")
_RUNS = "/api/v1/runs/{entity}/{project}"
_ONE = _RUNS + "/{run_id}"

OPERATIONS: tuple[Operation, ...] = (
    Operation("get", "/healthz", "Liveness: the process answers"),
    Operation("get", "/readyz", "Readiness: storage (and, in stride up, ingest) is up"),
    Operation("get", "/api/v1/status", "Ingest counters and lag"),
    Operation("get", "/api/v1/openapi.json", "This document", answer=None,
              media=("application/json",)),
    Operation("get", "/api/v1/access/{entity}", "What the caller's token allows there",
              (_ENTITY,), answer=Access),
    Operation(
        "get", "/api/v1/projects/{entity}", "An entity's projects by name",
        (_ENTITY, Param("per_page", {"type": "integer", "minimum": 1, "maximum": 1000}),
         Param("after", _NAME)),
        answer=ProjectsPage,
    ),
    Operation(
        "get", _RUNS, "Search a project's runs (MongoDB-style filters as JSON)",
        (_ENTITY, _PROJECT, Param("filters", {"type": "string"}),
         Param("order", {"type": "string"}),
         Param("per_page", {"type": "integer", "minimum": 1, "maximum": 1000}),
         Param("after", {"type": "string"}),
         Param("count", {"type": "string", "enum": ["true", "false"]})),
        answer=RunsPage,
    ),
    Operation("post", _RUNS, "Search a project's runs (filters in the body)",
              (_ENTITY, _PROJECT), body=RunSearch, answer=RunsPage),
    Operation("get", _ONE, "A run", _RUN, answer=RunDoc),
    Operation("patch", _ONE, "Change a run's name, notes, tags, config or summary", _RUN,
              body=RunUpdate, answer=RunDoc),
    Operation("delete", _ONE, "Delete a run and all it stored",
              (*_RUN, Param("delete_artifacts", {"type": "string", "enum": ["true", "false"]}))),
    Operation("get", _ONE + "/keys", "A run's metric keys, a page at a time",
              (*_RUN, _STREAM, Param("per_page", {"type": "integer", "minimum": 1,
                                                  "maximum": 10_000}), Param("after", _KEY)),
              answer=MetricKeys),
    Operation(
        "get", _ONE + "/history", "Sampled history",
        (*_RUN, Param("samples", {"type": "integer", "minimum": 2, "maximum": 100_000}), _KEYS,
         *_RANGE, _STREAM, Param("envelope", {"type": "string", "enum": ["true", "false"]}),
         Param("x_axis", _KEY, description="_step (default), _runtime, _timestamp or a key")),
        answer=None, media=("application/json",),
    ),
    Operation(
        "get", _ONE + "/scan", "A page of every row in step order",
        (*_RUN, Param("page_size", {"type": "integer", "minimum": 1, "maximum": 100_000}), _KEYS,
         *_RANGE, Param("cursor", _INT64), _STREAM),
        answer=None, media=("application/json",),
        headers=((NEXT_CURSOR_HEADER, "the body's next cursor (empty on the last page)"),),
    ),
    Operation("get", _ONE + "/stats", "Per-key count, first, last, min, max, mean",
              (*_RUN, _KEYS, _STREAM), answer=MetricStats),
    Operation(
        "get", _ONE + "/stream", "A whole range of rows, streamed (Arrow IPC or NDJSON)",
        (*_RUN, Param("format", {"type": "string", "enum": ["arrow", "ndjson"]}), _KEYS,
         *_RANGE, _STREAM),
        answer=None, media=("application/vnd.apache.arrow.stream", "application/x-ndjson"),
    ),
    Operation(
        "get", _ONE + "/export", "A run's metrics as CSV, Parquet or JSON",
        (*_RUN, Param("format", {"type": "string", "enum": ["csv", "parquet", "json"]}), _KEYS,
         _STREAM),
        answer=None, media=("text/csv", "application/vnd.apache.parquet", "application/json"),
    ),
    Operation(
        "get", _ONE + "/events", "A run's events and log lines in time order, filtered",
        (*_RUN, Param("level", {"type": "string"}),
         Param("min_level", {"type": "string", "enum": list(LEVELS)}),
         Param("since", {"type": "number"}), Param("until", {"type": "number"}),
         Param("q", {"type": "string"}), Param("after", {"type": "string"}),
         Param("per_page", {"type": "integer", "minimum": 1, "maximum": 10000})),
        answer=EventsPage,
    ),
    Operation(
        "get", "/api/v1/folders/{entity}/{project}", "A project's folders: details and run counts",
        (_ENTITY, _PROJECT, Param("prefix", {"type": "string"})), answer=FoldersPage,
    ),
    Operation(
        "get", _ONE + "/alerts", "A run's alerts: definition, state and every change of state",
        _RUN, answer=AlertsPage,
    ),
    Operation(
        "get", _ONE + "/files", "A run's saved files by name, each at its latest version",
        (*_RUN, Param("prefix", {"type": "string"}),
         Param("category", {"type": "string", "enum": list(FILE_CATEGORIES)}),
         Param("tag", {"type": "string"}), Param("after", {"type": "string"}),
         Param("per_page", {"type": "integer", "minimum": 1, "maximum": 1000}),
         Param("deleted", {"type": "string", "enum": ["true", "false"]})),
        answer=FilesPage,
    ),
    Operation("get", _ONE + "/file", "One version of a saved file (the latest by default)",
              (*_RUN, _FILE_NAME, _VERSION), answer=FileDoc),
    Operation("patch", _ONE + "/file",
              "Change a file version's description, tags or metadata, or restore it",
              (*_RUN, _FILE_NAME, _VERSION), body=FileUpdate, answer=FileDoc),
    Operation("delete", _ONE + "/file", "Soft-delete a file, or purge it (purge=true)",
              (*_RUN, _FILE_NAME, Param("purge", {"type": "string", "enum": ["true", "false"]}))),
    Operation(
        "get", _ONE + "/file/content", "A saved file's bytes (a Range header gets a part: 206)",
        (*_RUN, _FILE_NAME, _VERSION), answer=None, media=("application/octet-stream",),
    ),
    Operation("get", _ONE + "/artifacts", "The artifacts a run logged or used",
              (*_RUN, Param("direction", {"type": "string", "enum": ["logged", "used"]})),
              answer=ArtifactsPage),
    Operation("get", _ARTIFACTS, "A project's artifacts by name, each at its latest version",
              (_ENTITY, _PROJECT, Param("type", _NAME), Param("after", _NAME),
               Param("per_page", {"type": "integer", "minimum": 1, "maximum": 200})),
              answer=ArtifactsPage),
    Operation("get", _ARTIFACT, "One version of an artifact, with its files",
              (*_ART, _ART_VERSION), answer=ArtifactDoc),
    Operation("get", _ARTIFACT + "/versions", "Every version of an artifact, v0 first",
              _ART, answer=ArtifactsPage),
    Operation("get", _ARTIFACT + "/file", "The bytes of one file of an artifact version",
              (*_ART, _ART_VERSION, Param("path", {"type": "string"})), answer=None,
              media=("application/octet-stream",)),
    Operation(
        "get", "/api/v1/export/runs/{entity}/{project}", "A project's runs table",
        (_ENTITY, _PROJECT, Param("format", {"type": "string", "enum": ["csv", "parquet"]}),
         Param("filters", {"type": "string"})),
        answer=None, media=("text/csv", "application/vnd.apache.parquet"),
    ),
)  # fmt: skip

_STRUCTS = (Access, ArtifactDoc, ArtifactsPage, ErrorBody, EventsPage, FileDoc, FilesPage,
            FileUpdate, MetricKeys, MetricStats, ProjectsPage, RunDoc, RunSearch, RunsPage,
            RunUpdate, Status)  # fmt: skip


def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 document of :data:`OPERATIONS`."""
    _, components = msgspec.json.schema_components(
        _STRUCTS, ref_template="#/components/schemas/{name}"
    )
    error = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        if op.answer is not None:
            ok = {"application/json": {"schema": _ref(op.answer)}}
        else:
            ok = {media: {"schema": {}} for media in op.media}
        answered: dict[str, Any] = {"description": "OK", "content": ok}
        if op.headers:
            answered["headers"] = {
                name: {"description": what, "schema": {"type": "string"}}
                for name, what in op.headers
            }
        spec: dict[str, Any] = {
            "summary": op.summary,
            "operationId": f"{op.method}_{op.path}",
            "parameters": [p.document() for p in op.params],
            "responses": {
                "200": answered,
                "400": {"description": "Invalid input", "content": error},
                "401": {"description": "A token is needed (with --tokens)", "content": error},
                "403": {"description": "The token lacks the scope", "content": error},
                "404": {"description": "No such run, key or route", "content": error},
                "default": {"description": "An error", "content": error},
            },
        }
        if op.path in AUTH_EXEMPT:
            spec["security"] = []
        if op.body is not None:
            spec["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": _ref(op.body)}},
            }
        paths.setdefault(op.path, {})[op.method] = spec
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Stride query API",
            "version": "1",
            "description": "Runs, metrics and exports; see docs/http-api.md.",
        },
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"token": {"type": "http", "scheme": "bearer"}},
        },
        # Needed when the service runs with a tokens file (stride token create).
        "security": [{"token": []}],
    }


def _ref(struct: type) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{struct.__name__}"}
