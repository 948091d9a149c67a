"""``run_search``: every run field flattened into typed rows, for run search.

``run_fields`` keeps each field as JSON text, which is right for reading a run
but not for asking which of 100,000 runs have ``config.lr > 0.01``. Beside it,
ingest writes each field write as rows of this table, one per value a filter
can reach, sorted by ``(entity, project, key, run_id)`` so a search reads only
the keys it names:

* ``key`` is the dotted path of a value in its field (``config.model.depth``,
  ``summary.loss``, ``tags``, ``~created_at``): the field's name, then the path
  inside it; ``field`` is the run field written (``config``, ``summary.loss``,
  ``~created_at``). Query maps a filter's field name to the keys it can be in
  (``created_at`` is in ``created_at`` or ``~created_at``);
* an object gives a row for itself and one per member, recursively; an array
  a row for itself (``pos = 0``) and one per element (``pos = 1..``), so a
  filter on ``tags`` matches an element as MongoDB's do;
* ``kind`` says which of ``num`` and ``str`` holds the value
  (numbered in MongoDB's sort order); times (``created_at``...) are
  strings whose ``num`` holds the Unix time, so they compare as times;
* every write also stores a *marker* row, key ``MARKER + field``: a row is
  current only if its ``ver`` is its field's newest marker's. A config written
  again without a key thereby drops that key's old rows from every answer,
  though they stay in the table until merges replace them.

Metric summaries (the last value of each metric, as in a run's ``summary``)
are rows of key and field ``@summary.<key>``, written by ingest from the same
partials as the rollup (:data:`SEARCH_FROM_PARTIALS`); their ``ver`` is the step, so the
newest row is the last value. A summary value the user set wins over them.
"""

from __future__ import annotations

import hashlib
import math
import zlib
from collections.abc import Collection, Iterable, Iterator, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, NamedTuple

import orjson
import pyarrow as pa

from .schema import FIELDS_COLUMNS, ONCE_PREFIX, WRITER_PREFIX

if TYPE_CHECKING:
    from . import AsyncStore
    from ._base import Store

#: Row kinds, numbered in MongoDB's sort order (null < numbers < strings <
#: objects < arrays < booleans), so ordering by kind first sorts mixed types.
NULL, NUMBER, STRING, OBJECT, ARRAY, BOOL, MARKER_KIND = 1, 2, 3, 4, 5, 6, 9
#: The key of a field's marker rows: the field's name after this prefix.
MARKER = "\x01"
#: The field of a metric's summary row: ``METRIC_PREFIX + "summary." + key``.
METRIC_PREFIX = "@"
#: Each writer's state and last batch time (its *beat*), for the run's state: rows
#: of these keys, field :data:`WRITERS_FIELD`, ``pos`` the writer's
#: :func:`writer_pos`, no marker; one key for all of a run's writers, so a
#: search reads them all at once, and numbers in ``pos`` (not writer names in
#: ``field``) keep the ``LowCardinality`` column small.
WRITER_STATE_KEY = "\x02wstate"
WRITER_BEAT_KEY = "\x02wbeat"
WRITERS_FIELD = "\x02writers"
#: A row of this key (field :data:`WRITERS_FIELD`, ``pos`` 0) marks a run that
#: several writers set states for; ingest writes it when it sees the second
#: (:func:`runs_with_several_writers`). A search folds the per-writer rows of
#: only the marked runs: one writer, the common case, needs none of them.
SEVERAL_WRITERS_KEY = "\x02several"
#: Fields whose text is an ISO 8601 time: their rows carry the Unix time in ``num``.
TIME_KEYS = frozenset({"created_at", "heartbeat_at", "finished_at"})
#: Objects and arrays longer than this as JSON are kept as a hash (:func:`whole`).
_WHOLE_MAX = 256

SEARCH_COLUMNS = ("entity", "project", "run_id", "key", "field", "pos", "kind", "num", "str", "ver")


class SearchRow(NamedTuple):
    key: str
    field: str
    pos: int
    kind: int
    num: float
    str: str


def parse_time(text: str) -> float | None:
    """The Unix time of ISO 8601 ``text`` (UTC if it names no offset), or ``None``."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def whole(value: dict[str, Any] | list[Any]) -> str:
    """How an object or array is stored for equality: its JSON with sorted keys,
    or a hash of it when long (an equality filter compares the same form)."""
    text = orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
    if len(text) <= _WHOLE_MAX:
        return text
    return "#" + hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def scalar(value: Any) -> tuple[int, float, str]:
    """``(kind, num, str)`` of a JSON value as a row stores it."""
    if value is None:
        return NULL, 0.0, ""
    if isinstance(value, bool):
        return BOOL, float(value), ""
    if isinstance(value, int | float):
        number = float(value)
        return (NUMBER, number, "") if math.isfinite(number) else (NULL, 0.0, "")
    if isinstance(value, str):
        return STRING, 0.0, value
    if isinstance(value, dict):
        return OBJECT, 0.0, whole(value)
    if isinstance(value, list):
        return ARRAY, 0.0, whole(value)
    raise TypeError(f"not a JSON value: {value!r}")


def flatten(field: str, value: Any) -> Iterator[SearchRow]:
    """The rows of one write of ``field`` (its marker first; a writer's state has
    one row, under :data:`WRITER_STATE_KEY`)."""
    if field.startswith(WRITER_PREFIX):
        pos = writer_pos(field.removeprefix(WRITER_PREFIX))
        yield SearchRow(WRITER_STATE_KEY, WRITERS_FIELD, pos, *scalar(value))
        return
    yield SearchRow(MARKER + field, field, 0, MARKER_KIND, 0.0, "")
    yield from _rows(field, field, value)


def _rows(field: str, key: str, value: Any) -> Iterator[SearchRow]:
    kind, num, text = scalar(value)
    if kind == STRING and key.removeprefix(ONCE_PREFIX) in TIME_KEYS:
        num = parse_time(text) or 0.0
    yield SearchRow(key, field, 0, kind, num, text)
    if kind == OBJECT:
        for name, member in value.items():
            yield from _rows(field, f"{key}.{name}", member)
    elif kind == ARRAY:
        for pos, element in enumerate(value, start=1):
            yield SearchRow(key, field, pos, *scalar(element))


class SearchRows:
    """Collects the rows of many field writes as columns, then one Arrow table."""

    def __init__(self) -> None:
        self._columns: dict[str, list[Any]] = {name: [] for name in SEARCH_COLUMNS}

    def add(
        self, entity: str, project: str, run_id: str, field: str, value_json: str, ver: int
    ) -> None:
        """Add the rows of ``field`` set to ``value_json`` (JSON text) at ``ver``.

        Text that is not JSON is indexed as a string (the field keeps it as sent).
        """
        try:
            value = orjson.loads(value_json)
        except orjson.JSONDecodeError:
            value = value_json
        self.extend(entity, project, run_id, ver, flatten(field, value))

    def extend(
        self, entity: str, project: str, run_id: str, ver: int, rows: Iterable[SearchRow]
    ) -> None:
        c = self._columns
        for row in rows:
            c["entity"].append(entity)
            c["project"].append(project)
            c["run_id"].append(run_id)
            c["key"].append(row.key)
            c["field"].append(row.field)
            c["pos"].append(row.pos)
            c["kind"].append(row.kind)
            c["num"].append(row.num)
            c["str"].append(row.str)
            c["ver"].append(ver)

    def __len__(self) -> int:
        return len(self._columns["ver"])

    def table(self) -> pa.Table:
        c = self._columns
        return pa.table(
            {
                **{name: c[name] for name in ("entity", "project", "run_id", "key", "field")},
                "pos": pa.array(c["pos"], pa.uint32()),
                "kind": pa.array(c["kind"], pa.uint8()),
                "num": pa.array(c["num"], pa.float64()),
                "str": c["str"],
                "ver": pa.array(c["ver"], pa.uint64()),
            }
        )


def writer_pos(writer: str) -> int:
    """The number that stands for a writer in its run's rows (CRC-32 of its id)."""
    return zlib.crc32(writer.encode())


def several_writers_rows(runs: Iterable[tuple[str, str, str]], ver: int) -> pa.Table:
    """The rows that mark ``runs`` (entity, project, run id) as written by several writers."""
    rows = SearchRows()
    mark = SearchRow(SEVERAL_WRITERS_KEY, WRITERS_FIELD, 0, NUMBER, 1.0, "")
    for entity, project, run_id in runs:
        rows.extend(entity, project, run_id, ver, [mark])
    return rows.table()


async def runs_with_several_writers(
    store: AsyncStore, runs: Collection[tuple[str, str, str]]
) -> set[tuple[str, str, str]]:
    """Those of ``runs`` (entity, project, run id) that several writers set states
    for, as their :data:`WRITER_STATE_KEY` rows stored so far show."""
    if not runs:
        return set()
    found = await store.query_arrow(  # entity and project first: the table's sort key
        "SELECT entity, project, run_id FROM run_search "
        "WHERE entity IN {e:Array(String)} AND project IN {p:Array(String)} "
        "AND key = {key:String} AND run_id IN {ids:Array(String)} "
        "GROUP BY entity, project, run_id HAVING min(pos) != max(pos)",
        {
            "e": sorted({entity for entity, _, _ in runs}),
            "p": sorted({project for _, project, _ in runs}),
            "key": WRITER_STATE_KEY,
            "ids": sorted({run_id for _, _, run_id in runs}),
        },
    )
    rows = zip(*(found.column(n).to_pylist() for n in ("entity", "project", "run_id")), strict=True)
    return {run for run in rows if run in runs}  # the lists' product may name other runs


def search_rows(
    fields: pa.Table, beats: Mapping[tuple[str, str, str, str], int] | None = None
) -> pa.Table:
    """The ``run_search`` rows of the ``run_fields`` rows ``fields``: each field's
    newest write in them flattened (an older one could never be current); and a
    row per ``(entity, project, run_id, writer)`` of ``beats``, its newest batch
    version."""
    newest: dict[tuple[str, str, str, str], tuple[int, str]] = {}
    columns = (fields.column(n).to_pylist() for n in FIELDS_COLUMNS)
    for entity, project, run_id, field, value, ver in zip(*columns, strict=True):
        kept = newest.get(where := (entity, project, run_id, field))
        if kept is None or ver > kept[0]:
            newest[where] = (ver, value)
    rows = SearchRows()
    for (entity, project, run_id, field), (ver, value) in newest.items():
        rows.add(entity, project, run_id, field, value, ver)
    for (entity, project, run_id, writer), ver in (beats or {}).items():
        beat = SearchRow(WRITER_BEAT_KEY, WRITERS_FIELD, writer_pos(writer), NUMBER, ver / 1e9, "")
        rows.extend(entity, project, run_id, ver, [beat])
    return rows.table()


def _metric_rows(source: str, last: str, step: str) -> str:
    """The SELECT of metric summary rows (marker-less: the newest row is current)
    from ``source`` rows of (run, key, last value, last step), in SEARCH_COLUMNS order."""
    return (
        "SELECT splitByChar('/', run)[1], splitByChar('/', run)[2], splitByChar('/', run)[3], "
        f"concat('{METRIC_PREFIX}summary.', key), concat('{METRIC_PREFIX}summary.', key), 0, "
        f"if(isFinite({last}), {NUMBER}, {NULL}), if(isFinite({last}), {last}, 0), '', "
        # Steps as versions, in order: Int64 to UInt64 with the sign bit flipped.
        f"bitXor(reinterpretAsUInt64({step}), 9223372036854775808) FROM {source}"
    )


#: Ingest's rollup partials (stream ``default``) to metric summary rows: per
#: series, the value at its last step in the fetch.
SEARCH_FROM_PARTIALS = _metric_rows(
    "(SELECT run, key, argMax(assumeNotNull(lv), (assumeNotNull(smax), assumeNotNull(ver))) "
    "AS last, max(assumeNotNull(smax)) AS step FROM {source} "
    "WHERE stream = 'default' GROUP BY run, key)",
    "last",
    "step",
)
#: The same rows for a store written before ``run_search`` existed.
BACKFILL_METRICS = "INSERT INTO run_search " + _metric_rows(
    "(SELECT run, key, argMaxMerge(lv) AS last, max(smax) AS step FROM series_stats "
    "WHERE stream = 'default' GROUP BY run, key)",
    "last",
    "step",
)
#: The current value of every run field, for the same backfill.
CURRENT_FIELDS = (
    "SELECT entity, project, run_id, field, argMax(value, ver) AS current, "
    "max(ver) AS newest FROM run_fields GROUP BY entity, project, run_id, field"
)


def backfill_run_search(store: Store) -> None:
    """Fill ``run_search`` from the current run fields and metric summaries of a
    store written before it existed (a run's older field versions are not needed)."""
    rows = SearchRows()
    for r in store.query_arrow(CURRENT_FIELDS).to_pylist():
        rows.add(r["entity"], r["project"], r["run_id"], r["field"], r["current"], r["newest"])
    if len(rows):
        store.insert_arrow("run_search", SEARCH_COLUMNS, rows.table())
    store.command(BACKFILL_METRICS)
