"""Scan pages, below the HTTP API: the read-ahead that serves them and the pivot
that makes rows of points.

The read-ahead is tested here with an in-memory series standing in for the
store's reads (its cache logic is what is under test; the scans of
``test_query.py`` run it against the real store end to end), the pivot
against a plain-Python pivot of random points, and where a page of several
keys ends against the same rule computed from the points (in chDB).
"""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from stride.ingest.handlers import MetricsHandler
from stride.query._columns import TIME_COLUMNS, Columns, add_times, pivot
from stride.query.readahead import Chunk, Fetch, ReadAhead
from stride.query.scan import _page_bound
from stride.store import AsyncStore
from stride.store.chdb import ChdbStore
from stride.store.schema import ROLLUP_STEPS
from stride.wire import WIRE_VERSION, Batch, MetricBlock

from .conftest import RecordingStore

SCAN = ("e/p/r", "default", ("a",), False)


def _series(
    steps: np.ndarray, calls: list[tuple[int, int]], fail_calls: frozenset[int] = frozenset()
) -> Fetch:
    """Reads of ``steps`` as the store's scan reads would answer them."""

    async def fetch(lo: int, rows: int) -> Chunk:
        calls.append((lo, rows))
        await asyncio.sleep(0.001)  # a read takes a while, as a store's does
        if len(calls) in fail_calls:
            raise ConnectionError("store away")
        start = int(np.searchsorted(steps, lo))
        chunk = steps[start : start + rows]
        after = int(chunk[-1]) + 1 if start + rows < len(steps) else None
        return Columns(chunk, {"a": chunk * 0.5}, {"a": np.ones(len(chunk), bool)}), after

    return fetch


async def _scan_all(cache: ReadAhead, fetch: Fetch, page_size: int) -> list[Columns]:
    pages, cursor = [], 0
    while True:
        page, nxt = await cache.page((*SCAN, cursor, None), page_size, fetch)
        pages.append(page)
        if nxt is None:
            return pages
        cursor = nxt


async def test_pages_are_full_exact_and_read_once_ahead_of_the_client() -> None:
    steps = np.arange(10_000, dtype=np.int64) * 3  # gaps between steps
    calls: list[tuple[int, int]] = []
    fetch = _series(steps, calls)
    cache = ReadAhead(first_pages=1, chunk_values=4 * 4_600)
    first, cursor = await cache.page((*SCAN, 0, None), 1000, fetch)
    assert cursor == int(first.steps[-1]) + 1 == 2998
    await asyncio.sleep(0.01)  # the client reads its page: the next chunk is read meanwhile
    assert calls == [(0, 1000), (2998, 4000)]  # from one past the last step, 4x larger
    pages = [first]
    while cursor is not None:
        page, cursor = await cache.page((*SCAN, cursor, None), 1000, fetch)
        pages.append(page)
    # Every page full (the chunk of rows 5,000-9,599 does not end on a page: the last
    # page spans two chunks), every step once and in order, with its value.
    assert [len(p) for p in pages] == [1000] * 10
    got = np.concatenate([p.steps for p in pages])
    assert np.array_equal(got, steps)
    assert np.array_equal(np.concatenate([p.values["a"] for p in pages]), steps * 0.5)
    # Each chunk read once, growing 4x up to 4,600 rows.
    assert calls == [(0, 1000), (2998, 4000), (14998, 4600), (28798, 4600)]


async def test_without_kept_rows_every_page_is_read_and_still_exact() -> None:
    """Rows expired (``ttl_s=0``) or pushed out by another scan (``max_bytes``): each
    page is read again from the store, and the pages are the same."""
    steps = np.arange(5_000, dtype=np.int64)
    for cache, reads in ((ReadAhead(ttl_s=0.0), 16), (ReadAhead(max_bytes=1), 16)):
        calls: list[tuple[int, int]] = []
        fetch = _series(steps, calls)
        scans = {run: 0 for run in ("e/p/one", "e/p/two")}  # two scans, page by page in turn
        got: dict[str, list[Columns]] = {run: [] for run in scans}
        while scans:
            for run in list(scans):
                page, nxt = await cache.page((run, *SCAN[1:], scans[run], None), 700, fetch)
                got[run].append(page)
                if nxt is None:
                    del scans[run]
                else:
                    scans[run] = nxt
        for pages in got.values():
            assert np.array_equal(np.concatenate([p.steps for p in pages]), steps)
            assert [len(p) for p in pages] == [700] * 7 + [100]
        # Every page of both scans read from the store (8 each): nothing is kept
        # (expired at once, or over max_bytes on its own).
        assert len(calls) == reads
        assert cache._bytes == 0 and not cache._entries
        cache.close()


async def test_a_failed_read_ahead_is_read_again_by_the_page_that_needs_it() -> None:
    steps = np.arange(6_000, dtype=np.int64)
    calls: list[tuple[int, int]] = []
    cache = ReadAhead(first_pages=1, chunk_values=4 * 1_000)
    pages = await _scan_all(cache, _series(steps, calls, fail_calls=frozenset({2})), 1000)
    assert np.array_equal(np.concatenate([p.steps for p in pages]), steps)
    assert [lo for lo, _ in calls][:3] == [0, 1000, 1000]  # the failed read, then again


async def test_a_read_that_fails_twice_fails_the_page() -> None:
    steps = np.arange(6_000, dtype=np.int64)
    cache = ReadAhead(first_pages=1, chunk_values=4 * 1_000)
    fetch = _series(steps, [], fail_calls=frozenset({2, 3}))
    _, cursor = await cache.page((*SCAN, 0, None), 1000, fetch)
    assert cursor is not None
    with pytest.raises(ConnectionError, match="store away"):
        await cache.page((*SCAN, cursor, None), 1000, fetch)


async def test_close_stops_the_reads_in_flight() -> None:
    steps = np.arange(6_000, dtype=np.int64)
    calls: list[tuple[int, int]] = []
    cache = ReadAhead(first_pages=1, chunk_values=4 * 1_000)
    await cache.page((*SCAN, 0, None), 500, _series(steps, calls))
    kept = cache._entries[(*SCAN, 500, None)]  # the chunk at the next cursor, being read
    assert kept.pending is not None and not kept.pending.done()
    cache.close()
    await asyncio.sleep(0)
    assert kept.pending.cancelled() and not cache._entries
    # Closed (the service stopping): a request still answered reads directly and
    # leaves nothing behind, no entry and no read ahead.
    page, cursor = await cache.page((*SCAN, 500, None), 500, _series(steps, calls))
    assert page.steps.tolist() == list(range(500, 1000)) and cursor == 1000
    assert not cache._entries and calls[-1] == (500, 500)
    await asyncio.sleep(0.01)
    assert calls[-1] == (500, 500)


def _reference_pivot(rows: list[tuple[str, int, float, float]], keys: list[str]) -> dict:
    """Plain Python: one row per step, each key's value there, the times of the step's
    first row in key order."""
    out: dict[int, dict[str, float]] = {}
    for key, step, value, time in sorted(rows, key=lambda r: (r[0], r[1])):
        row = out.setdefault(step, {"_runtime": time, "_timestamp": time + 1e9})
        row[key] = value
    return {step: out[step] for step in sorted(out)}


def _long_table(rows: list[tuple[str, int, float, float]], as_dictionary: bool) -> pa.Table:
    """``rows`` as the store answers them (ORDER BY key, step), in two record
    batches; keys as strings, or as dictionaries that differ between the batches."""
    rows = sorted(rows, key=lambda r: (r[0], r[1]))
    batches = []
    for i, part in enumerate((rows[: len(rows) // 3], rows[len(rows) // 3 :])):
        names = [r[0] for r in part]
        key: pa.Array = pa.array(names, pa.string())
        if as_dictionary:  # each batch its own dictionary, the second in reverse order
            words = sorted(set(names), reverse=i == 1)
            indices = pa.array([words.index(n) for n in names], pa.int32())
            key = pa.DictionaryArray.from_arrays(indices, pa.array(words, pa.string()))
        batches.append(pa.record_batch({
            "key": key,
            "step": pa.array([r[1] for r in part], pa.int64()),
            "value": pa.array([r[2] for r in part], pa.float64()),
            "_runtime": pa.array([r[3] for r in part], pa.float64()),
            "_timestamp": pa.array([r[3] + 1e9 for r in part], pa.float64()),
        }))  # fmt: skip
    return pa.Table.from_batches(batches)


@pytest.mark.parametrize("as_dictionary", [True, False])
@pytest.mark.parametrize("one_read", [True, False])
@pytest.mark.parametrize("dense", [True, False])
def test_pivot_matches_a_plain_python_pivot(
    dense: bool, one_read: bool, as_dictionary: bool
) -> None:
    rng = np.random.default_rng(7)
    keys = ["b", "a", "c", "never"]
    rows = []
    for key in keys[:3]:
        steps = np.arange(0, 3000, 3) if dense else np.sort(rng.choice(5000, 800, replace=False))
        for step in steps:
            value = float(rng.normal()) if rng.random() > 0.05 else math.nan
            rows.append((key, int(step), value, float(step) * 0.1 + ord(key[0])))
    table = _long_table(rows, as_dictionary)
    cols = pivot(table, keys)
    missing = np.ones(len(cols), bool)
    if one_read:  # values and times in one read, as history reads a few points
        add_times(cols, table, keys, missing)
    else:  # as a scan reads them: the first key's times, then the others' for the rest
        names = sorted(keys)
        for time_keys in (names[:1], names[1:]):
            add_times(cols, _long_table([r for r in rows if r[0] in time_keys], as_dictionary),
                      time_keys, missing)  # fmt: skip
    assert not missing.any()
    # The columns keep the order asked; the steps and times own their memory (a view
    # would keep the whole long column alive in the scan's read-ahead, counting only it).
    assert list(cols.values)[:4] == keys
    assert cols.steps.base is None and cols.values["_runtime"].base is None
    want = _reference_pivot(rows, keys)
    assert cols.steps.tolist() == list(want)
    for i, step in enumerate(cols.steps.tolist()):
        for key in keys:
            has = key in want[step]
            assert bool(cols.present[key][i]) == has
            if has:
                got, expected = cols.values[key][i], want[step][key]
                assert got == expected or (math.isnan(got) and math.isnan(expected))
        for name in TIME_COLUMNS:
            assert cols.values[name][i] == want[step][name]


def test_times_of_steps_the_values_lack_are_ignored_and_steps_without_any_stay_missing() -> None:
    """Values and times come from two reads: a point written between them (its step
    not among the values) adds no row, and a step the times read lacks keeps none."""
    table = _long_table([("a", 1, 0.5, 10.0), ("a", 2, 0.6, 20.0)], as_dictionary=True)
    cols = pivot(table, ["a"])
    missing = np.ones(len(cols), bool)
    times = _long_table([("a", 2, 0.6, 20.0), ("a", 3, 0.7, 30.0)], as_dictionary=True)
    add_times(cols, times, ["a"], missing)
    assert cols.steps.tolist() == [1, 2] and missing.tolist() == [True, False]
    assert cols.values["_runtime"][1] == 20.0 and math.isnan(cols.values["_runtime"][0])


async def test_the_same_scan_twice_at_once_keeps_one_entry_and_counts_it_once() -> None:
    """Two identical requests at once (a client's retry): the kept rows of one
    replace the other's, whose read-ahead is stopped; the byte count stays exact,
    so it cannot drift up and push every other scan out."""
    steps = np.arange(50_000, dtype=np.int64)
    cache = ReadAhead(first_pages=2, chunk_values=4 * 20_000)
    fetch = _series(steps, [])
    (a, next_a), (b, next_b) = await asyncio.gather(
        cache.page((*SCAN, 0, None), 1000, fetch), cache.page((*SCAN, 0, None), 1000, fetch)
    )
    assert np.array_equal(a.steps, b.steps) and next_a == next_b == 1000
    assert list(cache._entries) == [(*SCAN, 1000, None)]
    assert cache._bytes == sum(e.nbytes for e in cache._entries.values()) > 0
    pages = [a]
    cursor: int | None = next_a
    while cursor is not None:
        page, cursor = await cache.page((*SCAN, cursor, None), 1000, fetch)
        pages.append(page)
    assert np.array_equal(np.concatenate([p.steps for p in pages]), steps)
    assert cache._bytes == 0 and not cache._entries  # all used up: nothing held
    tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    await asyncio.sleep(0.01)
    assert all(t.done() for t in tasks)  # no read left running for nobody


async def test_kept_rows_count_the_whole_chunk_they_are_a_view_of() -> None:
    steps = np.arange(20_000, dtype=np.int64)
    cache = ReadAhead(first_pages=20, chunk_values=4 * 20_000)
    _, cursor = await cache.page((*SCAN, 0, None), 1000, _series(steps, []))
    assert cursor is not None
    [entry] = cache._entries.values()
    chunk = 20_000 * (8 + 8 + 1)  # steps, values, present of the 20,000 rows read
    assert len(entry.rows) == 19_000 and entry.nbytes >= chunk


# ---- where a page of several keys ends (against the store) ---------------------------------------


def _rule(
    steps: dict[str, np.ndarray], keys: list[str], page_size: int, lo: int, require_all: bool
) -> int | None:
    """``_page_bound``'s rule, from the points themselves: counting from the start
    of ``lo``'s bucket, over a window of ``page_size`` buckets (jumping a gap to
    the next bucket with points), the page ends with the bucket where the first
    key reaches ``page_size`` points, else with the window; ``None`` when no
    points are left, or (``require_all``) a key has none left."""
    buckets = {k: steps[k] // ROLLUP_STEPS for k in keys}
    b_lo = lo // ROLLUP_STEPS
    if not any(((b >= b_lo) & (b < b_lo + page_size)).any() for b in buckets.values()):
        later = [int(b[b >= b_lo + page_size].min()) for b in buckets.values() if (b >= b_lo).any()]
        if not later:
            return None
        b_lo = min(later)
    b_hi = b_lo + page_size - 1
    in_window = {k: b[(b >= b_lo) & (b <= b_hi)] for k, b in buckets.items()}
    missing = any(not len(b) for b in in_window.values())
    if require_all and missing and any(not (b >= b_lo).any() for b in buckets.values()):
        return None
    bound = (b_hi + 1) * ROLLUP_STEPS - 1
    for b in in_window.values():
        if len(b) >= page_size:
            bound = min(bound, (int(b[page_size - 1]) + 1) * ROLLUP_STEPS - 1)
    return max(lo, bound)


async def test_a_page_of_several_keys_ends_where_the_rule_says(tmp_path: Path) -> None:
    """Pages of several keys end where the rollup's counts say (``_page_bound``,
    which counts a short window first and the whole window only when no key
    reaches the page there), as the same rule computed from the points."""
    steps = {
        "dense": np.arange(20_000, dtype=np.int64),
        "every7": np.arange(0, 20_000, 7, dtype=np.int64),
        "burst": np.arange(9_000, 9_300, dtype=np.int64),
        "far": np.array([0, 1, 2, 600_000, 600_001], dtype=np.int64),
    }
    blocks = [
        MetricBlock(
            stream="default", keys=[key], steps=s.tobytes(), times=(s * 0.5).tobytes(),
            timestamps=np.full(len(s), 1.7e9).tobytes(), values=[(s * 1.0).tobytes()],
        )
        for key, s in steps.items()
    ]  # fmt: skip
    batch = Batch(
        v=WIRE_VERSION, entity="e", project="p", run_id="r", writer="w", seq=0,
        ver=1, metrics=blocks,
    )  # fmt: skip
    chdb = ChdbStore(tmp_path / "clickhouse")
    try:
        store = AsyncStore(chdb)
        handler = MetricsHandler()
        await handler.write(store, handler.prepare([batch]))
        checked = 0
        key_sets = (["dense", "every7"], ["dense", "burst"], ["every7", "burst"], ["burst", "far"])
        for keys in (*key_sets, list(steps)):
            for page_size in (50, 300, 2_000, 30_000):
                for lo in (0, 3, 700, 9_100, 12_000, 19_990, 25_000, 600_001, 700_000):
                    for require_all in (False, True):
                        params = {"run": "e/p/r", "stream": "default", "keys": sorted(keys)}
                        found = await _page_bound(
                            store, params, keys, page_size, lo, 2**63 - 1, require_all
                        )
                        expected = _rule(steps, keys, page_size, lo, require_all)
                        assert found == expected, (keys, page_size, lo, require_all)
                        checked += expected is not None
        assert checked > 150
        # Where a key is logged at every step, one count of the short window decides:
        # 2000 points take 2000 / 256 + 1 buckets, not the whole window of 2000.
        counted = RecordingStore(chdb)
        params = {"run": "e/p/r", "stream": "default", "keys": ["dense", "every7"]}
        await _page_bound(counted, params, ["dense", "every7"], 2_000, 700, 2**63 - 1, False)
        assert [p["b_hi"] - p["b_lo"] + 1 for _, p in counted.queries] == [9]
    finally:
        chdb.close()
