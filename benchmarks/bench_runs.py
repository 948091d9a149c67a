"""Run search: a filter plus an order over 100k runs (issue 7: <= 100 ms).

Each run has 50 config fields (floats, ints and strings), 10 summary values the
run set and 10 metrics (whose last values are summary values too), tags, a
name and a state. They are written by ingest's own handlers
(``MetricsHandler``, ``RunFieldsHandler``) into chDB, one fetch of
``--fetch`` runs at a time, exactly as ``stride up`` would store them; then

* each search is timed in-process (``search_run_ids``: the one query that
  finds a page of ids), ``--reps`` times after a warm-up;
* ``stride up`` is started on the same data and the same searches are timed
  as a user makes them: the first page of ``api.runs(path, filters, order)``
  (50 runs, their documents included).

Each answer is checked against the same runs filtered and ordered in Python
from the generated data.

Usage: python benchmarks/bench_runs.py [--runs 100000] [--reps 20] [--fetch 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import random
import shutil
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import _server  # noqa: F401  (puts the repository root on sys.path)
import numpy as np
import orjson
from _machine import print_machine
from _server import StrideUp, handle_sigterm, percentile, verdict

import stride
from stride.ingest.handlers import MetricsHandler, RunFieldsHandler
from stride.query.search import search_run_ids
from stride.store import AsyncStore
from stride.store.chdb import ChdbStore
from stride.wire import WIRE_VERSION, Batch, MetricBlock

TARGET_MS = 100
PROJECT = "fleet"
#: Runs the reference expects running stay running however long ago they were
#: loaded (a reused --data-dir); the cut-off's value does not change a search's cost.
LOST_AFTER_S = 30 * 86400.0
WORDS = ("adam", "sgd", "adamw", "lion", "lamb")
TAGS = ("baseline", "ablation", "sweep-a", "sweep-b")
STATES = ("finished", "finished", "failed", "running")

SEARCHES: list[tuple[str, dict[str, Any], str]] = [
    ("A config + state, by a metric",
     {"config.c7": {"$gt": 0.5}, "state": "finished"}, "-summary.m3"),
    ("B $or + tags, by config",
     {"$or": [{"config.c40": "adam"}, {"summary.u2": {"$gte": 0.9}}], "tags": "baseline"},
     "+config.c3"),
    ("C $in + $lt, by a set summary",
     {"config.c31": {"$in": [1, 2, 3]}, "config.c12": {"$lt": 0.3}}, "-summary.u5"),
    ("D regex on name, by time", {"name": {"$regex": "^run-1"}}, "+created_at"),
    ("E no filter, newest first", {}, "-created_at"),
]  # fmt: skip


def _run(i: int, rng: random.Random, t0_ns: int) -> dict[str, Any]:
    config: dict[str, Any] = {f"c{k}": rng.random() for k in range(30)}
    config.update({f"c{k}": rng.randrange(10) for k in range(30, 40)})
    config.update({f"c{k}": rng.choice(WORDS) for k in range(40, 50)})
    return {
        "id": f"r{i:06d}",
        "name": f"run-{i}",
        "config": config,
        "tags": rng.sample(TAGS, rng.randrange(3)),
        "state": STATES[i % 4],
        "summary": {f"u{k}": rng.random() for k in range(10)},
        "metrics": {f"m{k}": [rng.random() for _ in range(3)] for k in range(10)},
        "created_at": datetime.fromtimestamp((t0_ns + i * 10**6) / 1e9, UTC).isoformat(),
    }


def _batch(run: dict[str, Any], ver: int) -> Batch:
    steps = np.arange(3, dtype="<i8")
    block = MetricBlock(
        stream="default",
        keys=list(run["metrics"]),
        steps=steps.tobytes(),
        times=steps.astype("<f8").tobytes(),
        timestamps=(ver / 1e9 + steps).astype("<f8").tobytes(),
        values=[np.array(v, "<f8").tobytes() for v in run["metrics"].values()],
    )
    state = run.get("first_writer_state", run["state"])
    fields = {"config": run["config"], "tags": run["tags"], "state": state}
    fields.update({f"summary.{k}": v for k, v in run["summary"].items()})
    return Batch(
        v=WIRE_VERSION, entity="default", project=PROJECT, run_id=run["id"], writer="w",
        seq=0, ver=ver, set={k: orjson.dumps(v).decode() for k, v in fields.items()},
        set_once={"created_at": orjson.dumps(run["created_at"]).decode(),
                  "name": orjson.dumps(run["name"]).decode()},
        metrics=[block],
    )  # fmt: skip


def _second_writer(run: dict[str, Any], ver: int) -> Batch:
    """A second writer of ``run``, alive and running (so the run is running)."""
    return Batch(
        v=WIRE_VERSION, entity="default", project=PROJECT, run_id=run["id"], writer="w2",
        seq=0, ver=ver, set={"state": '"running"'},
    )  # fmt: skip


def _merges_settle(store: AsyncStore, limit_s: float = 300.0) -> float:
    """Wait (up to ``limit_s``) until chDB merges no parts: searches timed while
    the parts just loaded are merged measured twice as slow. Seconds waited."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < limit_s:
        busy = store.sync.query_arrow("SELECT count() AS n FROM system.merges")
        if not busy.column("n")[0].as_py():
            break
        time.sleep(1.0)
    return time.perf_counter() - t0


async def _load(store: AsyncStore, runs: list[dict[str, Any]], fetch: int) -> None:
    handlers = [MetricsHandler(), RunFieldsHandler()]
    ver = time.time_ns()  # heartbeats now: running runs stay running
    for start in range(0, len(runs), fetch):
        chunk = runs[start : start + fetch]
        batches = [_batch(r, ver) for r in chunk]
        batches += [_second_writer(r, ver) for r in chunk if "first_writer_state" in r]
        for handler in handlers:
            prepared = handler.prepare(batches)
            if prepared is not None:
                await handler.write(store, prepared)


# ---- the reference answer -----------------------------------------------------------------------


def _value(run: dict[str, Any], name: str) -> Any:
    head, _, rest = name.partition(".")
    if head == "config":
        return run["config"].get(rest)
    if head == "summary":
        return run["summary"].get(rest, run["metrics"].get(rest, [None])[-1])
    return run[name]


def _expected(runs: list[dict[str, Any]], spec: dict[str, Any], order: str, n: int) -> list[str]:
    def match(run: dict[str, Any], spec: dict[str, Any]) -> bool:
        for name, cond in spec.items():
            if name == "$or":
                if not any(match(run, s) for s in cond):
                    return False
                continue
            value = _value(run, name)
            ops = cond if isinstance(cond, dict) else {"$eq": cond}
            for op, arg in ops.items():
                ok = {
                    "$eq": lambda v, a: a in v if isinstance(v, list) else v == a,
                    "$gt": lambda v, a: v > a,
                    "$gte": lambda v, a: v >= a,
                    "$lt": lambda v, a: v < a,
                    "$in": lambda v, a: v in a,
                    "$regex": lambda v, a: v.startswith(a.lstrip("^")),
                }[op](value, arg)
                if not ok:
                    return False
        return True

    name, descending = order[1:], order[0] == "-"
    found = [r for r in runs if match(r, spec)]
    found.sort(key=lambda r: (_value(r, name), r["id"]), reverse=descending)
    return [r["id"] for r in found[:n]]


# ---- timing ------------------------------------------------------------------------------------


def _timed(fn: Callable[[], Any], reps: int) -> tuple[dict[str, float], Any]:
    result = fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        result = fn()
        times.append((time.perf_counter() - t0) * 1e3)
    s = sorted(times)
    return {"median": percentile(s, 50), "p90": percentile(s, 90), "min": s[0]}, result


def _line(name: str, stats: dict[str, float], target: bool) -> None:
    mark = (
        f"   (target <= {TARGET_MS} ms: {verdict(stats['median'] <= TARGET_MS)})" if target else ""
    )
    print(
        f"    {name:<30} median {stats['median']:7.1f} ms   p90 {stats['p90']:7.1f} ms   "
        f"min {stats['min']:7.1f} ms{mark}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=100_000)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--fetch", type=int, default=2000, help="runs per ingest write")
    ap.add_argument(
        "--several-writers", type=float, default=0.0, metavar="SHARE",
        help="the share of runs a second writer (alive, running) also writes",
    )  # fmt: skip
    ap.add_argument(
        "--data-dir", type=Path, default=None,
        help="keep the loaded runs here, and reuse them if already there (same --runs)",
    )  # fmt: skip
    args = ap.parse_args()
    handle_sigterm()
    print_machine(f"bench_runs: run search over {args.runs} runs")
    rng = random.Random(7)
    t0_ns = time.time_ns() - args.runs * 10**6
    runs = [_run(i, rng, t0_ns) for i in range(args.runs)]
    for run in random.Random(11).sample(runs, round(args.several_writers * len(runs))):
        run["first_writer_state"], run["state"] = run["state"], "running"
    with ExitStack() as stack:
        if args.data_dir is None:
            tmp = Path(tempfile.mkdtemp(prefix="stride-bench-runs-"))
            stack.callback(shutil.rmtree, tmp, ignore_errors=True)
        else:
            tmp = args.data_dir
        reuse = (tmp / "data" / "clickhouse").exists()
        t0 = time.perf_counter()
        store = AsyncStore(ChdbStore(tmp / "data" / "clickhouse"))
        if not reuse:
            asyncio.run(_load(store, runs, args.fetch))
        loaded_s = time.perf_counter() - t0
        settled_s = _merges_settle(store)
        parts = store.sync.query_arrow(
            "SELECT count() AS n, sum(rows) AS rows FROM system.parts "
            "WHERE active AND table = 'run_search'"
        ).to_pylist()[0]
        print(
            f"loaded {args.runs} runs (50 config fields, 10 set summary values, 10 metrics "
            f"of 3 steps each) through ingest's handlers in {loaded_s:.1f} s"
            f"{' (earlier: reused)' if reuse else ''}; run_search: "
            f"{parts['rows']} rows in {parts['n']} active parts; "
            f"{sum('first_writer_state' in r for r in runs)} runs with a second writer; "
            f"waited {settled_s:.1f} s for chDB's merges to finish\n"
        )

        def search(spec: dict[str, Any], order: str) -> list[str]:
            ids, _ = asyncio.run(
                search_run_ids(
                    store, "default", PROJECT, filters=spec, order=order, per_page=50,
                    after=None, lost_after_s=LOST_AFTER_S,
                )
            )  # fmt: skip
            return ids

        print(f"search_run_ids in-process (one page of 50 ids), {args.reps} reps after a warm-up")
        for title, spec, order in SEARCHES:
            stats, ids = _timed(lambda s=spec, o=order: search(s, o), args.reps)  # type: ignore[misc]
            _line(f"{title}", stats, target=False)
            if ids != _expected(runs, spec, order, 50):
                raise SystemExit(f"wrong answer to {spec} {order}: {ids[:5]}...")
        asyncio.run(store.close())

        up = stack.enter_context(StrideUp(tmp / "data", "--lost-after", str(LOST_AFTER_S)))
        api = stride.Api(up.http_url)
        stack.callback(api.close)
        print(f"\nstride up: pid {up.pid}; api.runs(...) first page of 50 runs, documents included")
        for title, spec, order in SEARCHES:

            def page(s: dict[str, Any] = spec, o: str = order) -> list[str]:
                return [r.id for r in itertools.islice(api.runs(PROJECT, s, o, per_page=50), 50)]

            stats, ids = _timed(page, args.reps)
            _line(title, stats, target=bool(spec))
            if ids != _expected(runs, spec, order, 50):
                raise SystemExit(f"wrong answer to {spec} {order} over HTTP")
        print("\nevery answer matched the same search done in Python")


if __name__ == "__main__":
    main()
