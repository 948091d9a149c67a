"""Run search: MongoDB-style filters and an order, compiled to one query over ``run_search``.

``api.runs(path, filters={"config.lr": {"$gt": 0.01}, "tags": "baseline"},
order="-summary.acc")`` becomes a ``GROUP BY run_id`` over the rows of the keys
the filter and the order name (see :mod:`stride.store.run_search`): each
condition is an aggregate over a run's rows, so the whole filter is one
``HAVING``. Every value, key and pattern from the user travels as a query
parameter, never as SQL text.

The language (MongoDB's, as W&B's ``Api.runs`` takes it):

* fields: ``config.<key>`` (a nested key by its dotted path; W&B's
  ``config.<key>.value`` also works), ``summary.<key>`` (also
  ``summary_metrics.<key>``; a summary value the user set, else the metric's
  last value), ``state``, ``tags``, ``name`` (also ``display_name``), ``notes``,
  ``folder``, ``user``, ``created_at``, ``heartbeat_at``, ``finished_at`` (camelCase too),
  ``exit_code``, ``id``, ``entity``, ``project``;
* operators: ``$eq $ne $gt $gte $lt $lte $in $nin $exists $regex`` (with
  ``$options`` among ``i``, ``m``, ``s``) and ``$not`` on a field;
  ``$and $or $nor`` around filters; a bare value means ``$eq``;
* as in MongoDB: a filter on an array matches if any element does (``{"tags":
  "a"}``), an array or object operand matches the whole value, ``$eq: None``
  also matches a missing field and ``$ne``/``$nin``/``$not`` match runs
  without it; comparisons only match values of the operand's type, and times
  compare as times (ISO 8601 text, UTC unless it names an offset, or Unix
  seconds);
* unlike MongoDB: regular expressions are RE2's (no look-around or back
  references), and objects compare with their keys sorted.
"""

from __future__ import annotations

import dataclasses
import math
import re
import time
import weakref
from collections.abc import Callable
from typing import Any

import orjson

from stride.store import AsyncStore, StoreError
from stride.store.run_search import (
    ARRAY,
    BOOL,
    MARKER,
    METRIC_PREFIX,
    NULL,
    NUMBER,
    OBJECT,
    SEVERAL_WRITERS_KEY,
    STRING,
    TIME_KEYS,
    WRITER_BEAT_KEY,
    WRITER_STATE_KEY,
    parse_time,
    whole,
)
from stride.store.schema import ONCE_PREFIX

from .errors import BadRequest

__all__ = ["count_runs", "search_run_ids"]

#: Field names other trackers use, to ours.
_ALIASES = {
    "display_name": "name",
    "displayName": "name",
    "createdAt": "created_at",
    "heartbeatAt": "heartbeat_at",
    "finishedAt": "finished_at",
    "exitCode": "exit_code",
    "run_id": "id",
}
#: Top-level run fields stored whole (a set-once ``~`` version loses to a set one).
_RUN_FIELDS = (
    *("name", "notes", "folder", "tags", "user"),
    *("created_at", "heartbeat_at", "finished_at"),
)
#: The ones writers also set first-write-wins (``~name``): the SDK's generated name.
_SET_ONCE = ("name", "created_at", "user")
_FIELDS_HELP = (
    "config.<key>, summary.<key>, state, tags, name, display_name, notes, folder, user, "
    "created_at, heartbeat_at, finished_at, exit_code, id, entity, project"
)
_COMPARISONS = {"$gt": ">", "$gte": ">=", "$lt": "<", "$lte": "<="}
_OPERATORS = ("$eq", "$ne", *_COMPARISONS, "$in", "$nin", "$exists", "$regex", "$not")
_LOGICAL = ("$and", "$or", "$nor")
_REGEX_OPTIONS = frozenset("ims")
#: Bounds on one filter, so no request can build an unbounded query: nesting
#: (``$and``/``$or``/``$nor``/``$not``), values, a field name's length and dotted
#: parts (each part of a ``summary.a.b`` name is a place to look), and the SQL
#: (kept under what ClickHouse parses by default: 256 KiB, 50,000 AST elements).
_MAX_DEPTH = 16
_MAX_PARAMS = 5000
_MAX_NAME = 256
_MAX_NAME_PARTS = 16
_MAX_SQL = 200_000


@dataclasses.dataclass(frozen=True)
class _Cols:
    """The SQL of a value's kind, number and text: a row's columns, or expressions."""

    kind: str = "kind"
    num: str = "num"
    str: str = "str"


_ROW = _Cols()
Predicate = Callable[[_Cols], str]


class _Sql:
    """Parameters and the keys a query reads, collected while compiling it."""

    def __init__(self, several_writers: bool = False) -> None:
        self.params: dict[str, Any] = {}
        self.keys: set[str] = set()
        #: Scalar subqueries the query names, computed once before it (``WITH``).
        self.scalars: dict[str, str] = {}
        self._names: dict[tuple[str, str], str] = {}
        #: Whether ingest marked any of the project's runs as written by several
        #: writers (looked up only for a query that reads ``state``: see
        #: :func:`_compiled`). Without any, a state needs no fold of writers.
        self.several_writers = several_writers
        self.reads_state = False

    def param(self, value: Any, kind: str) -> str:
        """The placeholder of ``value`` as a ``kind`` (one per distinct value)."""
        seen = (kind, repr(value))
        name = self._names.get(seen)
        if name is None:
            if len(self.params) >= _MAX_PARAMS:
                raise BadRequest(f"filters: too large (more than {_MAX_PARAMS} values)")
            name = self._names[seen] = f"v{len(self.params)}"
            self.params[name] = value
        return f"{{{name}:{kind}}}"

    def text(self, value: str) -> str:
        return self.param(value, "String")

    def number(self, value: float) -> str:
        return self.param(float(value), "Float64")

    def key(self, key: str) -> str:
        self.keys.add(key)
        return self.text(key)

    def scalar(self, name: str, subquery: str) -> str:
        self.scalars[name] = subquery
        return name

    def select(self) -> str:
        """``SELECT``, after the ``WITH`` clause of the scalar subqueries named."""
        names = ", ".join(f"({sql}) AS {name}" for name, sql in self.scalars.items())
        return f"WITH {names} SELECT" if names else "SELECT"

    def rows(self, entity: str, project: str) -> str:
        """The WHERE condition of the rows the query reads: the project's, of its keys."""
        return (
            f"entity = {self.text(entity)} AND project = {self.text(project)} "
            f"AND key IN {self.param(sorted(self.keys), 'Array(String)')}"
        )


# ---- what a field name refers to ----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Source:
    """Rows of ``key`` written by ``field``. ``marked``: current by the field's
    marker, else (metric summaries) the newest row is the current one. ``shared``:
    other fields write rows of this key too (a summary the user set beside a
    metric's), so rows must be told apart by field."""

    key: str
    field: str
    marked: bool = True
    shared: bool = True

    def rows(self, q: _Sql, condition: str = "") -> str:
        """The aggregate condition selecting this source's rows (and ``condition``)."""
        where = f"key = {q.key(self.key)}"
        if self.shared:
            where += f" AND field = {q.text(self.field)}"
        return f"{where} AND ({condition})" if condition else where

    def current(self, q: _Sql) -> str:
        if self.marked:
            return f"maxIf(ver, key = {q.key(MARKER + self.field)})"
        return f"maxIf(ver, {self.rows(q)})"

    def match(self, q: _Sql, condition: str = "") -> str:
        """Whether a current row (that satisfies ``condition``) exists."""
        current = self.current(q)
        if not condition and not self.marked:
            return f"{current} > 0"
        return f"(maxIf(ver, {self.rows(q, condition)}) = {current} AND {current} > 0)"

    def value(self, q: _Sql, text: bool = True) -> _Cols:
        """The newest whole value (``pos = 0``): current when :meth:`match` says one is.
        Without ``text``, its ``str`` is left out (``''``): times sort by ``num``,
        and metric values have none. Copying text per row is the costly part."""
        where = self.rows(q, "pos = 0")
        kind, num = (f"argMaxIf({c}, ver, {where})" for c in ("kind", "num"))
        return _Cols(kind, num, f"argMaxIf(str, ver, {where})" if text else "''")


_NO_VALUE = _Cols(str(NULL), "0", "''")


@dataclasses.dataclass(frozen=True)
class _Stored:
    """A field read from rows: ``tiers`` of sources, the first tier that has a
    current value decides (a summary the user set before a metric's last value).
    With a ``default`` (the value a run document shows when none was written,
    such as ``tags: []``), a run without one is searched as having that value."""

    tiers: tuple[tuple[_Source, ...], ...]
    is_time: bool = False
    default: _Cols | None = None

    def exists(self, q: _Sql) -> str:
        if self.default is not None:
            return "1"
        return _any(s.match(q) for tier in self.tiers for s in tier)

    def match(self, q: _Sql, predicate: Predicate) -> str:
        if len(self.tiers) == 1 and self.default is None:
            return _any(s.match(q, predicate(_ROW)) for s in self.tiers[0])
        branches = []
        for tier in self.tiers:
            branches.append(_any(s.match(q) for s in tier))
            branches.append(_any(s.match(q, predicate(_ROW)) for s in tier))
        otherwise = "0" if self.default is None else f"({predicate(self.default)})"
        return f"multiIf({', '.join(branches)}, {otherwise})"

    def value(self, q: _Sql) -> _Cols:
        sources = [s for tier in self.tiers for s in tier]
        found = [(s.match(q), s.value(q, text=s.marked and not self.is_time)) for s in sources]
        otherwise = self.default or _NO_VALUE

        def pick(part: str) -> str:
            branches = [x for exists, cols in found for x in (exists, getattr(cols, part))]
            return f"multiIf({', '.join(branches)}, {getattr(otherwise, part)})"

        return _Cols(pick("kind"), pick("num"), pick("str"))


@dataclasses.dataclass(frozen=True)
class _Scalar:
    """A field every run has, one value computed per run (``id``, ``state``...)."""

    cols: _Cols
    is_time: bool = False

    def exists(self, q: _Sql) -> str:
        return "1"

    def match(self, q: _Sql, predicate: Predicate) -> str:
        return f"({predicate(self.cols)})"

    def value(self, q: _Sql) -> _Cols:
        return self.cols


_Ref = _Stored | _Scalar


def _any(conditions: Any) -> str:
    parts = list(conditions)
    return parts[0] if len(parts) == 1 else "(" + " OR ".join(parts) + ")"


def _resolve(q: _Sql, name: str, entity: str, project: str, crashed_before: float) -> _Ref:
    if len(name) > _MAX_NAME or name.count(".") >= _MAX_NAME_PARTS:
        raise BadRequest(
            f"field {_short(name)} is too long: at most {_MAX_NAME} characters "
            f"and {_MAX_NAME_PARTS} dotted parts"
        )
    name = _ALIASES.get(name, name)
    if name.startswith("summary_metrics."):
        name = "summary." + name.removeprefix("summary_metrics.")
    if name in ("entity", "project"):
        return _Scalar(_Cols(str(STRING), "0", q.text(entity if name == "entity" else project)))
    if name == "id":
        return _Scalar(_Cols(str(STRING), "0", "run_id"))
    if name == "state":
        return _Scalar(_Cols(str(STRING), "0", _state(q, entity, project, crashed_before)))
    if name == "config" or (name.startswith("config.") and len(name) > len("config.")):
        tiers = [(_Source(name, "config", shared=False),)]
        if name.endswith(".value") and name.count(".") > 1:  # W&B's config.<key>.value
            tiers.append((_Source(name.removesuffix(".value"), "config", shared=False),))
        return _Stored(tuple(tiers))
    if name.startswith("summary.") and len(name) > len("summary."):
        # The user's value: set whole (summary.a.b) or inside an object (summary.a).
        parts = name.split(".")
        fields = [".".join(parts[:i]) for i in range(2, len(parts) + 1)]
        user = tuple(_Source(name, f, shared=len(fields) > 1) for f in fields)
        metric = METRIC_PREFIX + name
        return _Stored((user, (_Source(metric, metric, marked=False, shared=False),)))
    if name in (*_RUN_FIELDS, "exit_code"):
        tiers = [(_Source(name, name, shared=False),)]
        if name in _SET_ONCE:  # a set value wins over a first-write-wins one
            tiers.append((_Source(ONCE_PREFIX + name, ONCE_PREFIX + name, shared=False),))
        # A run's document shows ``tags: []`` when none were given: so does search.
        default = _Cols(str(ARRAY), "0", "'[]'") if name == "tags" else None
        return _Stored(tuple(tiers), is_time=name in TIME_KEYS, default=default)
    raise BadRequest(f"unknown field {name!r}; fields are {_FIELDS_HELP}")


def _state(q: _Sql, entity: str, project: str, crashed_before: float) -> str:
    """The run's state as the service reports it (the rule of :func:`.runs._fold`):
    ``created`` until one is written. A run of one writer (one ingest has not
    marked as several writers'): ``crashed`` when ``running`` and its last batch
    is older than the limit, else the state written. Several writers: ``running``
    while one whose last state is ``running`` has sent a batch within the limit;
    else ``crashed`` if the writer that sent the newest batch last said
    ``running`` (it died unseen); else the state written last.

    The writers of the marked runs are folded apart, once, in a scalar subquery
    the main query looks runs up in: read and gathered per run in the main
    aggregation, they would cost every run (most have one writer) a third more.
    When the project has no marked run (``q.several_writers``, looked up
    before), there is nothing to fold."""
    q.reads_state = True
    state = f"argMaxIf(str, ver, key = {q.key('state')})"
    beat = f"maxIf(num, key = {q.key('heartbeat_at')})"
    cutoff = q.number(crashed_before)
    one_writer = f"if({state} = 'running' AND {beat} > 0 AND {beat} < {cutoff}, 'crashed', {state})"
    created = f"countIf(key = {q.key('state')}) = 0, 'created'"
    if not q.several_writers:
        return f"multiIf({created}, {one_writer})"
    project_rows = f"entity = {q.text(entity)} AND project = {q.text(project)}"
    marked_key = q.text(SEVERAL_WRITERS_KEY)
    marked = f"SELECT run_id FROM run_search WHERE {project_rows} AND key = {marked_key}"
    says_key, beat_key = q.text(WRITER_STATE_KEY), q.text(WRITER_BEAT_KEY)
    # Per writer (pos): does its newest state say running (on a tie of versions,
    # running wins), and its newest batch time. ``identity`` keeps the marked runs
    # (thousands, scattered) out of the primary key's analysis, which looks up
    # each granule's range in the set: filtering the rows read costs less (the
    # fold of 10k marked runs of 100k: 30 -> 20 ms).
    writers = (
        f"SELECT run_id, pos, argMaxIf(str = 'running', (ver, str = 'running'), key = {says_key}) "
        f"AS says, maxIf(num, key = {beat_key}) AS beat FROM run_search WHERE {project_rows} "
        f"AND key IN ({says_key}, {beat_key}) AND identity(run_id) IN ({marked}) "
        "GROUP BY run_id, pos"
    )
    # Per run: running if a writer that says running is alive; else crashed if the
    # newest-beat writer (the lowest pos on a tie) says running; else the last state.
    runs = (
        f"SELECT run_id, multiIf(countIf(says AND beat >= {cutoff}) > 0, 'running', "
        f"argMax(says, (beat, 4294967295 - pos)), 'crashed', 'last') AS state "
        f"FROM ({writers}) GROUP BY run_id"
    )
    several = q.scalar(
        "several_writers", f"SELECT (groupArray(run_id), groupArray(state)) FROM ({runs})"
    )
    found = f"transform(run_id, {several}.1, {several}.2, '')"
    return f"multiIf({created}, {found} = '', {one_writer}, {found} = 'last', {state}, {found})"


#: Per store, the projects found to have a run marked as several writers'. A
#: mark is never taken back, so a yes is kept (and saves a query per search);
#: should the marked runs be deleted, the fold finds none: slower, never wrong.
#: A no is asked again every time: a second writer can appear at any moment.
_SEVERAL_WRITERS_SEEN: weakref.WeakKeyDictionary[AsyncStore, set[tuple[str, str]]] = (
    weakref.WeakKeyDictionary()
)
_MAX_SEEN = 10_000


async def _any_several_writers(store: AsyncStore, entity: str, project: str) -> bool:
    """Whether ingest marked any run of ``entity/project`` as written by several
    writers (one row, found through the table's order)."""
    seen = _SEVERAL_WRITERS_SEEN.setdefault(store, set())
    if (entity, project) in seen:
        return True
    found = await store.query_arrow(
        "SELECT 1 AS marked FROM run_search WHERE entity = {e:String} "
        "AND project = {p:String} AND key = {k:String} LIMIT 1",
        {"e": entity, "p": project, "k": SEVERAL_WRITERS_KEY},
    )
    if found.num_rows == 0:
        return False
    if len(seen) >= _MAX_SEEN:
        seen.clear()
    seen.add((entity, project))
    return True


async def _compiled(
    store: AsyncStore, entity: str, project: str, compile: Callable[[_Sql], str]
) -> tuple[str, _Sql]:
    """The SQL ``compile`` makes, and its parameters. A query that reads ``state``
    is made again, with the fold of writers' states, if the project has runs
    with several writers (one small read); others are made once."""
    q = _Sql()
    sql = compile(q)
    if q.reads_state and await _any_several_writers(store, entity, project):
        q = _Sql(several_writers=True)
        sql = compile(q)
    return sql, q


# ---- filters ------------------------------------------------------------------------------------


@dataclasses.dataclass
class _Compiler:
    q: _Sql
    entity: str
    project: str
    crashed_before: float
    size: int = 0  # bytes of SQL made so far (see sized)

    def ref(self, name: str) -> _Ref:
        return _resolve(self.q, name, self.entity, self.project, self.crashed_before)

    def document(self, spec: Any, where: str, depth: int = 0) -> str:
        """A filter document: ``{field: condition, "$and": [...], ...}``, all of it true."""
        if not isinstance(spec, dict):
            raise BadRequest(f"{where} must be an object, got {_short(spec)}")
        if depth > _MAX_DEPTH:
            raise BadRequest(f"{where}: nested more than {_MAX_DEPTH} deep")
        parts = []
        for name, condition in spec.items():
            here = f"{where}.{name}" if where != "filters" else name
            if name in _LOGICAL:
                parts.append(self.logical(name, condition, here, depth))
            elif name.startswith("$"):
                raise BadRequest(
                    f"{here}: unknown operator at the top of a filter; use one of "
                    f"{', '.join(_LOGICAL)} or a field name"
                )
            else:
                parts.append(self.sized(self.condition(self.ref(name), condition, here), here))
        sql = "(" + " AND ".join(parts) + ")" if parts else "1"
        self.count(len(sql) - sum(map(len, parts)), where)  # the parts counted themselves
        return sql

    def sized(self, sql: str, where: str) -> str:
        """``sql``, counted against the bound on a query's size."""
        self.count(len(sql), where)
        return sql

    def count(self, size: int, where: str) -> None:
        self.size += size
        if self.size > _MAX_SQL:
            raise BadRequest(f"{where}: the filter is too large (over {_MAX_SQL} bytes of SQL)")

    def logical(self, op: str, items: Any, where: str, depth: int) -> str:
        if not isinstance(items, list) or not items:
            raise BadRequest(f"{where} takes a non-empty list of filters, got {_short(items)}")
        parts = [self.document(item, f"{where}[{i}]", depth + 1) for i, item in enumerate(items)]
        joined = " AND ".join(parts) if op == "$and" else " OR ".join(parts)
        sql = f"(NOT ({joined}))" if op == "$nor" else f"({joined})"
        self.count(len(sql) - sum(map(len, parts)), where)  # the parts counted themselves
        return sql

    def condition(self, ref: _Ref, spec: Any, where: str, depth: int = 0) -> str:
        """What one field must satisfy: a value (``$eq``) or an object of operators."""
        if depth > _MAX_DEPTH:
            raise BadRequest(f"{where}: nested more than {_MAX_DEPTH} deep")
        if not (isinstance(spec, dict) and any(k.startswith("$") for k in spec)):
            return self.equals(ref, spec, where)
        plain = [k for k in spec if not k.startswith("$")]
        if plain:
            raise BadRequest(f"{where}: mixes operators and a plain key {plain[0]!r}")
        parts = []
        for op, operand in spec.items():
            here = f"{where}.{op}"
            if op == "$options":
                if "$regex" not in spec:
                    raise BadRequest(f"{here} only goes with $regex")
                continue
            if op == "$eq":
                parts.append(self.equals(ref, operand, here))
            elif op == "$ne":
                parts.append(f"NOT {self.equals(ref, operand, here)}")
            elif op in _COMPARISONS:
                parts.append(self.compare(ref, _COMPARISONS[op], operand, here))
            elif op in ("$in", "$nin"):
                if not isinstance(operand, list):
                    raise BadRequest(f"{here} takes a list, got {_short(operand)}")
                any_of = self.any_of(ref, operand, here)
                parts.append(any_of if op == "$in" else f"NOT {any_of}")
            elif op == "$exists":
                if not isinstance(operand, bool | int):
                    raise BadRequest(f"{here} takes true or false, got {_short(operand)}")
                exists = ref.exists(self.q)
                parts.append(exists if operand else f"NOT {exists}")
            elif op == "$regex":
                parts.append(self.regex(ref, operand, spec.get("$options", ""), here))
            elif op == "$not":
                if isinstance(operand, str):
                    parts.append(f"NOT {self.regex(ref, operand, '', here)}")
                elif isinstance(operand, dict) and operand and all(k[:1] == "$" for k in operand):
                    parts.append(f"NOT {self.condition(ref, operand, here, depth + 1)}")
                else:
                    raise BadRequest(
                        f"{here} takes an object of operators or a pattern, got {_short(operand)}"
                    )
            else:
                raise BadRequest(f"{here}: unknown operator; operators are {', '.join(_OPERATORS)}")
        return "(" + " AND ".join(parts) + ")"

    def equals(self, ref: _Ref, value: Any, where: str) -> str:
        q = self.q
        if value is None:  # as in MongoDB: null, or no such field
            return f"(NOT {ref.exists(q)} OR {ref.match(q, lambda c: f'{c.kind} = {NULL}')})"
        if isinstance(value, dict | list):
            kind, text = (OBJECT if isinstance(value, dict) else ARRAY), q.text(whole(value))
            return ref.match(q, lambda c: f"{c.kind} = {kind} AND {c.str} = {text}")
        return self.compare(ref, "=", value, where)

    def compare(self, ref: _Ref, op: str, value: Any, where: str) -> str:
        if value is None:  # MongoDB: $gte/$lte null match what equals null; $gt/$lt nothing
            return self.equals(ref, None, where) if "=" in op else "0"
        kind, column, operand = _operand(ref, value, where)
        placeholder = self.q.text(operand) if isinstance(operand, str) else self.q.number(operand)
        return ref.match(
            self.q, lambda c: f"{c.kind} = {kind} AND {getattr(c, column)} {op} {placeholder}"
        )

    def any_of(self, ref: _Ref, values: list[Any], where: str) -> str:
        """``$in``: one ``has(array, value)`` per kind of value (numbers, strings,
        booleans, times) instead of an equality per value, so a long list stays a
        small query (2000 values as equalities took ~9 s to plan, or failed as too
        big an AST); ``null``, objects and arrays are compared one by one."""
        parts: list[str] = []
        groups: dict[tuple[int, str], set[float | str]] = {}
        for value in values:
            if value is None or isinstance(value, dict | list):
                parts.append(self.sized(self.equals(ref, value, where), where))
            else:
                kind, column, operand = _operand(ref, value, where)
                groups.setdefault((kind, column), set()).add(operand)
        for (kind, column), members in groups.items():
            array_type = "Array(String)" if column == "str" else "Array(Float64)"
            array = self.q.param(sorted(members), array_type)

            def has(c: _Cols, kind: int = kind, column: str = column, array: str = array) -> str:
                return f"{c.kind} = {kind} AND has({array}, {getattr(c, column)})"

            parts.append(ref.match(self.q, has))
        return _any(parts or ["0"])

    def regex(self, ref: _Ref, pattern: Any, options: Any, where: str) -> str:
        if not isinstance(pattern, str):
            raise BadRequest(f"{where} takes a pattern (a string), got {_short(pattern)}")
        if not isinstance(options, str) or not set(options) <= _REGEX_OPTIONS:
            raise BadRequest(f"{where}: $options may hold i, m and s, got {options!r}")
        try:
            re.compile(pattern)
        except re.error as exc:
            raise BadRequest(f"{where}: not a regular expression: {exc}") from None
        flags = f"(?{''.join(sorted(set(options)))})" if options else ""
        text = self.q.text(flags + pattern)
        return ref.match(self.q, lambda c: f"{c.kind} = {STRING} AND match({c.str}, {text})")


def _short(value: Any) -> str:
    text = orjson.dumps(value, default=repr).decode()
    return text if len(text) <= 80 else text[:77] + "..."


def _operand(ref: _Ref, value: Any, where: str) -> tuple[int, str, float | str]:
    """What a scalar ``value`` compares against: the kind of stored value it can
    match, the column (``num`` or ``str``) and the value in that column's terms
    (a time given as ISO text or Unix seconds becomes seconds)."""
    if isinstance(value, bool):
        return BOOL, "num", float(value)
    if ref.is_time and isinstance(value, int | float | str):
        moment = value if not isinstance(value, str) else parse_time(value)
        if moment is None or not math.isfinite(moment):
            raise BadRequest(f"{where}: not a time: {value!r} (ISO 8601 or Unix seconds)")
        return STRING, "num", float(moment)
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise BadRequest(f"{where}: {value!r} is not a finite number")
        return NUMBER, "num", float(value)
    if isinstance(value, str):
        return STRING, "str", value
    raise BadRequest(f"{where} compares numbers, strings, booleans or times, got {_short(value)}")


# ---- the query ----------------------------------------------------------------------------------


def _order(order: str) -> tuple[str, bool]:
    """The field an order names and whether it is descending (``-`` or no sign)."""
    if not order or order in "+-":
        raise BadRequest("order must name a field, such as '-created_at' or '+summary.loss'")
    if order[0] in "+-":
        return order[1:], order[0] == "-"
    return order, True


def _cursor(after: str) -> tuple[int, float, str, str]:
    try:
        kind, num, text, run_id = orjson.loads(after)
        if not (isinstance(kind, int) and not isinstance(kind, bool) and 0 <= kind <= 255):
            raise TypeError  # a kind is a UInt8
        if not isinstance(num, int | float) or isinstance(num, bool):
            raise TypeError
        return kind, float(num), str(text), str(run_id)
    except (orjson.JSONDecodeError, ValueError, TypeError):
        raise BadRequest("invalid cursor 'after': pass back the 'next' value unchanged") from None


async def search_run_ids(
    store: AsyncStore,
    entity: str,
    project: str,
    *,
    filters: dict[str, Any] | None,
    order: str,
    per_page: int,
    after: str | None,
    lost_after_s: float,
) -> tuple[list[str], str | None]:
    """One page of the ids of ``entity/project``'s runs that match ``filters``, in
    ``order``, and the cursor of the next page (``None`` after the last).

    Raises :class:`BadRequest` naming the part of the filter that is wrong.
    """
    crashed_before = time.time() - lost_after_s
    name, descending = _order(order)
    cursor = _cursor(after) if after else None

    def compile(q: _Sql) -> str:
        compiler = _Compiler(q, entity, project, crashed_before)
        having = _matching(q, compiler, filters)
        value = compiler.ref(name).value(q)
        if cursor is not None:
            kind, num, text, run_id = cursor
            cmp = "<" if descending else ">"
            position = (
                f"{q.param(kind, 'UInt8')}, {q.number(num)}, {q.text(text)}, {q.text(run_id)}"
            )
            having += f" AND (kind_, num_, str_, run_id) {cmp} ({position})"
        direction = "DESC" if descending else "ASC"
        return (
            f"{q.select()} run_id, toUInt8({value.kind}) AS kind_, "
            f"toFloat64({value.num}) AS num_, toString({value.str}) AS str_ FROM run_search "
            f"WHERE {q.rows(entity, project)} GROUP BY run_id HAVING {having} ORDER BY "
            + ", ".join(f"{c} {direction}" for c in ("kind_", "num_", "str_", "run_id"))
            + f" LIMIT {q.param(per_page, 'UInt32')}"
        )

    sql, q = await _compiled(store, entity, project, compile)
    rows = (await _query(store, sql, q)).to_pylist()
    ids = [str(r["run_id"]) for r in rows]
    if len(rows) < per_page:
        return ids, None
    last = rows[-1]
    following = [int(last["kind_"]), float(last["num_"]), str(last["str_"]), ids[-1]]
    return ids, orjson.dumps(following).decode()


async def count_runs(
    store: AsyncStore,
    entity: str,
    project: str,
    *,
    filters: dict[str, Any] | None,
    lost_after_s: float,
) -> int:
    """How many of ``entity/project``'s runs match ``filters`` (W&B's ``len(runs)``)."""
    crashed_before = time.time() - lost_after_s

    def compile(q: _Sql) -> str:
        having = _matching(q, _Compiler(q, entity, project, crashed_before), filters)
        return (
            f"SELECT count() AS n FROM ({q.select()} run_id FROM run_search "
            f"WHERE {q.rows(entity, project)} GROUP BY run_id HAVING {having})"
        )

    sql, q = await _compiled(store, entity, project, compile)
    return int((await _query(store, sql, q)).column("n")[0].as_py())


def _matching(q: _Sql, compiler: _Compiler, filters: dict[str, Any] | None) -> str:
    """The HAVING condition of runs that exist and match ``filters``."""
    matches = compiler.document(filters or {}, "filters")
    # A run exists once its creation time is written (by every writer, first thing).
    markers = [q.key(MARKER + f) for f in ("created_at", ONCE_PREFIX + "created_at")]
    return f"maxIf(ver, key IN ({', '.join(markers)})) > 0 AND {matches}"


async def _query(store: AsyncStore, sql: str, q: _Sql) -> Any:
    try:
        return await store.query_arrow(sql, q.params)
    except StoreError as exc:
        if "regular expression" in str(exc).lower() or "re2" in str(exc).lower():
            raise BadRequest(f"filters: a pattern is not one RE2 accepts: {exc}") from None
        if "TOO_BIG_AST" in str(exc) or "Max query size exceeded" in str(exc):
            raise BadRequest("filters: too large for the database to plan; split it") from None
        raise
