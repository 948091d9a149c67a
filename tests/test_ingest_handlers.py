"""The ingest loop dispatches through a registry of handlers.

A real nats-server and a real chDB on a temporary path; a test-only handler
registered beside the default ones records what it is given and writes a row
per batch into its own table, so "exactly once" is checked both in memory and
in storage.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import orjson
import pyarrow as pa
import pytest
from nats.aio.client import Client as NatsClient

from stride.ingest import Handler, IngestSettings, IngestWorker, default_handlers
from stride.ingest._tables import build_points
from stride.ingest.handlers import RunFieldsHandler, check_registry
from stride.query.search import search_run_ids
from stride.store import AsyncStore, StoreError
from stride.store.chdb import ChdbStore
from stride.store.run_search import SEVERAL_WRITERS_KEY
from stride.wire import (
    DLQ_STREAM,
    INGEST_SUBJECT,
    WIRE_VERSION,
    Batch,
    MetricBlock,
    decode_batch,
    encode_batch,
    message_id,
)

from .conftest import RecordingStore

SETTINGS = IngestSettings(fetch_timeout_s=0.05)
SEEN = "test_seen"

Ident = tuple[str, str, int]


class Seen:
    """Test-only handler: keeps the identity of every batch it writes, and a row
    per batch in a plain MergeTree (which would keep a repeat, not absorb it)."""

    name = "seen"
    parts = frozenset({"entity", "project", "run_id", "writer", "seq"})

    def __init__(self, store: ChdbStore) -> None:
        store.command(
            f"CREATE TABLE IF NOT EXISTS {SEEN} (run String, writer String, seq UInt64) "
            "ENGINE = MergeTree ORDER BY tuple()"
        )
        self.written: list[Ident] = []
        self.writes: list[int] = []  # batches per write

    def prepare(self, batches: Sequence[Batch]) -> list[Ident]:
        return [(b.path, b.writer, b.seq) for b in batches]

    async def write(self, store: AsyncStore, prepared: list[Ident]) -> int:
        self.written += prepared
        self.writes.append(len(prepared))
        run, writer, seq = zip(*prepared, strict=True)
        rows = pa.table({"run": run, "writer": writer, "seq": pa.array(seq, pa.uint64())})
        await store.insert_arrow(SEEN, ("run", "writer", "seq"), rows)
        return 0


class LedgerThenFail(AsyncStore):
    """The store seam: the first ledger insert lands, then the call fails, as when
    the worker loses its ack after the ledger is written."""

    def __init__(self, store: ChdbStore) -> None:
        super().__init__(store)
        self.failed = False

    async def insert_arrow(self, table: str, columns: tuple[str, ...], data: pa.Table) -> None:
        await super().insert_arrow(table, columns, data)
        if table == "batches" and not self.failed:
            self.failed = True
            raise StoreError("injected: failed after the ledger was written")


def batch(run_id: str, seq: int, steps: range, **set_fields: Any) -> Batch:
    """A batch of ``loss`` (= step / 10) and ``acc`` at ``steps``, with fields."""
    n = len(steps)
    s = np.array(steps, np.int64)
    block = MetricBlock(
        stream="default",
        keys=["loss", "acc"],
        steps=s.tobytes(),
        times=(s * 0.5).tobytes(),
        timestamps=np.full(n, 1.7e9).tobytes(),
        values=[(s / 10).tobytes(), np.ones(n).tobytes()],
    )
    return Batch(
        v=WIRE_VERSION,
        entity="ent",
        project="proj",
        run_id=run_id,
        writer="w1",
        seq=seq,
        ver=time.time_ns(),
        set={k: orjson.dumps(v).decode() for k, v in set_fields.items()},
        set_once={"created_at": orjson.dumps(f"created in batch {seq}").decode()},
        metrics=[block],
    )


def ident(b: Batch) -> Ident:
    return (b.path, b.writer, b.seq)


async def publish(nc: NatsClient, b: Batch, msg_id: str | None = None) -> None:
    msg_id = msg_id or message_id(b.path, b.writer, b.seq)
    ack = await nc.jetstream().publish(
        INGEST_SUBJECT, encode_batch(b), headers={"Nats-Msg-Id": msg_id}
    )
    assert not ack.duplicate, "JetStream dropped the batch: the test would prove nothing"


async def until(predicate: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        await asyncio.sleep(0.02)


def rows_of(table: pa.Table) -> list[tuple[Any, ...]]:
    return [tuple(row.values()) for row in table.to_pylist()]


class Running:
    """An IngestWorker with the default handlers and ``extra``, running as a task,
    stopped (draining) on exit."""

    def __init__(self, nc: NatsClient, store: AsyncStore, extra: Handler[Any]) -> None:
        self.worker = IngestWorker(nc, store, SETTINGS, handlers=[*default_handlers(), extra])
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> IngestWorker:
        self.task = asyncio.create_task(self.worker.run())
        return self.worker

    async def __aexit__(self, *exc: object) -> None:
        self.worker.stop()
        assert self.task is not None
        await asyncio.wait_for(self.task, 30)


@pytest.fixture
def chdb(tmp_path: Path) -> Iterator[ChdbStore]:
    store = ChdbStore(tmp_path / "clickhouse")
    yield store
    store.close()  # even when the test failed: chDB opens one directory per process


async def test_every_handler_gets_each_batch_once_and_the_defaults_still_store(
    nc: NatsClient, chdb: ChdbStore
) -> None:
    store = AsyncStore(chdb)
    seen = Seen(chdb)
    b1 = batch("r1", 0, range(0, 5), config={"lr": 0.1})
    b2 = batch("r1", 1, range(5, 8), state="running")
    b3 = batch("r2", 0, range(0, 4), config={"lr": 0.2})
    async with Running(nc, store, seen) as w:
        for b in (b1, b2, b3):
            await publish(nc, b)
        await until(lambda: w.stats.batches_applied == 3, "the 3 batches applied")

    # The extra handler: each batch once, in memory and in its table.
    assert sorted(seen.written) == sorted(map(ident, (b1, b2, b3)))
    rows = await store.query_arrow(
        f"SELECT run, seq, count() FROM {SEEN} GROUP BY run, seq ORDER BY run, seq"
    )
    assert rows_of(rows) == [("ent/proj/r1", 0, 1), ("ent/proj/r1", 1, 1), ("ent/proj/r2", 0, 1)]

    # Metrics: every point, the counter, and the keys of each run.
    points = await store.query_arrow(
        "SELECT run, key, step, value FROM points FINAL ORDER BY run, key, step"
    )
    expected = [
        (b.path, key, step, step / 10 if key == "loss" else 1.0)
        for b, steps in ((b1, range(0, 5)), (b2, range(5, 8)), (b3, range(0, 4)))
        for key in ("acc", "loss")
        for step in steps
    ]
    assert rows_of(points) == sorted(expected)
    assert w.stats.points == len(expected) == 24
    keys = await store.query_arrow("SELECT run, stream, key FROM run_keys FINAL ORDER BY run, key")
    assert rows_of(keys) == [
        (run, "default", key) for run in ("ent/proj/r1", "ent/proj/r2") for key in ("acc", "loss")
    ]

    # Run fields: last write wins, first write wins for `~created_at`, a heartbeat.
    fields = await store.query_arrow(
        "SELECT run_id, field, argMax(value, ver) AS value FROM run_fields GROUP BY run_id, field"
    )
    got = {(r["run_id"], r["field"]): orjson.loads(r["value"]) for r in fields.to_pylist()}
    assert got[("r1", "config")] == {"lr": 0.1}
    assert got[("r1", "state")] == "running"
    assert got[("r2", "config")] == {"lr": 0.2}
    assert got[("r1", "~created_at")] == "created in batch 0"  # not batch 1's
    assert {run for run, field in got if field == "heartbeat_at"} == {"r1", "r2"}
    await store.close()


async def test_a_batch_the_ledger_holds_is_not_given_to_handlers_again(
    nc: NatsClient, chdb: ChdbStore
) -> None:
    seen = Seen(chdb)
    b1 = batch("r1", 0, range(0, 5))
    b2 = batch("r1", 1, range(5, 8))

    # 1. JetStream redelivers b1 (nak after the ledger was written): skipped.
    faulty = LedgerThenFail(chdb)
    async with Running(nc, faulty, seen) as w:
        await publish(nc, b1)
        await until(lambda: w.stats.batches_applied + w.stats.batches_skipped == 1, "b1 redone")
        assert seen.written == [ident(b1)]
        assert faulty.failed and w.stats.write_errors == 1
        assert (w.stats.batches_applied, w.stats.batches_skipped, w.stats.messages) == (0, 1, 2)

    # 2. A writer re-sends b1 past the duplicate window, in one fetch with a new b2:
    #    JetStream takes it as new, the ledger stops it, b2 alone reaches the handlers.
    await publish(nc, b1, msg_id="re-sync of b1")
    await publish(nc, b2)
    store = AsyncStore(chdb)
    async with Running(nc, store, seen) as w:
        await until(lambda: w.stats.batches_applied + w.stats.batches_skipped == 2, "b1, b2")
        assert seen.written == [ident(b1), ident(b2)]
        assert (w.stats.batches_applied, w.stats.batches_skipped, w.stats.messages) == (1, 1, 2)
        assert w.stats.points == 6  # b2's two keys at 3 steps, nothing of b1
    rows = await store.query_arrow(f"SELECT seq, count() FROM {SEEN} GROUP BY seq ORDER BY seq")
    assert rows_of(rows) == [(0, 1), (1, 1)]
    points = await store.query_arrow("SELECT count() AS n FROM points FINAL")
    assert points.column("n").to_pylist() == [16]
    await store.close()


def test_a_registry_with_a_clash_or_an_unknown_part_is_refused() -> None:
    class Named:
        def __init__(self, name: str, parts: frozenset[str] = frozenset({"metrics"})) -> None:
            self.name, self.parts = name, parts

        def prepare(self, batches: Sequence[Batch]) -> None:
            return None

        async def write(self, store: AsyncStore, prepared: None) -> int:
            return 0

    check_registry([*default_handlers(), Named("alerts")])
    with pytest.raises(ValueError, match="unique"):
        check_registry([*default_handlers(), Named("metrics")])
    with pytest.raises(ValueError, match="metric"):
        check_registry([Named("events", frozenset({"metric"}))])


def test_default_handlers_are_fresh_per_call() -> None:
    """Handlers keep per-worker state (known keys): two workers must not share it."""
    first, second = default_handlers(), default_handlers()
    assert [h.name for h in first] == ["metrics", "events", "folders", "run_fields"]
    assert all(a is not b for a, b in zip(first, second, strict=True))


def test_ingest_exports_what_we_mean() -> None:
    import stride.ingest as ingest

    assert set(ingest.__all__) == {
        "Handler", "IngestSettings", "IngestStats", "IngestWorker", "default_handlers",
    }  # fmt: skip
    assert all(hasattr(ingest, name) for name in ingest.__all__)


async def test_lag_counts_what_waits_and_how_old_it_is(nc: NatsClient, chdb: ChdbStore) -> None:
    """Batches published while no worker reads wait in the stream: the lag says how
    many and how old the oldest is; once a worker has ingested them, nothing waits."""
    store = AsyncStore(chdb)
    worker = IngestWorker(nc, store, SETTINGS)
    task = asyncio.create_task(worker.run())
    await until(lambda: worker.subscribed, "the worker subscribed")
    worker.stop()
    await asyncio.wait_for(task, 30)  # the durable consumer stays; nobody reads it now
    for seq in range(3):
        await publish(nc, batch("lagging", seq, range(seq * 10, seq * 10 + 10)))
    await asyncio.sleep(0.3)
    lag = await worker.lag()
    assert lag["pending"] == 3 and lag["ack_pending"] == 0
    assert lag["oldest_s"] is not None and 0.3 <= lag["oldest_s"] < 30
    async with Running(nc, store, Seen(chdb)) as again:
        await until(lambda: again.stats.batches_applied == 3, "the 3 waiting batches applied")
        await asyncio.sleep(0.2)  # the acks reach the server
        assert await again.lag() == {"pending": 0, "ack_pending": 0, "oldest_s": None}


def test_fetches_shrink_for_large_batches_and_grow_for_small_ones() -> None:
    """A fetch aims at ``fetch_bytes``: that bounds ingest's memory whatever the batch size."""
    from types import SimpleNamespace

    from stride.ingest.worker import _FetchSize

    size = _FetchSize(most=128, target_bytes=8 << 20)
    assert size.next() == 1  # nothing seen yet
    size.saw([SimpleNamespace(data=b"x" * (1 << 20))] * 4)  # type: ignore[list-item]
    assert size.next() == 8  # 1 MiB batches: 8 to a fetch
    for _ in range(30):
        size.saw([SimpleNamespace(data=b"x" * 3000)] * 8)  # type: ignore[list-item]
    assert size.next() == 128  # tiny batches: as many as allowed


async def test_a_fetch_larger_than_fetch_bytes_is_split_and_the_rest_kept_alive() -> None:
    """nats-py's fetch hands over every message that came late for an earlier one, so
    a fetch can hold several times ``fetch_bytes``: the excess waits for the next
    job (kept alive meanwhile, so JetStream does not hand it out again)."""
    from types import SimpleNamespace

    from stride.ingest.worker import _Carry

    alive: list[list[Any]] = []
    stopped = asyncio.Event()

    async def keep_alive(msgs: list[Any]) -> None:
        alive.append(msgs)
        try:
            await asyncio.Event().wait()
        finally:
            stopped.set()

    def msg(size: int) -> Any:
        return SimpleNamespace(data=b"x" * size)

    carry = _Carry(keep_alive)
    fetched = [msg(10) for _ in range(5)]
    assert carry.keep_past(fetched, limit=25) == fetched[:2]
    await asyncio.sleep(0)
    assert alive == [fetched[2:]]  # the kept ones are kept alive...
    assert carry.take() == fetched[2:]
    await asyncio.wait_for(stopped.wait(), 1.0)  # ...until taken (their job takes over)
    assert carry.take() == []
    big = [msg(100), msg(10)]
    assert carry.keep_past(big, limit=25) == big[:1]  # one message, however large
    assert carry.take() == big[1:]
    small = [msg(10), msg(10)]
    assert carry.keep_past(small, limit=25) == small and carry.take() == []


async def test_a_fetch_beyond_fetch_bytes_is_written_in_parts_and_a_stop_loses_nothing(
    nc: NatsClient, chdb: ChdbStore
) -> None:
    """After a small batch the worker asks for many at once; large ones then come
    back as one fetch far over ``fetch_bytes``: it is written a part at a time (at
    most two of these batches to a write). Stopped in the middle, the worker hands
    back what it kept for later (and any message JetStream sent for a fetch that
    had already returned): a worker started next takes it at once, not after
    ``ack_wait`` (60 s), and every batch is stored once."""
    settings = dataclasses.replace(SETTINGS, fetch_bytes=4096)
    seen = Seen(chdb)
    store = AsyncStore(chdb)
    small = batch("small", 0, range(1))
    large = [batch("large", seq, range(seq * 200, seq * 200 + 200)) for seq in range(40)]
    assert len(encode_batch(large[0])) > 4096 // 2  # at most two to a part
    for b in [small, *large]:  # all waiting before the worker starts
        await publish(nc, b)
    first = IngestWorker(nc, store, settings, handlers=[*default_handlers(), seen])
    task = asyncio.create_task(first.run())
    # Its first fetch is one message (the small one); sized by it, the next asks for ~10.
    await until(lambda: first.stats.batches_applied >= 3, "the first parts written")
    first.stop()
    await asyncio.wait_for(task, 30)
    applied = first.stats.batches_applied
    assert applied < 41  # stopped in the middle
    second = IngestWorker(nc, store, settings, handlers=[*default_handlers(), seen])
    task = asyncio.create_task(second.run())
    await until(lambda: second.stats.batches_applied == 41 - applied, "the rest applied")
    second.stop()
    await asyncio.wait_for(task, 30)
    assert sorted(seen.written) == sorted(ident(b) for b in [small, *large])
    assert seen.writes[0] == 1 and max(seen.writes) <= 2  # the small one, then parts


async def test_batches_that_trickle_in_are_written_together(
    nc: NatsClient, chdb: ChdbStore
) -> None:
    """A short fetch waits up to ``fetch_linger_s`` for more: 40 batches arriving over
    ~0.4 s become a few inserts, not one each (each insert costs a new part). The
    same trickle without the linger, just before, makes the comparison: how many
    inserts that takes depends on how fast this machine writes."""

    async def trickle(linger_s: float) -> int:
        """Inserts made for the 40 batches."""
        settings = dataclasses.replace(SETTINGS, fetch_linger_s=linger_s)
        worker = IngestWorker(nc, AsyncStore(chdb), settings)
        task = asyncio.create_task(worker.run())
        await until(lambda: worker.subscribed, "the worker subscribed")
        # A first write warms the engine up (its first insert is slow: code read back
        # in), so the trickle below meets a worker writing at its usual pace.
        await publish(nc, batch(f"warm-up-{linger_s}", 0, range(1)))
        await until(lambda: worker.stats.batches_applied == 1, "the warm-up batch applied")
        for seq in range(40):
            await publish(nc, batch(f"trickle-{linger_s}", seq, range(seq, seq + 1)))
            await asyncio.sleep(0.01)
        await until(lambda: worker.stats.batches_applied == 41, "all 40 batches applied")
        worker.stop()
        await asyncio.wait_for(task, 30)
        return worker.stats.writes - 1

    writes = {linger_s: await trickle(linger_s) for linger_s in (0.0, 0.25)}
    assert writes[0.25] <= 6, writes
    assert writes[0.0] >= 2 * writes[0.25], writes  # without it: many small inserts


async def test_memory_is_given_back_once_when_ingest_goes_idle_after_writing(
    nc: NatsClient, chdb: ChdbStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a burst the worker trims the C heap once (see ``ingest/_memory.py``): not
    on every empty fetch while idle, not while data flows, and again after the next
    burst. The trim is counted here, not observed in the process's memory, which
    other tests in this process also move."""
    import stride.ingest.worker as worker_module

    trims: list[int] = []
    worker = IngestWorker(nc, AsyncStore(chdb), SETTINGS)
    monkeypatch.setattr(
        worker_module, "release_freed_memory", lambda: trims.append(worker.stats.writes)
    )
    task = asyncio.create_task(worker.run())
    await until(lambda: worker.subscribed, "the worker subscribed")
    await asyncio.sleep(0.3)  # idle before any write: nothing to give back
    assert trims == []
    for burst in (1, 2):
        for seq in range(3):
            await publish(nc, batch(f"burst-{burst}", seq, range(seq * 5, seq * 5 + 5)))
        await until(
            lambda n=3 * burst: worker.stats.batches_applied == n,  # type: ignore[misc]
            f"burst {burst} applied",
        )
        await asyncio.sleep(0.5)  # ten empty fetches of 0.05 s
        assert len(trims) == burst, trims
        assert trims[-1] == worker.stats.writes  # after the burst's last write
    worker.stop()
    await asyncio.wait_for(task, 30)


def test_a_metric_block_without_rows_stores_nothing_and_breaks_nothing() -> None:
    """The wire allows a block with no rows; it must not fail the whole fetch."""
    empty = batch("empty", 0, range(0))
    assert build_points([empty]) is None
    built = build_points([empty, batch("full", 1, range(3))])
    assert built is not None and built.count == 6
    assert built.keys == {("ent/proj/full", "default", "loss"), ("ent/proj/full", "default", "acc")}


class Fussy:
    """Test-only handler: fails to prepare any fetch holding run ``poison`` (a bug
    in a handler, or a batch no handler can take)."""

    name = "fussy"
    parts = frozenset({"run_id"})

    def prepare(self, batches: Sequence[Batch]) -> None:
        if any(b.run_id == "poison" for b in batches):
            raise ValueError("cannot take run poison")

    async def write(self, store: AsyncStore, prepared: None) -> int:
        return 0


async def test_a_batch_that_cannot_be_prepared_is_dead_lettered_and_the_rest_applied(
    nc: NatsClient, chdb: ChdbStore
) -> None:
    store = AsyncStore(chdb)
    worker = IngestWorker(nc, store, SETTINGS, handlers=[*default_handlers(), Fussy()])
    # Published before the worker starts, so all three arrive in one fetch.
    for seq, run_id in enumerate(["good-a", "poison", "good-b"]):
        await publish(nc, batch(run_id, seq, range(seq * 10, seq * 10 + 10)))
    task = asyncio.create_task(worker.run())
    await until(lambda: worker.stats.batches_applied == 2, "the two good batches applied")
    assert worker.stats.dead_lettered == 1
    worker.stop()
    await asyncio.wait_for(task, 30)
    sub = await nc.jetstream().pull_subscribe(">", durable="fussy-dlq", stream=DLQ_STREAM)
    (dead,) = await sub.fetch(1, timeout=5)
    assert decode_batch(dead.data).run_id == "poison"
    assert "could not prepare" in (dead.headers or {}).get("Stride-Reason", "")
    runs = await store.query_arrow("SELECT DISTINCT run FROM points ORDER BY run")
    assert runs.column("run").to_pylist() == ["ent/proj/good-a", "ent/proj/good-b"]


class SlowPoints(AsyncStore):
    """The store seam: every points insert takes ``delay`` seconds (a slow server)."""

    def __init__(self, store: ChdbStore, delay: float) -> None:
        super().__init__(store)
        self.delay = delay

    async def insert_arrow(self, table: str, columns: tuple[str, ...], data: pa.Table) -> None:
        if table == "points":
            await asyncio.sleep(self.delay)
        await super().insert_arrow(table, columns, data)


async def test_a_write_slower_than_the_ack_wait_is_not_handed_to_another_worker(
    nc: NatsClient, chdb: ChdbStore
) -> None:
    """Held batches are kept alive (``in_progress``): with a 1 s ack wait and 2.5 s
    writes, a second worker must not get them meanwhile and apply them again."""
    settings = dataclasses.replace(SETTINGS, ack_wait_s=1.0)
    seen = Seen(chdb)
    slow = IngestWorker(nc, SlowPoints(chdb, 2.5), settings, handlers=[*default_handlers(), seen])
    slow_task = asyncio.create_task(slow.run())
    await until(lambda: slow.subscribed, "the slow worker subscribed")
    for seq in range(3):
        await publish(nc, batch("kept-alive", seq, range(seq * 10, seq * 10 + 10)))
    await until(lambda: slow.stats.messages == 3, "the slow worker holds all three")
    other_seen = Seen(chdb)
    async with Running(nc, AsyncStore(chdb), other_seen) as other:
        await until(lambda: slow.stats.batches_applied == 3, "the slow worker applied them")
        await asyncio.sleep(1.5)  # past another ack wait: nothing may come back
        assert other.stats.messages == 0
    slow.stop()
    await asyncio.wait_for(slow_task, 30)
    assert sorted(seen.written) == [("ent/proj/kept-alive", "w1", s) for s in range(3)]
    assert other_seen.written == []


class FirstLookMisses(AsyncStore):
    """The store seam: the first query returns no rows, as a ClickHouse replica
    behind on another worker's insert would (no such replica here to lag)."""

    def __init__(self, store: ChdbStore) -> None:
        super().__init__(store)
        self.missed = False

    async def query_arrow(self, sql: str, params: Any = None) -> pa.Table:
        found = await super().query_arrow(sql, params)
        if not self.missed:
            self.missed = True
            return found.slice(0, 0)
        return found


def several_writers_marks(chdb: ChdbStore) -> list[tuple[Any, ...]]:
    return rows_of(
        chdb.query_arrow(
            "SELECT entity, project, run_id FROM run_search WHERE key = {k:String} ORDER BY run_id",
            {"k": SEVERAL_WRITERS_KEY},
        )
    )


def state_of(run_id: str, writer: str, state: str | None) -> Batch:
    fields = {} if state is None else {"state": state}
    return msgspec.structs.replace(batch(run_id, 0, range(1), **fields), writer=writer)


async def test_a_run_is_marked_as_several_writers_by_whichever_worker_sees_the_second(
    chdb: ChdbStore,
) -> None:
    """Two workers each store one writer's states: the one that stores the second
    writer's marks the run (search folds per-writer rows only for marked runs);
    a run one writer sets states for again and again is never marked."""
    store = AsyncStore(chdb)
    first, second = RunFieldsHandler(), RunFieldsHandler()
    await first.write(store, first.prepare([state_of("alone", "w1", "running")]))
    await first.write(store, first.prepare([state_of("alone", "w1", "finished")]))
    await first.write(store, first.prepare([state_of("ranks", "w1", "running")]))
    await second.write(store, second.prepare([state_of("ranks", "w2", None)]))  # no state yet
    assert several_writers_marks(chdb) == []
    await second.write(store, second.prepare([state_of("ranks", "w2", "running")]))
    assert several_writers_marks(chdb) == [("ent", "proj", "ranks")]


async def test_a_look_that_missed_the_other_writer_is_made_good_at_the_next_state(
    chdb: ChdbStore,
) -> None:
    store = AsyncStore(chdb)
    first, second = RunFieldsHandler(), RunFieldsHandler()
    await first.write(store, first.prepare([state_of("ranks", "w1", "running")]))
    lagging = FirstLookMisses(chdb)
    await second.write(lagging, second.prepare([state_of("ranks", "w2", "running")]))
    assert lagging.missed and several_writers_marks(chdb) == []
    await first.write(store, first.prepare([state_of("ranks", "w1", "finished")]))
    assert several_writers_marks(chdb) == [("ent", "proj", "ranks")]


async def test_a_search_on_state_learns_of_a_second_writer_at_once_and_remembers_it(
    chdb: ChdbStore,
) -> None:
    """A search on ``state`` asks whether the project has runs with several writers
    (their state needs each writer's): a no is asked again at the next search, so
    a run that gains a second writer is found by its folded state at once; a yes
    is remembered (one query a search from then on)."""
    store = RecordingStore(chdb)
    handler = RunFieldsHandler()

    async def found(state: str) -> list[str]:
        ids, _ = await search_run_ids(
            store, "ent", "proj", filters={"state": state}, order="-created_at",
            per_page=10, after=None, lost_after_s=3600.0,
        )  # fmt: skip
        return ids

    for writer, state in [("w1", "running"), ("w1", "finished")]:
        await handler.write(store, handler.prepare([state_of("alone", writer, state)]))
    assert await found("finished") == ["alone"]
    # w1 still running; w2 wrote "finished" last: by the writers, the run is running.
    for writer, state in [("w1", "running"), ("w2", "running"), ("w2", "finished")]:
        await handler.write(store, handler.prepare([state_of("ranks", writer, state)]))
    assert await found("running") == ["ranks"]
    assert await found("finished") == ["alone"]
    store.queries.clear()
    assert await found("running") == ["ranks"]
    assert len(store.queries) == 1
