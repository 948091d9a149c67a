"""The write-ahead log on its own (no NATS): frames, segments, sealing and recovery."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import stride
from stride._reader import LogReader, Outgoing
from stride._wal import log_dirs, read_meta, segment_paths, try_lock_exclusive
from stride.wire import decode_batch

from .conftest import read_log


def _offline(tmp_path: Path, **settings: object) -> stride.Settings:
    return stride.Settings(spool_dir=tmp_path / "spool", **settings)  # type: ignore[arg-type]


def _steps(batches: list[stride.wire.Batch], key: str) -> list[int]:  # type: ignore[name-defined]
    steps: list[int] = []
    for batch in batches:
        for block in batch.metrics:
            if key in block.keys:
                steps += np.frombuffer(block.steps, "<i8").tolist()
    return steps


def test_rows_of_several_key_sets_and_runs_come_back_grouped_and_in_order(
    tmp_path: Path,
) -> None:
    settings = _offline(tmp_path)
    a = stride.init(project="p", id="a", mode="offline", settings=settings)
    b = stride.init(project="p", id="b", mode="offline", settings=settings)
    for i in range(3000):
        a.log({"loss": float(i), "acc": -float(i)})
        if i % 3 == 0:
            a.log({"lr": 0.1 * i}, step=i)  # another key set, same step
        b.log({"x": float(i)}, step=10 * i)
    a.finish()
    b.finish()
    [directory] = log_dirs(tmp_path / "spool")  # one log for the whole process
    batches = read_log(directory)
    by_run = {p: [x for x in batches if x.path == p] for p in ("default/p/a", "default/p/b")}
    assert _steps(by_run["default/p/a"], "loss") == list(range(3000))
    assert _steps(by_run["default/p/a"], "lr") == list(range(0, 3000, 3))
    assert _steps(by_run["default/p/b"], "x") == list(range(0, 30000, 10))
    block = by_run["default/p/a"][0].metrics[0]
    assert np.frombuffer(block.values[1], "<f8")[:3].tolist() == [-0.0, -1.0, -2.0]


def test_steps_survive_bit_for_bit_including_huge_and_negative(tmp_path: Path) -> None:
    steps = [-(2**63), -1, 0, 2**53 + 1, 2**63 - 1]
    with stride.init(project="p", mode="offline", settings=_offline(tmp_path)) as run:
        for s in steps:
            run.log({"a": 1.0}, step=s)
    assert _steps(read_log(log_dirs(tmp_path / "spool")[0]), "a") == steps


def test_rows_span_segments_and_batches_respect_the_byte_limit(tmp_path: Path) -> None:
    settings = _offline(tmp_path, segment_bytes=64 * 1024)
    with stride.init(project="p", mode="offline", settings=settings) as run:
        for i in range(20_000):
            run.log({f"k{j}": float(i * 10 + j) for j in range(10)})
    [directory] = log_dirs(tmp_path / "spool")
    assert len(segment_paths(directory)) > 30  # 112 bytes a row: about 35 segments
    batches = read_log(directory, max_batch_bytes=100_000)
    for batch in batches:
        assert sum(len(b.steps) * 3 + sum(map(len, b.values)) for b in batch.metrics) <= 100_000
    assert _steps(batches, "k3") == list(range(20_000))
    values = np.concatenate(
        [np.frombuffer(b.values[3], "<f8") for batch in batches for b in batch.metrics]
    )
    assert values.tolist() == [i * 10.0 + 3 for i in range(20_000)]


def test_a_recovered_log_republishes_sealed_batches_with_the_same_identity(
    tmp_path: Path,
) -> None:
    """Delivery sealed (and maybe published) some batches, then died: whoever recovers
    the log must send those exact batches again (same seq, ver and content), and carry
    on with new seqs after them, or a batch could be applied twice or skipped."""
    settings = _offline(tmp_path)
    with stride.init(project="p", id="r", mode="offline", settings=settings) as run:
        for i in range(5000):
            run.log({"a": float(i)})
    [directory] = log_dirs(tmp_path / "spool")

    def reader() -> LogReader:
        meta, lock = read_meta(directory), try_lock_exclusive(directory)
        assert meta is not None and lock is not None
        return LogReader(directory, meta, lock, writer_alive=False)

    first = reader()
    sealed: list[Outgoing] = []
    first.read(0.0, 30_000, 3, sealed)  # room for a few batches only, then "crash"
    assert 3 <= len(sealed) < 10
    first.close()

    second = reader()
    again: list[Outgoing] = []
    second.read(0.0, 30_000, 1 << 20, again)
    again += [second.seal(slot) for slot in second.due(0.0, 0.05, 4096, 15.0)]
    second.close()
    assert [o.payload for o in again[: len(sealed)]] == [o.payload for o in sealed]  # bytewise
    seqs = [decode_batch(o.payload).seq for o in again]
    assert seqs == list(range(len(seqs)))
    assert _steps([decode_batch(o.payload) for o in again], "a") == list(range(5000))


def test_a_log_in_use_cannot_be_taken_over(tmp_path: Path) -> None:
    run = stride.init(project="p", mode="offline", settings=_offline(tmp_path))
    [directory] = log_dirs(tmp_path / "spool")
    assert try_lock_exclusive(directory) is None  # its writer holds it
    run.finish()
    lock = try_lock_exclusive(directory)
    assert lock is not None
    lock.close()


def test_after_fork_the_child_cannot_write_into_the_parents_log(tmp_path: Path) -> None:
    import os

    run = stride.init(project="p", mode="offline", settings=_offline(tmp_path))
    run.log({"a": 1.0})
    pid = os.fork()
    if pid == 0:  # the child
        try:
            run.log({"a": 2.0})
        except stride.UsageError as exc:
            os._exit(0 if "fork" in str(exc) else 2)
        os._exit(1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    run.log({"a": 3.0})  # the parent is unharmed
    run.finish()
    assert _steps(read_log(log_dirs(tmp_path / "spool")[0]), "a") == [0, 1]


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -0.0, 1e308])
def test_values_survive_bit_for_bit(tmp_path: Path, value: float) -> None:
    with stride.init(project="p", mode="offline", settings=_offline(tmp_path)) as run:
        run.log({"v": value})
    [batch] = [b for b in read_log(log_dirs(tmp_path / "spool")[0]) if b.metrics]
    assert batch.metrics[0].values[0] == np.float64(value).tobytes()


def test_a_run_finished_before_a_crash_is_not_marked_crashed_by_the_recovery(
    tmp_path: Path,
) -> None:
    """Run a finishes, run b goes on; the segments holding a's end are delivered and
    deleted; then everything dies. The recovery marks b crashed, never a."""
    settings = _offline(tmp_path, segment_bytes=64 * 1024)
    a = stride.init(project="p", id="a", mode="offline", settings=settings)
    b = stride.init(project="p", id="b", mode="offline", settings=settings)
    a.log({"x": 1.0})
    a.finish()
    for i in range(5000):  # about 4 segments after a's end
        b.log({"x": float(i)})
    [directory] = log_dirs(tmp_path / "spool")
    b._transport.close()  # type: ignore[union-attr]  # the writer dies: b is never finished

    def reader() -> LogReader:
        meta, lock = read_meta(directory), try_lock_exclusive(directory)
        assert meta is not None and lock is not None
        return LogReader(directory, meta, lock, writer_alive=False)

    first = reader()
    sent: list[Outgoing] = []
    first.read(0.0, 30_000, 1 << 20, sent)
    sent += [first.seal(slot) for slot in first.due(0.0, 0.05, 4096, 15.0)]
    for item in sent[:-1]:  # all but the last batch is acknowledged, then trimmed
        first.acked(item)
    first.trim_delivered()
    assert segment_paths(directory)[0][0] > 0  # a's segment is gone
    first.close()  # and the delivering agent dies

    second = reader()
    rest: list[Outgoing] = []
    second.read(0.0, 30_000, 1 << 20, rest)
    rest += [second.seal(slot) for slot in second.due(0.0, 0.05, 4096, 15.0)]
    second.end_orphans(rest)
    second.close()
    states = {(b.run_id, b.set["state"]) for b in map(decode_batch, (o.payload for o in rest))
              if "state" in b.set}  # fmt: skip
    assert ("b", '"crashed"') in states
    assert not [s for s in states if s[0] == "a"]
