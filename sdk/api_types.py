"""The query service's HTTP response bodies: one schema for the service and the client.

The service (``stride.query``) builds every response from these Structs and
the client (:class:`stride.Api`) decodes with the same ones, so the two cannot
drift apart. docs/http-api.md describes them for other clients.

=================================================  ==========================
``GET /api/v1/status``                             :class:`Status`
``GET /api/v1/projects/{entity}``                   :class:`ProjectsPage`
``GET /api/v1/runs/{entity}/{project}``            :class:`RunsPage`
``GET /api/v1/runs/{entity}/{project}/{run_id}``   :class:`RunDoc`
``GET .../{run_id}/keys``                          :class:`MetricKeys`
``GET .../{run_id}/history`` and ``.../scan``      :class:`ColumnsPage`
``GET .../{run_id}/stats``                         :class:`MetricStats`
``GET .../{run_id}/files``                         :class:`FilesPage`
``GET .../{run_id}/file?name=``                    :class:`FileDoc`
any error (4xx, 5xx)                               :class:`ErrorBody`
=================================================  ==========================

Evolving: a new field is added at the end with a default, so a new client
reads an old service. Clients ignore fields they do not know (msgspec's
default for JSON objects), so an old client reads a new service. Renaming,
removing or retyping a field is a new API version (``/api/v2``).

Example::

    import msgspec
    from stride.api_types import RunDoc

    run = msgspec.json.decode(body, type=RunDoc)
    print(run.path, run.state)
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

__all__ = [
    "Access",
    "AlertDefinition",
    "AlertDoc",
    "AlertTransition",
    "AlertsPage",
    "ArtifactDoc",
    "ArtifactFile",
    "ArtifactsPage",
    "ColumnsPage",
    "ErrorBody",
    "EventDoc",
    "EventsPage",
    "FileCounters",
    "FileDoc",
    "FileUpdate",
    "FilesPage",
    "FolderDoc",
    "FoldersPage",
    "IngestCounters",
    "IngestLag",
    "MetricKeys",
    "MetricStats",
    "NonFinite",
    "ProjectDoc",
    "ProjectsPage",
    "RunDoc",
    "RunSearch",
    "RunUpdate",
    "RunsPage",
    "SeriesStats",
    "Status",
]

#: How a non-finite value is written in :attr:`ColumnsPage.nonfinite`.
NonFinite = Literal["nan", "inf", "-inf"]


class RunDoc(msgspec.Struct, gc=False):
    """A run: its fields folded last-write-wins from everything its writers sent.

    ``state`` is ``created``, ``running``, ``finished``, ``failed``,
    ``cancelled`` or ``crashed``. It is ``running`` while a writer (process)
    whose last state is ``running`` has sent a batch within the service's
    ``lost_after_s``; once none has, ``crashed`` if the writer that sent the
    newest batch last said ``running`` (it died unseen), else the state
    written last.
    Times are ISO 8601 text with a UTC offset.
    """

    entity: str
    project: str
    id: str
    path: str
    name: str | None = None
    state: str = "created"
    config: dict[str, Any] = {}
    summary: dict[str, Any] = {}
    tags: list[str] = []
    notes: str | None = None
    folder: str | None = None
    created_at: str | None = None
    heartbeat_at: str | None = None
    finished_at: str | None = None
    exit_code: int | None = None
    #: Who started the run (``$STRIDE_USER``, else the login name of its first writer).
    user: str | None = None
    #: The last value of each metric of stream ``system``.
    system_metrics: dict[str, Any] = {}
    #: The last state each writer (process) set, by writer id (host, pid, rank, tag).
    writers: dict[str, str] = {}


class RunSearch(msgspec.Struct, forbid_unknown_fields=True):
    """The body of ``POST /api/v1/runs/{entity}/{project}``: a run search whose
    filters may be too long for a URL. ``filters`` are MongoDB-style (see
    ``docs/http-api.md``); ``after`` is a page's ``next``."""

    filters: dict[str, Any] | None = None
    order: str = "-created_at"
    per_page: int = 50
    after: str | None = None
    #: Also count every run that matches (``RunsPage.total``): one more query.
    count: bool = False


class RunUpdate(msgspec.Struct, forbid_unknown_fields=True):
    """The body of ``PATCH /api/v1/runs/{entity}/{project}/{run_id}``: the fields to
    change; one left out (``None``) stays as it is. ``config`` replaces the whole
    config; ``summary`` sets the keys it holds (others stay)."""

    name: str | None = None
    notes: str | None = None
    tags: list[str] | None = None
    config: dict[str, Any] | None = None
    summary: dict[str, Any] | None = None


class Access(msgspec.Struct, gc=False):
    """What the caller may do with an entity's runs: ``auth`` says whether the
    service checks tokens at all; ``write``, whether runs may be changed."""

    entity: str
    auth: bool
    write: bool


class RunsPage(msgspec.Struct, gc=False):
    """One page of a project's runs; pass ``next`` back as ``after`` (``None``: last page)."""

    runs: list[RunDoc]
    next: str | None = None
    #: How many runs match in all, when asked for (``count``); else ``None``.
    total: int | None = None


class MetricKeys(msgspec.Struct, gc=False):
    """The metric keys a run has logged in one stream, sorted; a page of them, with
    ``next`` to pass back as ``after`` while there are more."""

    keys: list[str]
    next: str | None = None


class ColumnsPage(msgspec.Struct, gc=False):
    """Rows of metrics, column by column (history and scan).

    ``columns`` maps ``_step`` (always first) and each key to one value per
    row; ``None`` means the key has no value at that row. JSON has no NaN or
    infinity, so real non-finite values are ``None`` in ``columns`` and listed
    in ``nonfinite`` as ``(row, "nan" | "inf" | "-inf")``. ``next`` is the
    scan's cursor for the next page (``None`` when complete; always ``None``
    for history).
    """

    columns: dict[str, list[float | int | None]]
    nonfinite: dict[str, list[tuple[int, NonFinite]]] = {}
    next: int | None = None


class IngestCounters(msgspec.Struct, gc=False):
    """What the ingest worker beside the service has done since it started."""

    messages: int = 0
    batches_applied: int = 0
    batches_skipped: int = 0
    points: int = 0
    dead_lettered: int = 0
    write_errors: int = 0
    #: Fetches written (each is one insert per table): fewer, larger ones cost less.
    writes: int = 0


class IngestLag(msgspec.Struct, gc=False):
    """How far behind ingest is: batches not yet given to a worker (``pending``),
    given but not yet acknowledged (``ack_pending``), and the age in seconds of
    the oldest batch still waiting (``None`` when none waits)."""

    pending: int = 0
    ack_pending: int = 0
    oldest_s: float | None = None


class FileCounters(msgspec.Struct, gc=False):
    """What the file worker beside the service has done since it started: files
    recorded, bytes copied into the object store, files whose bytes it already
    held (not copied again), large files copied while their chunks arrived (then
    moved into place), records dead-lettered, and failed attempts (retried)."""

    files: int = 0
    bytes: int = 0
    deduplicated: int = 0
    copied_early: int = 0
    dead_lettered: int = 0
    errors: int = 0


class Status(msgspec.Struct, gc=False):
    """The service is up; ``ingest``, ``lag`` and ``files`` are present when ingest
    runs beside it."""

    ok: bool = True
    ingest: IngestCounters | None = None
    lag: IngestLag | None = None
    files: FileCounters | None = None


class ErrorBody(msgspec.Struct, gc=False):
    """Every error answer: what went wrong and what to do, and the HTTP status."""

    error: str
    status: int


class SeriesStats(msgspec.Struct, gc=False):
    """One metric of a run, over every value logged: a step logged again in a
    later batch counts again (twice before the SDK sent it: once), and ``first``
    and ``last`` are the newest values at the first and last step. ``min``, ``max`` and ``mean``
    leave NaN out. A value that is not finite (NaN, an infinity; also ``min``
    and ``max`` when every value is NaN) is ``None``: JSON has neither."""

    count: int
    first: float | None
    last: float | None
    min: float | None
    max: float | None
    mean: float | None
    first_step: int
    last_step: int


class MetricStats(msgspec.Struct, gc=False):
    """Per key: its :class:`SeriesStats`."""

    stats: dict[str, SeriesStats]


class ProjectDoc(msgspec.Struct, gc=False):
    """A project of an entity: how many runs it has and when one was last heard
    from (the newest ``heartbeat_at`` of its runs, ISO 8601; ``None`` if none)."""

    entity: str
    name: str
    run_count: int
    last_activity: str | None = None


class ProjectsPage(msgspec.Struct, gc=False):
    """One page of an entity's projects by name; pass ``next`` back as ``after``."""

    projects: list[ProjectDoc]
    next: str | None = None


class FileDoc(msgspec.Struct, gc=False):
    """One version of a saved file (the latest unless another was asked for).

    ``version`` counts from 0 in the order the versions were saved, of
    ``versions`` in all; ``saved_at`` is when ``save`` was called (ISO 8601).
    ``sha256`` (hex) is checked end to end. ``metadata`` is what the user set.
    """

    name: str
    version: int
    versions: int
    size: int
    sha256: str
    mime: str
    category: str
    saved_at: str
    description: str = ""
    tags: list[str] = []
    metadata: dict[str, Any] = {}


class FileUpdate(msgspec.Struct, forbid_unknown_fields=True):
    """The body of ``PATCH .../file?name=``: what to change; one left out (``None``)
    stays. ``description``, ``tags`` and ``metadata`` (replaced whole) apply to one
    version (the latest unless ``version`` is given); ``deleted: false`` restores a
    soft-deleted file (every version)."""

    description: str | None = None
    tags: list[str] | None = None
    metadata: dict[str, Any] | None = None
    deleted: bool | None = None


class EventDoc(msgspec.Struct, gc=False):
    """One event or log line of a run: when (Unix seconds), its level (``debug``,
    ``info``, ``warn``, ``error``, ``fatal``), the text, its metadata, and the
    writer (process) that logged it."""

    timestamp: float
    level: str
    message: str
    metadata: dict[str, Any] = {}
    writer: str = ""


class EventsPage(msgspec.Struct, gc=False):
    """One page of a run's events in time order; pass ``next`` back as ``after``."""

    events: list[EventDoc]
    next: str | None = None


class FilesPage(msgspec.Struct, gc=False):
    """One page of a run's files by name (each at its latest version); pass
    ``next`` back as ``after``."""

    files: list[FileDoc]
    next: str | None = None


class ArtifactFile(msgspec.Struct, gc=False):
    """One file of an artifact version: its path in the artifact, sha256 (hex), size
    and MIME type."""

    path: str
    sha256: str
    size: int
    mime: str


class ArtifactDoc(msgspec.Struct, gc=False):
    """One version of an artifact. ``version`` is ``v0``, ``v1``... (in the order
    each distinct content was first logged), of ``versions`` in all; ``aliases``
    are those naming it now (``latest``: the version logged last). ``producer`` is
    the run that first logged it, ``created_at`` when (ISO 8601). ``digest`` is
    the sha256 of its manifest (paths, sha256s and sizes). ``files`` is left empty
    in listings. In a run's used artifacts, ``use_as`` is what the run called it."""

    entity: str
    project: str
    name: str
    type: str
    version: str
    versions: int
    aliases: list[str]
    digest: str
    size: int
    file_count: int
    producer: str
    created_at: str
    description: str = ""
    metadata: dict[str, Any] = {}
    files: list[ArtifactFile] = []
    use_as: str = ""


class ArtifactsPage(msgspec.Struct, gc=False):
    """Artifacts (or versions) in order; pass ``next`` back as ``after`` when not null."""

    artifacts: list[ArtifactDoc]
    next: str | None = None


class AlertDefinition(msgspec.Struct, frozen=True, omit_defaults=True, gc=False):
    """An alert as :meth:`stride.Run.add_alert` defines it (Simvue's ``add_alert``).

    A metric alert (``source="metrics"``) averages ``metric`` over the last
    ``window`` seconds every ``frequency`` seconds and is ``critical`` while the
    average breaks ``rule``; an event alert (``source="events"``) is
    ``critical`` while an event or log line holding ``pattern`` was recorded in
    the last ``window`` seconds. The first definition of a name in a project to
    reach ingest is the one used (defining it again attaches that one).
    """

    source: str
    frequency: float
    window: float
    rule: str | None = None
    metric: str | None = None
    stream: str = "default"
    threshold: float | None = None
    range_low: float | None = None
    range_high: float | None = None
    pattern: str | None = None
    notification: str = "none"
    #: The webhook URL, or the email recipients (comma-separated; none: the service's).
    target: str | None = None
    description: str | None = None

    def breached(self, value: float) -> bool:
        """Whether a metric alert's windowed mean ``value`` breaks its rule."""
        if self.rule == "is above":
            return value > _number(self.threshold)
        if self.rule == "is below":
            return value < _number(self.threshold)
        low, high = _number(self.range_low), _number(self.range_high)
        inside = low <= value <= high
        return inside if self.rule == "is inside range" else not inside

    def summary(self, value: float | None, state: str) -> str:
        """One sentence on an evaluation: what was measured and the rule."""
        if self.source == "events":
            return f"{value or 0:g} event(s) holding {self.pattern!r} in the last {self.window:g} s"
        bound = (
            f"{self.threshold:g}"
            if self.rule in ("is above", "is below")
            else f"[{self.range_low:g}, {self.range_high:g}]"
        )
        verdict = self.rule if state == "critical" else f"no longer {self.rule}"
        return f"{self.metric} averaged {value:g} over {self.window:g} s: {verdict} {bound}"


def _number(value: float | None) -> float:
    assert value is not None  # checked when the alert was defined
    return value


class AlertTransition(msgspec.Struct, gc=False):
    """An alert changing state on a run: at the evaluation at ``at`` (ISO 8601)."""

    at: str
    state: str
    previous: str
    #: The windowed mean (metric alerts) or the count of matching events.
    value: float | None


class AlertDoc(msgspec.Struct, gc=False):
    """An alert attached to a run, its state there and every change of state."""

    name: str
    definition: AlertDefinition
    #: ``ok`` until an evaluation finds the rule broken, then ``critical``...
    state: str = "ok"
    #: The last evaluation: its time (ISO 8601) and value.
    evaluated_at: str | None = None
    value: float | None = None
    transitions: list[AlertTransition] = []


class AlertsPage(msgspec.Struct, gc=False):
    """The body of ``GET /api/v1/runs/{entity}/{project}/{run_id}/alerts``."""

    alerts: list[AlertDoc]


class FolderDoc(msgspec.Struct, gc=False):
    """A folder of a project: the runs whose ``folder`` is ``path`` (``run_count`` of
    them) and the details set with ``Run.set_folder_details``."""

    path: str
    run_count: int = 0
    description: str | None = None
    tags: list[str] = []
    metadata: dict[str, Any] = {}


class FoldersPage(msgspec.Struct, gc=False):
    """The body of ``GET /api/v1/folders/{entity}/{project}``."""

    folders: list[FolderDoc]
