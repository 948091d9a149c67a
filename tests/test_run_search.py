"""Run search: every filter operator and order against the same runs filtered in Python.

The runs are logged through the SDK into a real ``stride up``; the expected
answers come from :func:`_matches` and :func:`_sort_value`, a small reference
implementation of MongoDB's semantics over the run documents the service
returns (written for these tests, the oracle the service is checked against).
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import pytest

import stride
from stride import BadRequestError
from stride.wire import WIRE_VERSION, Batch

from .conftest import StrideUp, publish, wait_for

PROJECT = "search"
RUNS = 30
OPTIMIZERS = ("adam", "sgd", "adamw")


def _config(i: int) -> dict[str, Any]:
    config: dict[str, Any] = {
        "lr": (1e-4, 1e-3, 1e-2)[i % 3],
        "opt": OPTIMIZERS[i % 3],
        "model": {"depth": (18, 50, 101)[i % 3], "act": "relu" if i % 2 else "gelu"},
        "layers": [i % 5, (i + 1) % 5],
    }
    if i % 7:
        config["batch"] = 32 * (1 + i % 4)
    if i % 4 == 0:
        config["seed"] = None
    if i % 5 == 0:
        config["flag"] = bool(i % 10)
        config["aug.flip"] = i % 3 == 0  # a dotted key, found as config.aug.flip
    if i == 7:
        config["batch"] = "auto"  # another type under the same key
    return config


@pytest.fixture(scope="module")
def fleet(stack: StrideUp, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """``RUNS`` runs with varied config, tags, names, states and summaries, plus a
    running and a crashed one; returns every run document by id, as served."""
    spool = tmp_path_factory.mktemp("spool")
    settings = stack.settings(spool)
    for i in range(RUNS):
        tags = (["baseline"], ["a", "b"], [], None, ["b"])[i % 5]
        run = stride.init(
            project=PROJECT,
            id=f"r{i:02d}",
            name=None if i % 6 == 5 else f"run-{i:02d}",
            config={**_config(i), "old": 1} if i == 3 else _config(i),
            tags=tags,
            notes="long one" if i % 3 == 0 else None,
            folder=f"sweeps/{i % 2}",
            settings=settings,
        )
        for step in range(5):
            run.log({"loss": float(RUNS - i) + step / 10, **({"acc": i / RUNS} if i % 2 else {})})
        if i % 4 == 1:
            run.summary["loss"] = -1.0 * i  # the user's value wins over the metric's last
        if i % 3 == 2:
            run.summary["best"] = i / 10
            run.summary["eval"] = {"acc": i / RUNS, "split": "val"}
        run.finish(exit_code=1 if i % 8 == 3 else 0, state="cancelled" if i == 11 else None)
    # Run 3 again, its config written anew without "old": the old key must be gone.
    again = stride.init(project=PROJECT, id="r03", config=_config(3), settings=settings)
    again.finish()
    now = time.time_ns()
    publish(stack, [_fields("live", now), _fields("silent", now - 600 * 10**9)])

    api = stride.Api(stack.http_url)

    def ready() -> dict[str, dict[str, Any]] | None:
        docs = {r.id: _doc(r) for r in api.runs(PROJECT, per_page=100)}
        if len(docs) != RUNS + 2 or "old" in docs["r03"]["config"]:
            return None
        if any(
            "loss" not in d["summary"] or d["state"] == "running"
            for rid, d in docs.items()
            if rid.startswith("r")
        ):
            return None
        return docs

    return wait_for(ready)  # type: ignore[no-any-return]


def _fields(run_id: str, ver: int) -> Batch:
    """A running run's fields, heard from at ``ver`` (ns since the epoch)."""
    created = datetime.fromtimestamp(ver / 1e9, UTC).isoformat()
    return Batch(
        v=WIRE_VERSION, entity="default", project=PROJECT, run_id=run_id, writer="w", seq=0,
        ver=ver, set={"state": '"running"', "tags": '["handmade"]'},
        set_once={"created_at": json.dumps(created), "name": json.dumps(run_id)},
    )  # fmt: skip


def _doc(run: stride.ApiRun) -> dict[str, Any]:
    api = run._api
    doc = api.get(f"/api/v1/runs/{run.path}")
    assert isinstance(doc, dict)
    return doc


# ---- the reference: MongoDB's semantics over run documents ---------------------------------------

_MISSING: list[Any] = []
_ALIASES = {"display_name": "name", "createdAt": "created_at", "run_id": "id"}
_TIMES = ("created_at", "heartbeat_at", "finished_at")


def _walk(node: Any, parts: list[str]) -> Iterator[Any]:
    """Every value at the dotted path ``parts`` under ``node``, nested or dotted keys."""
    if not parts:
        yield node
        return
    if not isinstance(node, dict):
        return
    for n in range(1, len(parts) + 1):
        key = ".".join(parts[:n])
        if key in node:
            yield from _walk(node[key], parts[n:])


def _values(doc: dict[str, Any], name: str) -> list[Any]:
    name = _ALIASES.get(name, name)
    head, _, rest = name.partition(".")
    if head in ("config", "summary") and rest:
        tree = doc[head] if head == "config" else _user_summary(doc)
        return list(_walk(tree, rest.split(".")))
    value = doc.get(name)
    return _MISSING if value is None else [value]


def _user_summary(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in doc["summary"].items() if k not in ("_min", "_max", "_step")}


def _candidates(values: list[Any]) -> Iterator[Any]:
    for v in values:
        yield v
        if isinstance(v, list):
            yield from v


def _kind(v: Any) -> str:
    return (
        "bool"
        if isinstance(v, bool)
        else "number"
        if isinstance(v, int | float)
        else type(v).__name__
    )


def _same(a: Any, b: Any) -> bool:
    return _kind(a) == _kind(b) and a == b


def _compare(values: list[Any], op: str, target: Any, name: str) -> bool:
    if target is None:
        return _eq(values, None) if op in (">=", "<=") else False
    ops = {">": float.__gt__, ">=": float.__ge__, "<": float.__lt__, "<=": float.__le__}
    for c in _candidates(values):
        if name in _TIMES and isinstance(target, str) and isinstance(c, str):
            a, b = _epoch(c), _epoch(target)
        elif _kind(c) != _kind(target) or isinstance(c, dict | list):
            continue
        elif isinstance(c, str):
            if {">": c > target, ">=": c >= target, "<": c < target, "<=": c <= target}[op]:
                return True
            continue
        else:
            a, b = float(c), float(target)
        if ops[op](a, b):
            return True
    return False


def _epoch(text: str) -> float:
    moment = datetime.fromisoformat(text)
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def _eq(values: list[Any], target: Any) -> bool:
    if target is None:
        return not values or any(c is None for c in _candidates(values))
    return any(_same(c, target) for c in _candidates(values))


def _field(values: list[Any], spec: Any, name: str) -> bool:
    if not (isinstance(spec, dict) and any(k.startswith("$") for k in spec)):
        return _eq(values, spec)
    results = []
    for op, arg in spec.items():
        if op == "$eq":
            results.append(_eq(values, arg))
        elif op == "$ne":
            results.append(not _eq(values, arg))
        elif op in ("$gt", "$gte", "$lt", "$lte"):
            sign = {"$gt": ">", "$gte": ">=", "$lt": "<", "$lte": "<="}[op]
            results.append(_compare(values, sign, arg, name))
        elif op == "$in":
            results.append(any(_eq(values, a) for a in arg))
        elif op == "$nin":
            results.append(not any(_eq(values, a) for a in arg))
        elif op == "$exists":
            results.append(bool(values) == arg)
        elif op == "$regex":
            flags = re.IGNORECASE if "i" in spec.get("$options", "") else 0
            results.append(
                any(isinstance(c, str) and re.search(arg, c, flags) for c in _candidates(values))
            )
        elif op == "$not":
            results.append(
                not _field(values, {"$regex": arg} if isinstance(arg, str) else arg, name)
            )
    return all(results)


def _matches(doc: dict[str, Any], spec: dict[str, Any]) -> bool:
    for name, cond in spec.items():
        if name == "$and" and not all(_matches(doc, s) for s in cond):
            return False
        if name == "$or" and not any(_matches(doc, s) for s in cond):
            return False
        if name == "$nor" and any(_matches(doc, s) for s in cond):
            return False
        if not name.startswith("$"):
            canonical = _ALIASES.get(name, name)
            if not _field(_values(doc, canonical), cond, canonical):
                return False
    return True


def _sort_value(doc: dict[str, Any], name: str) -> tuple[int, float, str]:
    values = _values(doc, name)
    if not values or values[0] is None:
        return (1, 0.0, "")
    v = values[0]
    if isinstance(v, bool):
        return (6, float(v), "")
    if isinstance(v, int | float):
        return (2, float(v), "")
    if isinstance(v, str):
        return (3, _epoch(v) if name in _TIMES else 0.0, v)
    return (4 if isinstance(v, dict) else 5, 0.0, json.dumps(v, sort_keys=True))


def _search(api: stride.Api, filters: dict[str, Any], **kw: Any) -> list[str]:
    return [r.id for r in api.runs(PROJECT, filters, **kw)]


# ---- the tests ----------------------------------------------------------------------------------

FILTERS: list[dict[str, Any]] = [
    {"config.lr": 1e-3},
    {"config.lr": {"$eq": 1e-2}},
    {"config.lr": {"$ne": 1e-3}},
    {"config.batch": {"$gt": 64}},
    {"config.batch": {"$gte": 64}},
    {"config.batch": {"$lt": 96}},
    {"config.batch": {"$lte": 64, "$gt": 32}},
    {"config.batch": {"$exists": False}},
    {"config.batch": {"$exists": True}},
    {"config.batch": "auto"},
    {"config.batch": {"$gt": "a"}},
    {"config.opt": {"$in": ["adam", "sgd"]}},
    {"config.opt": {"$nin": ["adam"]}},
    {"config.opt": {"$in": []}},
    {"config.opt": {"$regex": "^adam"}},
    {"config.opt": {"$regex": "ADAMW$", "$options": "i"}},
    {"config.opt": {"$gt": "adam"}},
    {"config.model.depth": 50},
    {"config.model": {"act": "relu", "depth": 50}},
    {"config.model.act": {"$not": {"$eq": "relu"}}},
    {"config.layers": 3},
    {"config.layers": [1, 2]},
    {"config.layers": {"$gt": 3}},
    {"config.layers": {"$in": [0, 4]}},
    {"config.seed": None},
    {"config.seed": {"$ne": None}},
    {"config.seed": {"$exists": True}},
    {"config.flag": True},
    {"config.flag": {"$gt": False}},
    {"config.aug.flip": True},
    {"config.old": 1},
    {"config.old": {"$exists": False}},
    {"config.lr": {"$gt": "a"}},
    {"tags": "baseline"},
    {"tags": {"$in": ["a", "handmade"]}},
    {"tags": {"$nin": ["b"]}},
    {"tags": ["a", "b"]},
    {"tags": {"$exists": True}},
    {"tags": {"$regex": "^base"}},
    {"state": "finished"},
    {"state": {"$in": ["failed", "crashed"]}},
    {"state": {"$ne": "finished"}},
    {"state": "running"},
    {"state": "cancelled"},
    {"name": {"$regex": "RUN-1", "$options": "i"}},
    {"display_name": "run-03"},
    {"name": {"$not": "^run-0"}},
    {"notes": {"$exists": False}},
    {"notes": "long one"},
    {"folder": "sweeps/1"},
    {"exit_code": 1},
    {"summary.loss": {"$lt": 10}},
    {"summary.loss": {"$lt": 0}},
    {"summary.best": {"$gte": 1.0}},
    {"summary.eval.acc": {"$gt": 0.5}},
    {"summary.eval.split": "val"},
    {"summary.acc": {"$exists": True}},
    {"summary.acc": {"$exists": False}},
    {"$or": [{"config.lr": 1e-2}, {"tags": "a"}]},
    {"$and": [{"config.lr": 1e-2}, {"config.model.act": "gelu"}]},
    {"$nor": [{"config.lr": 1e-2}, {"state": "finished"}]},
    {"$or": [{"$and": [{"config.opt": "sgd"}, {"tags": "b"}]}, {"summary.best": {"$lt": 0.6}}]},
    {"config.lr": 1e-3, "state": "finished", "folder": {"$ne": "sweeps/0"}},
    {"id": {"$in": ["r01", "r02", "live"]}},
    {"entity": "default"},
    {"project": "elsewhere"},
]


@pytest.mark.parametrize("spec", FILTERS, ids=lambda spec: json.dumps(spec)[:60])
def test_every_filter_matches_the_reference(
    fleet: dict[str, dict[str, Any]], stack: StrideUp, spec: dict[str, Any]
) -> None:
    api = stride.Api(stack.http_url)
    expected = sorted(rid for rid, doc in fleet.items() if _matches(doc, spec))
    assert sorted(_search(api, spec, per_page=100)) == expected


def test_the_reference_data_exercises_each_filter(fleet: dict[str, dict[str, Any]]) -> None:
    """Most filters select some runs but not all: otherwise a test above proves little.
    These select all or none on purpose: each checks a rule (null means null or
    missing; a config written anew drops its old keys; tags default to [])."""
    trivial = [s for s in FILTERS if sum(_matches(d, s) for d in fleet.values()) in (0, len(fleet))]
    assert trivial == [
        {"config.opt": {"$in": []}},
        {"config.seed": None},
        {"config.seed": {"$ne": None}},
        {"config.old": 1},
        {"config.old": {"$exists": False}},
        {"config.lr": {"$gt": "a"}},
        {"tags": {"$exists": True}},
        {"entity": "default"},
        {"project": "elsewhere"},
    ]


def test_times_compare_as_times(fleet: dict[str, dict[str, Any]], stack: StrideUp) -> None:
    api = stride.Api(stack.http_url)
    ordered = sorted(fleet.values(), key=lambda d: _epoch(d["created_at"]))
    middle = ordered[len(ordered) // 2]["created_at"]
    later = [d["id"] for d in ordered if _epoch(d["created_at"]) > _epoch(middle)]
    assert sorted(_search(api, {"created_at": {"$gt": middle}}, per_page=100)) == sorted(later)
    # The same instant written another way, and as Unix seconds.
    naive_utc = datetime.fromisoformat(middle).astimezone(UTC).replace(tzinfo=None).isoformat()
    assert sorted(_search(api, {"createdAt": {"$gt": naive_utc}}, per_page=100)) == sorted(later)
    seconds = _epoch(middle)
    assert sorted(_search(api, {"created_at": {"$gt": seconds}}, per_page=100)) == sorted(later)


def test_a_stale_running_run_is_found_as_crashed(
    fleet: dict[str, dict[str, Any]], stack: StrideUp
) -> None:
    api = stride.Api(stack.http_url)
    assert (fleet["silent"]["state"], fleet["live"]["state"]) == ("crashed", "running")
    assert _search(api, {"state": "crashed"}) == ["silent"]
    assert _search(api, {"state": "running"}) == ["live"]


@pytest.mark.parametrize(
    "order",
    ["-created_at", "+created_at", "+summary.loss", "-summary.loss", "-config.batch",
     "+config.opt", "+name", "-heartbeat_at", "+config.lr.value", "-summary.eval.acc", "+state"],
)  # fmt: skip
def test_orders_and_pages_match_the_reference(
    fleet: dict[str, dict[str, Any]], stack: StrideUp, order: str
) -> None:
    api = stride.Api(stack.http_url)
    name, descending = order[1:], order[0] == "-"
    ref = "config.lr" if name == "config.lr.value" else name
    expected = sorted(
        fleet, key=lambda rid: (_sort_value(fleet[rid], ref), rid), reverse=descending
    )
    assert _search(api, {}, order=order, per_page=7) == expected  # five pages
    spec = {"config.lr": {"$lte": 1e-3}}
    wanted = [rid for rid in expected if _matches(fleet[rid], spec)]
    assert _search(api, spec, order=order, per_page=4) == wanted


def test_order_without_a_sign_is_descending(
    fleet: dict[str, dict[str, Any]], stack: StrideUp
) -> None:
    api = stride.Api(stack.http_url)
    assert _search(api, {}, order="config.lr") == _search(api, {}, order="-config.lr")


def test_pages_stay_stable_while_runs_are_added(
    fleet: dict[str, dict[str, Any]], stack: StrideUp, tmp_path: Path
) -> None:
    api = stride.Api(stack.http_url)
    pages = iter(api.runs(PROJECT, {"folder": "sweeps/0"}, order="+created_at", per_page=3))
    first = [next(pages).id for _ in range(4)]  # into the second page
    with stride.init(
        project=PROJECT, id="newcomer", folder="sweeps/0", settings=stack.settings(tmp_path)
    ):
        pass
    wait_for(lambda: _search(api, {"id": "newcomer"}) == ["newcomer"])
    rest = [r.id for r in pages]
    before = sorted(
        (r for r, d in fleet.items() if d["folder"] == "sweeps/0"),
        key=lambda r: fleet[r]["created_at"],
    )
    assert first + rest == [*before, "newcomer"]  # nothing skipped or repeated
    newest_first = _search(api, {"folder": "sweeps/0"}, order="-created_at", per_page=2)
    assert newest_first == ["newcomer", *reversed(before)]


def _nested_not(depth: int) -> dict[str, Any]:
    spec: dict[str, Any] = {"$eq": "x"}
    for _ in range(depth):
        spec = {"$not": spec}
    return spec


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"config.lr": {"$gt": [1]}}, "config.lr.$gt compares numbers"),
        ({"config.lr": {"$near": 1}}, "config.lr.$near: unknown operator"),
        ({"$where": "1"}, "$where: unknown operator at the top"),
        ({"$or": {"a": 1}}, "$or takes a non-empty list"),
        ({"$or": []}, "$or takes a non-empty list"),
        ({"$and": [{"config.x": 1}, 3]}, "$and[1] must be an object"),
        ({"config.lr": {"$in": 1}}, "config.lr.$in takes a list"),
        ({"config.lr": {"$exists": "yes"}}, "config.lr.$exists takes true or false"),
        ({"name": {"$regex": "("}}, "name.$regex: not a regular expression"),
        ({"name": {"$regex": "a", "$options": "q"}}, "$options may hold i, m and s"),
        ({"name": {"$options": "i"}}, "$options only goes with $regex"),
        ({"name": {"$not": 3}}, "name.$not takes an object of operators"),
        ({"created_at": {"$gt": "yesterday"}}, "not a time: 'yesterday'"),
        ({"config.lr": {"$gt": 1, "x": 2}}, "mixes operators and a plain key 'x'"),
        ({"colour": "red"}, "unknown field 'colour'"),
        ({"summary": 1}, "unknown field 'summary'"),
        # Bounds: no small request may build a huge query (each was seconds of CPU
        # and ~100 MB of SQL, or gigabytes for a name of 200k characters).
        ({"config." + "x" * 300: 1}, "is too long: at most 256 characters"),
        ({"summary." + "a." * 400 + "a": {"$in": list(range(800))}}, "16 dotted parts"),
        ({"$or": [{"summary." + ".".join("abcdefghijklmn"): v} for v in range(400)]}, "of SQL"),
        ({"name": _nested_not(20)}, "nested more than 16 deep"),
        ({"$or": [{}] * 50_000}, "of SQL"),  # the wrappers count too
    ],
)
def test_an_invalid_filter_is_refused_naming_the_bad_part(
    fleet: dict[str, dict[str, Any]], stack: StrideUp, spec: dict[str, Any], message: str
) -> None:
    api = stride.Api(stack.http_url)
    with pytest.raises(BadRequestError, match=re.escape(message)):
        _search(api, spec)


def test_filters_over_get_and_post_agree_and_bad_bodies_are_refused(
    fleet: dict[str, dict[str, Any]], stack: StrideUp
) -> None:
    import http.client
    import urllib.parse

    spec = {"config.opt": "sgd", "tags": {"$ne": "b"}}
    parsed = urllib.parse.urlsplit(stack.http_url)
    conn = http.client.HTTPConnection(parsed.hostname or "", parsed.port)
    query = urllib.parse.urlencode({"filters": json.dumps(spec), "per_page": 100})
    conn.request("GET", f"/api/v1/runs/default/{PROJECT}?{query}")
    over_get = sorted(r["id"] for r in json.loads(conn.getresponse().read())["runs"])
    assert over_get == sorted(_search(stride.Api(stack.http_url), spec, per_page=100))
    assert over_get == sorted(rid for rid, d in fleet.items() if _matches(d, spec))
    for body, message in ((b"[1]", "must be a JSON run search"), (b'{"per_page": 0}', "per_page")):
        conn.request("POST", f"/api/v1/runs/default/{PROJECT}", body)
        answer = conn.getresponse()
        assert answer.status == 400 and message in json.loads(answer.read())["error"]
    for bad in ('[300,0,"",""]', '[-1,0,"",""]', '[true,0,"",""]'):  # a kind is a UInt8
        conn.request("GET", f"/api/v1/runs/default/{PROJECT}?after={urllib.parse.quote(bad)}")
        answer = conn.getresponse()
        assert answer.status == 400 and "invalid cursor" in json.loads(answer.read())["error"]
    conn.request("GET", f"/api/v1/runs/default/{PROJECT}?filters=%7Bnope")
    answer = conn.getresponse()
    assert answer.status == 400 and "filters must be JSON" in json.loads(answer.read())["error"]
    conn.close()


def test_a_user_value_never_enters_the_sql_text(
    fleet: dict[str, dict[str, Any]], stack: StrideUp
) -> None:
    from stride.query.search import _Compiler, _Sql

    hostile = "x' OR '1'='1"
    spec = {"name": hostile, "config.model.act": {"$regex": hostile}, f"config.{hostile}": 1}
    q = _Sql()
    sql = _Compiler(q, "default", PROJECT, 0.0).document(spec, "filters")
    assert hostile not in sql and hostile in q.params.values()
    assert _search(stride.Api(stack.http_url), {"name": hostile}) == []
    assert len(_search(stride.Api(stack.http_url), {}, per_page=100)) >= RUNS


def test_a_filter_of_many_values_is_answered(
    fleet: dict[str, dict[str, Any]], stack: StrideUp
) -> None:
    """2000 values: as 2000 equalities this was ~290 KB of SQL that took ~9 s to plan
    (or failed as too big an AST, a 500); as one has() per kind of value it is small."""
    spec = {"config.lr": {"$in": [1e-3, 1e-4, *(1e6 + i for i in range(2000))]}}
    found = _search(stride.Api(stack.http_url), spec, per_page=100)
    expected = sorted(r for r, d in fleet.items() if _matches(d, spec))
    assert sorted(found) == expected and expected


def test_a_long_filter_goes_in_a_body(fleet: dict[str, dict[str, Any]], stack: StrideUp) -> None:
    """A URL of this length would be refused; the client sends the search as a body."""
    ids = [f"r{i:02d}" for i in range(0, RUNS, 2)] + [f"missing-{i:05d}" for i in range(2000)]
    found = _search(stride.Api(stack.http_url), {"id": {"$in": ids}}, per_page=100)
    assert sorted(found) == [f"r{i:02d}" for i in range(0, RUNS, 2)]
    assert len(msgspec.json.encode(ids)) > 16_000


def test_nan_and_infinity_are_refused_not_sent_as_null(stack: StrideUp) -> None:
    """JSON has no infinity: sent, it would become null and mean something else."""
    api = stride.Api(stack.http_url)
    with pytest.raises(stride.UsageError, match=r"filters\['config.lr'\]\['\$gt'\]: inf"):
        api.runs(PROJECT, {"config.lr": {"$gt": math.inf}})
    with pytest.raises(stride.UsageError, match="nan"):
        api.runs(PROJECT, {"$or": [{"summary.x": [1.0, math.nan]}]})


def test_len_of_a_search_is_how_many_runs_match(
    fleet: dict[str, dict[str, Any]], stack: StrideUp
) -> None:
    """W&B's ``len(api.runs(...))``: counted by the service, filters and all."""
    api = stride.Api(stack.http_url)
    for spec in ({"config.lr": 1e-3}, {"$or": [{"tags": "a"}, {"state": "crashed"}]}):
        runs = api.runs(PROJECT, spec, per_page=3)
        expected = sum(_matches(doc, spec) for doc in fleet.values())
        assert len(runs) == expected == len(list(runs))
    every = api.runs(PROJECT, per_page=4)  # the fleet, and a run another test may add
    assert len(every) == len(list(every)) >= len(fleet)
    assert len(api.runs(PROJECT, {"project": "elsewhere"})) == 0
    page = api.get(f"/api/v1/runs/default/{PROJECT}", [("per_page", 2), ("count", "true")])
    assert page["total"] >= RUNS and len(page["runs"]) == 2
    assert api.get(f"/api/v1/runs/default/{PROJECT}", [("per_page", 2)])["total"] is None
