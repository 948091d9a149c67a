"""Rows to columnar blocks: grouping, order and size bounds."""

from __future__ import annotations

from array import array

import numpy as np

from sdk._buffer import MetricBuffer, Row, to_blocks


def _row(step: int, data: dict[str, float]) -> Row:
    return (step, step * 0.5, 1e9 + step, tuple(data), array("d", data.values()))


def test_rows_with_the_same_keys_share_one_block_in_order() -> None:
    rows = [_row(i, {"loss": i * 1.0, "acc": -i * 1.0}) for i in range(10)]
    rows.insert(5, _row(100, {"lr": 0.1}))
    [blocks] = list(to_blocks(rows, "default", 1 << 20))
    assert [b.keys for b in blocks] == [["loss", "acc"], ["lr"]]
    loss = blocks[0]
    assert np.frombuffer(loss.steps, "<i8").tolist() == list(range(10))
    assert np.frombuffer(loss.values[0], "<f8").tolist() == [i * 1.0 for i in range(10)]
    assert np.frombuffer(loss.values[1], "<f8").tolist() == [-i * 1.0 for i in range(10)]
    assert np.frombuffer(loss.times, "<f8").tolist() == [i * 0.5 for i in range(10)]


def test_batches_respect_the_byte_limit_and_lose_nothing() -> None:
    rows = [_row(i, {f"k{j}": float(i) for j in range(10)}) for i in range(5000)]
    limit = 64 * 1024
    chunks = list(to_blocks(rows, "default", limit))
    assert len(chunks) > 1
    steps = []
    for chunk in chunks:
        size = sum(len(b.steps) * 3 + sum(len(v) for v in b.values) for b in chunk)
        assert size <= limit
        for block in chunk:
            steps.extend(np.frombuffer(block.steps, "<i8").tolist())
    assert steps == list(range(5000))


def test_buffer_take_empties_it_and_reports_its_size() -> None:
    buffer = MetricBuffer(max_rows=3)
    assert buffer.append(_row(0, {"a": 1.0})) == 1
    assert buffer.append(_row(1, {"a": 1.0})) == 2
    assert [r[0] for r in buffer.take()] == [0, 1]
    assert len(buffer) == 0
    assert buffer.wait_for_room(0.01)
