"""The public query client, shaped like the W&B public API (``Api``, ``Run``).

It speaks HTTP to the query service through :mod:`._http` (the standard
library's, so the SDK's base install stays small). Answers are decoded into
the Structs of :mod:`stride.api_types`, the ones the service encodes. pandas
is optional: ``history(pandas=True)`` needs it installed.
"""

from __future__ import annotations

import os
import time
import urllib.parse
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import msgspec
import orjson

from . import _api_artifacts
from ._api_artifacts import ApiArtifact
from ._api_columns import columns as columns_of
from ._api_columns import dataframe, pyarrow_ipc
from ._api_events import list_events
from ._api_files import ApiFile, list_files, one_file
from ._api_folders import ApiFolder, list_folders
from ._api_params import check_finite, keys_param, plain
from ._config import NestedDict
from ._http import COLUMNS as _COLUMNS
from ._http import QueryHttp
from ._rows import rows
from .api_types import (
    Access,
    AlertDoc,
    AlertsPage,
    EventDoc,
    MetricKeys,
    MetricStats,
    ProjectDoc,
    ProjectsPage,
    RunDoc,
    RunSearch,
    RunsPage,
    Status,
)
from .errors import (
    UsageError,
)

#: The states of a run that has not ended.
_GOING = ("created", "running")

# One decoder per answer type, built once.
_RUN = msgspec.json.Decoder(RunDoc)
_RUNS = msgspec.json.Decoder(RunsPage)
_ALERTS = msgspec.json.Decoder(AlertsPage)
_KEYS = msgspec.json.Decoder(MetricKeys)
_STATS = msgspec.json.Decoder(MetricStats)
_PROJECTS = msgspec.json.Decoder(ProjectsPage)
_SEARCH = msgspec.json.Encoder()
_STATUS = msgspec.json.Decoder(Status)
_ACCESS = msgspec.json.Decoder(Access)
#: A run's editable fields, copied through JSON for :meth:`ApiRun.update`.
_EDITABLE_COPY = msgspec.json.Decoder(RunDoc)
_EDITABLE_COPY_ENC = msgspec.json.Encoder()
_UNSET = object()


class Api(QueryHttp):
    """Query runs and their metrics.

    ``base_url`` defaults to ``$STRIDE_API``, else ``http://127.0.0.1:8080``.
    ``overrides`` may set a default ``entity`` and ``project`` so that
    ``api.run("run_id")`` works. ``token`` (default ``$STRIDE_API_TOKEN``) is sent
    as a bearer token, for a service that needs one (``stride up --tokens``).

    Example::

        api = stride.Api()
        for run in api.runs("default/vision"):
            print(run.name, run.state, run.summary.get("best_acc"))
    """

    def __init__(
        self,
        base_url: str | None = None,
        *,
        overrides: Mapping[str, str] | None = None,
        timeout: float = 30.0,
        retries: int = 3,
        token: str | None = None,
    ) -> None:
        super().__init__(base_url, timeout=timeout, retries=retries, token=token)
        overrides = dict(overrides or {})
        self.default_entity = (
            overrides.get("entity") or os.environ.get("STRIDE_ENTITY") or "default"
        )
        self.default_project = overrides.get("project")
        self._access_cache: dict[str, Access] = {}

    def runs(
        self,
        path: str = "",
        filters: Mapping[str, Any] | None = None,
        order: str = "-created_at",
        per_page: int = 50,
    ) -> Runs:
        """The runs of ``entity/project`` (or ``project``) that match ``filters``, in
        ``order``, fetched page by page as iteration reaches them.

        ``filters`` are MongoDB-style, as W&B's: ``{"config.lr": {"$gt": 1e-3},
        "state": "finished", "tags": {"$in": ["baseline"]}}``; fields, operators
        and how they differ from MongoDB's are in ``docs/http-api.md``. ``order``
        names a field (``created_at``, ``heartbeat_at``, ``config.<key>``,
        ``summary.<key>``...), descending unless it starts with ``+``.

        Example::

            best = api.runs("vision", {"state": "finished"}, order="+summary.loss")
            print(next(iter(best)).name)
        """
        entity, project = self._project_path(path)
        asked = dict(filters) if filters else None
        check_finite(asked, "filters")
        return Runs(self, entity, project, RunSearch(asked, order, per_page))

    def folders(self, path: str = "", prefix: str | None = None) -> list[ApiFolder]:
        """The folders of ``entity/project`` (or ``project``), by path: each that holds a
        run or has details (``Run.set_folder_details``); ``prefix`` keeps those whose
        path starts with it."""
        return list_folders(self, *self._project_path(path), prefix)

    def _access(self, entity: str) -> Access:
        found = self._access_cache.get(entity)
        if found is None:
            quoted = urllib.parse.quote(entity, safe="")
            found = self._access_cache[entity] = self._get_as(_ACCESS, f"/api/v1/access/{quoted}")
        return found

    def _project_path(self, path: str) -> tuple[str, str]:
        parts = [p for p in path.split("/") if p]
        if len(parts) == 2:
            return parts[0], parts[1]
        if len(parts) == 1:
            return self.default_entity, parts[0]
        if not parts and self.default_project:
            return self.default_entity, self.default_project
        raise UsageError(f"takes 'entity/project' or 'project', got {path!r}")

    def projects(self, entity: str | None = None, *, per_page: int = 200) -> Iterator[ProjectDoc]:
        """The projects of ``entity`` (default: the default entity) by name, each with
        ``name``, ``entity``, ``run_count`` and ``last_activity`` (the newest heartbeat
        of its runs), fetched page by page."""
        quoted = urllib.parse.quote(entity or self.default_entity, safe="")
        cursor: str | None = None
        while True:
            params = [("per_page", per_page), ("after", cursor)]
            page = self._get_as(_PROJECTS, f"/api/v1/projects/{quoted}", params)
            yield from page.projects
            cursor = page.next
            if cursor is None:
                return

    def run(self, path: str) -> ApiRun:
        """One run by ``entity/project/run_id`` (or shorter, with defaults set)."""
        parts = [p for p in path.split("/") if p]
        if len(parts) == 3:
            entity, project, run_id = parts
        elif len(parts) == 2:
            entity, (project, run_id) = self.default_entity, parts
        elif len(parts) == 1 and self.default_project:
            entity, project, run_id = self.default_entity, self.default_project, parts[0]
        else:
            raise UsageError(f"run() takes 'entity/project/run_id', got {path!r}")
        quoted = "/".join(urllib.parse.quote(p, safe="") for p in (entity, project, run_id))
        return ApiRun(self, self._get_as(_RUN, f"/api/v1/runs/{quoted}"))

    def artifact(self, path: str) -> ApiArtifact:
        """One version of an artifact: ``entity/project/name:version`` (``project/name``,
        or ``name`` with a default project), ``version`` being ``vN``, ``latest`` (the
        default) or an alias."""
        return _api_artifacts.artifact(self, path)

    def artifact_versions(self, path: str) -> list[ApiArtifact]:
        """Every version of an artifact (``entity/project/name``), ``v0`` first."""
        return _api_artifacts.artifact_versions(self, path)

    def artifacts(
        self, path: str = "", type: str | None = None, *, per_page: int = 50
    ) -> Iterator[ApiArtifact]:
        """The artifacts of ``entity/project`` (or ``project``) by name, each at its
        latest version; only those of ``type`` if given."""
        entity, project = self._project_path(path)
        return _api_artifacts.list_artifacts(self, entity, project, type, per_page)

    def export_runs(
        self,
        path: str,
        dest: str | os.PathLike[str],
        format: str = "csv",
        filters: Mapping[str, Any] | None = None,
    ) -> Path:
        """Write the runs of ``entity/project`` (or ``project``) that match ``filters``
        to ``dest`` as a table, one row per run (its fields, then ``config.*`` and
        ``summary.*`` flattened), as ``"csv"`` or ``"parquet"``; return ``dest``.

        Streamed from the service to the file, oldest run first; ``dest`` appears
        only once complete.
        """
        entity, project = self._project_path(path)
        check_finite(dict(filters) if filters else None, "filters")
        params = [("format", format)]
        if filters:
            params.append(("filters", orjson.dumps(dict(filters)).decode()))
        return self._download(f"/api/v1/export/runs/{entity}/{project}", params, Path(dest))


class Runs:
    """Iterable over a project's runs that match a search; pages are fetched as
    iteration reaches them (a run created meanwhile never shifts a page)."""

    def __init__(self, api: Api, entity: str, project: str, search: RunSearch) -> None:
        self._api, self.entity, self.project = api, entity, project
        self._search = search
        self._total: int | None = None

    def __len__(self) -> int:
        """How many runs match (asked of the service once, as W&B's ``len(runs)``)."""
        if self._total is None:
            search = msgspec.structs.replace(self._search, per_page=1, count=True, after=None)
            page = self._api._post_as(_RUNS, self._path, _SEARCH.encode(search))
            assert page.total is not None
            self._total = page.total
        return self._total

    @property
    def _path(self) -> str:
        return "/api/v1/runs/" + "/".join(
            urllib.parse.quote(p, safe="") for p in (self.entity, self.project)
        )

    def __iter__(self) -> Iterator[ApiRun]:
        path = self._path
        search = self._search
        while True:
            if search.filters:  # in a body: a filter may be too long for a URL
                page = self._api._post_as(_RUNS, path, _SEARCH.encode(search))
            else:
                params = [("per_page", search.per_page), ("order", search.order)]
                page = self._api._get_as(_RUNS, path, [*params, ("after", search.after)])
            for doc in page.runs:
                yield ApiRun(self._api, doc)
            if page.next is None:
                return
            search = msgspec.structs.replace(search, after=page.next)


class ApiRun:
    """A run as stored: attributes plus ``history`` and ``scan_history``."""

    def __init__(self, api: Api, doc: RunDoc) -> None:
        self._api = api
        self._set(doc)

    def _set(self, doc: RunDoc) -> None:
        self.entity: str = doc.entity
        self.project: str = doc.project
        self.id: str = doc.id
        self.path: str = doc.path
        self.name: str | None = doc.name
        self.state: str = doc.state
        self.config = NestedDict(doc.config)
        self.summary: dict[str, Any] = doc.summary
        self.tags: list[str] = doc.tags
        self.notes: str | None = doc.notes
        self.folder: str | None = doc.folder
        self.created_at: str | None = doc.created_at
        self.heartbeat_at: str | None = doc.heartbeat_at
        self.finished_at: str | None = doc.finished_at
        self.exit_code: int | None = doc.exit_code
        self.user: str | None = doc.user
        #: The last value of each metric of the ``system`` stream.
        self.system_metrics: dict[str, Any] = doc.system_metrics
        #: Each writer's (process's) last state, by writer id: the run is ``running``
        #: while any of them is.
        self.writers: dict[str, str] = doc.writers
        # What update() compares with: a copy, since the attributes are the user's to edit.
        self._stored = _EDITABLE_COPY.decode(_EDITABLE_COPY_ENC.encode(doc))

    def __repr__(self) -> str:
        return f"<ApiRun {self.path} name={self.name!r} state={self.state}>"

    @property
    def _base(self) -> str:
        return f"/api/v1/runs/{self.path}"

    def load(self) -> ApiRun:
        """Fetch the run again (state, summary and heartbeat change while it runs)."""
        self._set(self._api._get_as(_RUN, self._base))
        return self

    @property
    def url(self) -> str:
        """Where the service serves this run (its document; there is no web page yet)."""
        return f"{self._api.base_url}{self._base}"

    @property
    def read_only(self) -> bool:
        """Whether this client may not change the run: ``True`` with a read-only
        token (asked of the service once per entity and client)."""
        return not self._api._access(self.entity).write

    def update(self) -> ApiRun:
        """Persist changes made to ``name``, ``notes``, ``tags``, ``config`` and
        ``summary`` (as W&B's ``Run.update()``); return the run as now stored.

        Only what changed since the run was fetched is sent: ``config`` whole,
        ``summary`` key by key (a key removed is not; ``_min``, ``_max`` and
        ``_step`` are the service's). Like any writer's, the change loses to what
        the run's own code sends later.

        Example::

            run = api.run("vision/3k9x0a1b")
            run.tags.append("best")
            run.summary["verdict"] = "keep"
            run.update()
        """
        before = self._stored
        changes: dict[str, Any] = {
            name: now
            for name, now, then in (
                ("name", self.name, before.name),
                ("notes", self.notes, before.notes),
                ("tags", list(self.tags), before.tags),
                ("config", plain(self.config), before.config),
            )
            if now != then
        }
        summary = {k: v for k, v in self.summary.items() if before.summary.get(k, _UNSET) != v}
        if summary:
            changes["summary"] = summary
        if changes:
            body = orjson.dumps(changes)
            self._set(self._api._send_as(_RUN, "PATCH", self._base, body))
        return self

    def export(
        self,
        dest: str | os.PathLike[str],
        format: str = "csv",
        keys: Sequence[str] | None = None,
        stream: str = "default",
    ) -> Path:
        """Write the run's metrics to ``dest``, one row per step (``_step``,
        ``_runtime``, ``_timestamp`` and a column per key; default every key), as
        ``"csv"``, ``"parquet"`` or ``"json"`` (``{"run": ..., "rows": [...]}``);
        return ``dest``. Streamed from the service to the file: any length fits.

        Example::

            api.run("vision/3k9x0a1b").export("run.parquet", format="parquet")
        """
        params: list[tuple[str, Any]] = [("format", format), ("stream", stream)]
        params += [("keys", k) for k in keys_param(keys) or ()]
        return self._api._download(f"{self._base}/export", params, Path(dest))

    def delete(self, delete_artifacts: bool = False) -> None:
        """Delete the run and everything stored of it (fields, metrics, aggregates,
        its files' records; their bytes stay in the object store, where other runs
        may share them).

        The artifact versions the run logged stay (other runs may use them) unless
        ``delete_artifacts`` (W&B's): then they go too, unless another run logged the
        same content.
        A writer still logging to the run stores it again.
        """
        params = urllib.parse.urlencode({"delete_artifacts": str(delete_artifacts).lower()})
        self._api._send_as(_STATUS, "DELETE", f"{self._base}?{params}", None)

    def files(
        self,
        prefix: str | None = None,
        *,
        category: str | None = None,
        tag: str | None = None,
        per_page: int = 100,
        deleted: bool = False,
    ) -> Iterator[ApiFile]:
        """The run's saved files by name, each at its latest version; only names
        starting with ``prefix``, of ``category`` or with ``tag`` if given; the
        soft-deleted ones instead with ``deleted``."""
        return list_files(
            self._api,
            self._base,
            prefix=prefix,
            category=category,
            tag=tag,
            per_page=per_page,
            deleted=deleted,
        )

    def file(self, name: str, version: int | None = None) -> ApiFile:
        """One saved file: its latest version, or ``version`` (from 0, in save order)."""
        return one_file(self._api, self._base, name, version)

    def events(
        self,
        level: str | Sequence[str] | None = None,
        *,
        min_level: str | None = None,
        since: float | None = None,
        until: float | None = None,
        contains: str | None = None,
        per_page: int = 1000,
    ) -> Iterator[EventDoc]:
        """The run's events and log lines in time order (``timestamp``, ``level``,
        ``message``, ``metadata``, ``writer``), fetched a page at a time.

        ``level`` keeps one level or several; ``min_level`` that one and the more
        severe; ``since``/``until`` (Unix seconds) ``since <= timestamp < until``;
        ``contains`` messages holding that text, in any case.
        """
        return list_events(
            self._api,
            self._base,
            level=level,
            min_level=min_level,
            since=since,
            until=until,
            contains=contains,
            per_page=per_page,
        )

    def alerts(self) -> list[AlertDoc]:
        """The run's alerts by name: ``definition``, ``state`` (``ok``/``critical``), the
        last evaluation (``evaluated_at``, ``value``) and ``transitions``, oldest first."""
        return self._api._get_as(_ALERTS, f"{self._base}/alerts").alerts

    def logged_artifacts(self) -> list[ApiArtifact]:
        """The artifact versions this run logged, in the order it logged them."""
        return _api_artifacts.run_artifacts(self._api, self._base, "logged")

    def used_artifacts(self) -> list[ApiArtifact]:
        """The artifact versions this run used (``run.use_artifact``)."""
        return _api_artifacts.run_artifacts(self._api, self._base, "used")

    def wait_until_finished(self, timeout: float | None = None, poll_s: float = 1.0) -> ApiRun:
        """Poll until the run has ended (``finished``, ``failed``, ``cancelled`` or
        ``crashed``), then return it, loaded. A run whose writer died unseen ends as
        ``crashed`` after the service's ``--lost-after``. With ``timeout`` (seconds),
        raise :class:`TimeoutError` if it is still going then."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.load().state in _GOING:
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"run {self.path} is still {self.state} after {timeout} s")
            left = poll_s if deadline is None else deadline - time.monotonic()
            time.sleep(max(0.0, min(poll_s, left)))
        return self

    def stats(
        self, keys: Sequence[str] | None = None, stream: str = "default"
    ) -> dict[str, dict[str, Any]]:
        """Per key (default: every key): ``count``, ``first``, ``last``, ``min``, ``max``,
        ``mean``, ``first_step`` and ``last_step``, as ML-Dash's ``stats()``.

        From aggregates ingest keeps per series, not a scan: as fast for a 10M-point
        series as for ten. Every logged value counts, also a step logged again in a
        later batch (``first``/``last`` are the newest values at the first and last
        step); ``min``, ``max`` and ``mean`` leave NaN out; a value that is not
        finite is ``None``.
        """
        params: list[tuple[str, Any]] = [("stream", stream)]
        params += [("keys", k) for k in keys_param(keys) or ()]
        page = self._api._get_as(_STATS, f"{self._base}/stats", params)
        return {key: msgspec.structs.asdict(s) for key, s in page.stats.items()}

    @property
    def history_keys(self) -> list[str]:
        """Every metric key of the run's ``default`` stream, sorted (page by page)."""
        keys: list[str] = []
        after: str | None = None
        while True:
            page = self._api._get_as(_KEYS, f"{self._base}/keys", [("after", after)])
            keys += page.keys
            if page.next is None:
                return keys
            after = page.next

    def history(
        self,
        samples: int = 500,
        keys: Sequence[str] | None = None,
        x_axis: str = "_step",
        pandas: bool = True,
        min_step: int | None = None,
        max_step: int | None = None,
        stream: str = "default",
        envelope: bool = False,
    ) -> Any:
        """Sampled metrics: at most ``samples`` rows, always the first and last step.

        Deterministic: the same data gives the same rows. Rows carry ``_step``,
        ``_runtime``, ``_timestamp`` and a column per key. ``envelope=True`` adds
        ``min(key)``/``max(key)`` over each sampled bucket so spikes stay visible.
        ``x_axis`` a logged key: the service samples the steps where that key was
        logged (its first and last among them) and each row has it, with the
        other keys as logged at that step (W&B's meaning); ``"_runtime"`` or
        ``"_timestamp"``: buckets of equal time instead of equal steps. Returns a pandas
        DataFrame, or a list of dicts with ``pandas=False``.
        """
        keys = keys_param(keys)
        params: list[tuple[str, Any]] = [
            ("samples", samples),
            ("min_step", min_step),
            ("max_step", max_step),
            ("stream", stream),
            ("envelope", "true" if envelope else None),
            ("x_axis", None if x_axis == "_step" else x_axis),
        ]
        params += [("keys", k) for k in keys or ()]
        columns = columns_of(self._api._get_as(_COLUMNS, f"{self._base}/history", params))
        if pandas:
            return dataframe(columns)
        return list(rows(columns))

    def scan_history(
        self,
        keys: Sequence[str] | None = None,
        page_size: int = 1000,
        min_step: int | None = None,
        max_step: int | None = None,
        stream: str = "default",
        format: str = "rows",
    ) -> Iterator[Any]:
        """Every row in step order, fetched ``page_size`` rows at a time: ``_step``,
        ``_runtime``, ``_timestamp`` and the keys logged at that step.

        With ``keys``, only rows that have all of them. Pages are keyset-paginated
        on the step, so rows are never repeated or skipped, even while the run is
        still being written; the next page is asked for while this one's rows are
        read, on a connection of the scan's own. ``format="arrow"`` yields
        pyarrow ``RecordBatch``es instead, from one streamed answer
        (:meth:`scan_batches`; ``page_size`` does not apply): the fast way
        through millions of rows.
        """
        if format == "arrow":
            yield from self.scan_batches(keys, min_step, max_step, stream)
            return
        if format != "rows":
            raise UsageError(f"format must be 'rows' or 'arrow', got {format!r}")
        keys = keys_param(keys)

        def params(cursor: int | None) -> list[tuple[str, Any]]:
            return [
                ("page_size", page_size),
                ("min_step", min_step),
                ("max_step", max_step),
                ("stream", stream),
                ("cursor", cursor),
                *(("keys", k) for k in keys or ()),
            ]

        for page in self._api._pages(f"{self._base}/scan", params):
            yield from rows(columns_of(page))

    def scan_batches(
        self,
        keys: Sequence[str] | None = None,
        min_step: int | None = None,
        max_step: int | None = None,
        stream: str = "default",
    ) -> Iterator[Any]:
        """The rows of :meth:`scan_history` as pyarrow ``RecordBatch``es, read from one
        streamed answer (Arrow IPC) as it arrives: no round trip per page, memory
        bounded by a batch however long the run. Needs pyarrow.

        Columns: ``_step`` (int64), ``_runtime``, ``_timestamp`` and one per key
        (float64, null where the key has no value at that step; NaN stays NaN).
        """
        ipc = pyarrow_ipc()
        params: list[tuple[str, Any]] = [
            ("format", "arrow"), ("min_step", min_step), ("max_step", max_step),
            ("stream", stream),
        ]  # fmt: skip
        params += [("keys", k) for k in keys_param(keys) or ()]
        with self._api._open(f"{self._base}/stream", params) as response:
            yield from ipc.open_stream(response)

    def to_arrow(
        self,
        keys: Sequence[str] | None = None,
        min_step: int | None = None,
        max_step: int | None = None,
        stream: str = "default",
    ) -> Any:
        """Every row of the range as one ``pyarrow.Table`` (see :meth:`scan_batches`)."""
        ipc = pyarrow_ipc()
        params: list[tuple[str, Any]] = [
            ("format", "arrow"), ("min_step", min_step), ("max_step", max_step),
            ("stream", stream),
        ]  # fmt: skip
        params += [("keys", k) for k in keys_param(keys) or ()]
        with self._api._open(f"{self._base}/stream", params) as response:
            return ipc.open_stream(response).read_all()

    def to_pandas(
        self,
        keys: Sequence[str] | None = None,
        min_step: int | None = None,
        max_step: int | None = None,
        stream: str = "default",
    ) -> Any:
        """:meth:`to_arrow` as a pandas DataFrame (missing values are NaN)."""
        return self.to_arrow(keys, min_step, max_step, stream).to_pandas()
