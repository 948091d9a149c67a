"""The columnar buffer and its cut into blocks: grouping, order and size bounds."""

from __future__ import annotations

import numpy as np

from stride._buffer import MetricBuffer, record_format, to_blocks


def _buffer(rows: list[tuple[int, dict[str, float]]]) -> MetricBuffer:
    buffer = MetricBuffer(max_rows=10**9)
    for step, data in rows:
        record = record_format(len(data)).pack(step, step * 0.5, 1e9 + step, *data.values())
        buffer.append(tuple(data), record)
    return buffer


def test_rows_with_the_same_keys_share_one_block_in_order() -> None:
    rows = [(i, {"loss": i * 1.0, "acc": -i * 1.0}) for i in range(10)]
    rows.insert(5, (100, {"lr": 0.1}))
    [blocks] = list(to_blocks(_buffer(rows).take(), "default", 1 << 20))
    assert [b.keys for b in blocks] == [["loss", "acc"], ["lr"]]
    loss = blocks[0]
    assert np.frombuffer(loss.steps, "<i8").tolist() == list(range(10))
    assert np.frombuffer(loss.values[0], "<f8").tolist() == [i * 1.0 for i in range(10)]
    assert np.frombuffer(loss.values[1], "<f8").tolist() == [-i * 1.0 for i in range(10)]
    assert np.frombuffer(loss.times, "<f8").tolist() == [i * 0.5 for i in range(10)]
    assert np.frombuffer(blocks[1].steps, "<i8").tolist() == [100]


def test_steps_survive_bit_for_bit_including_huge_and_negative() -> None:
    steps = [-(2**63), -1, 0, 2**53 + 1, 2**63 - 1]
    [blocks] = list(to_blocks(_buffer([(s, {"a": 1.0}) for s in steps]).take(), "default", 1 << 20))
    assert np.frombuffer(blocks[0].steps, "<i8").tolist() == steps


def test_batches_respect_the_byte_limit_and_lose_nothing() -> None:
    rows = [(i, {f"k{j}": float(i * 10 + j) for j in range(10)}) for i in range(5000)]
    limit = 64 * 1024
    chunks = list(to_blocks(_buffer(rows).take(), "default", limit))
    assert len(chunks) > 1
    steps: list[int] = []
    for chunk in chunks:
        size = sum(len(b.steps) * 3 + sum(len(v) for v in b.values) for b in chunk)
        assert size <= limit
        for block in chunk:
            block_steps = np.frombuffer(block.steps, "<i8")
            assert np.frombuffer(block.values[3], "<f8").tolist() == (block_steps * 10 + 3).tolist()
            steps.extend(block_steps.tolist())
    assert steps == list(range(5000))


def test_buffer_take_empties_it_and_reports_its_size() -> None:
    buffer = MetricBuffer(max_rows=3)
    pack = record_format(1).pack
    assert buffer.append(("a",), pack(0, 0.0, 0.0, 1.0)) == 1
    assert buffer.append(("a",), pack(1, 0.0, 0.0, 1.0)) == 2
    assert buffer.append(("a",), pack(2, 0.0, 0.0, 1.0)) == 3
    assert not buffer.wait_for_room(0.01)  # full: waits, bounded, and says so
    groups = buffer.take()
    assert sum(map(len, groups[("a",)])) == 3 * record_format(1).size
    assert len(buffer) == 0
    assert buffer.wait_for_room(0.01)
