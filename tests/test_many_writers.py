"""Four processes (the ranks of one job) write into one run at once: what is stored is
the union of what they logged, by the rules the README states ("Many writers")."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import stride
from stride.wire import Batch

from .conftest import StrideUp, publish, wait_for, wait_rows

RANKS = 4
STEPS = 500

RANK = textwrap.dedent(
    """
    import os, pathlib, sys, time, stride
    rank = int(os.environ["RANK"])
    run = stride.init(project="ranks", id="job-1", config={"world": 4})
    for step in range(500):
        # Per-rank keys never collide; "shared" steps are split between the ranks.
        run.log({f"rank{rank}/loss": rank + step / 1000}, step=step)
        run.log({"shared": float(rank)}, step=rank * 500 + step)
    run.summary[f"rank{rank}_done"] = True
    run.logs.info(f"rank {rank} finished", rank=rank)
    if rank == 0:  # the last writer to end: waits for the test's word
        go = pathlib.Path(sys.argv[1])
        while not go.exists():
            time.sleep(0.05)
    assert run.finish().complete
    """
)


def test_four_ranks_store_the_union_of_what_they_logged(stack: StrideUp, tmp_path: Path) -> None:
    def start(rank: int) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-c", RANK, str(tmp_path / "go")],
            env={
                **os.environ,
                "RANK": str(rank),
                "STRIDE_SERVER": stack.nats_url,
                "STRIDE_SPOOL_DIR": str(tmp_path / f"spool-{rank}"),
            },
            stderr=subprocess.PIPE,
            text=True,
        )

    api = stride.Api(stack.http_url)

    def writer_states() -> list[str]:
        try:
            return sorted(api.run("default/ranks/job-1").writers.values())
        except stride.NotFoundError:
            return []

    # Rank 0 starts first, so the others' "finished" is the state written last.
    procs = [start(0)]
    try:
        wait_for(lambda: writer_states() == ["running"])
        procs += [start(rank) for rank in range(1, RANKS)]
        for proc in procs[1:]:
            _, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err

        keys = [f"rank{r}/loss" for r in range(RANKS)]
        rows = wait_rows(api, "default/ranks/job-1", STEPS, keys=keys)
        assert [r["_step"] for r in rows] == list(range(STEPS))
        for r in range(RANKS):
            assert [row[f"rank{r}/loss"] for row in rows] == [r + s / 1000 for s in range(STEPS)]
        shared = wait_rows(api, "default/ranks/job-1", RANKS * STEPS, keys=["shared"])
        assert [row["shared"] for row in shared] == [
            float(s // STEPS) for s in range(RANKS * STEPS)
        ]

        def done() -> dict[str, object]:
            return {k: v for k, v in api.run("default/ranks/job-1").summary.items() if "_done" in k}

        # Every writer's summary key merged, none lost.
        assert wait_for(lambda: done() if len(done()) == RANKS else None) == {
            f"rank{r}_done": True for r in range(RANKS)
        }
        run = api.run("default/ranks/job-1")
        assert run.config == {"world": 4}
        writers = {e.writer for e in run.events()}
        assert len(writers) == RANKS and all(f"-r{r}-" in " ".join(writers) for r in range(RANKS))
        assert sorted(e.metadata["rank"] for e in run.events()) == list(range(RANKS))

        # Three ranks have finished, rank 0 still runs: so does the run, for a reader and
        # for a search (the state is derived in Python for one, in SQL for the other).
        assert wait_for(lambda: writer_states() == ["finished"] * 3 + ["running"])
        assert api.run("default/ranks/job-1").state == "running"
        assert [r.id for r in api.runs("default/ranks", filters={"state": "running"})] == ["job-1"]
        assert not list(api.runs("default/ranks", filters={"state": "finished"}))

        (tmp_path / "go").touch()
        _, err = procs[0].communicate(timeout=120)
        assert procs[0].returncode == 0, err
        assert wait_for(lambda: api.run("default/ranks/job-1").state == "finished")
        assert writer_states() == ["finished"] * RANKS
        assert [r.id for r in api.runs("default/ranks", filters={"state": "finished"})] == ["job-1"]
    finally:
        for proc in procs:
            proc.kill()
            proc.communicate()


def _beat(run: str, writer: str, seq: int, ago_s: float, **fields: str) -> Batch:
    """A batch of ``writer`` sealed ``ago_s`` seconds ago, setting ``fields`` (JSON)."""
    created = {"created_at": '"2026-01-01T00:00:00+00:00"'} if seq == 0 else {}
    return Batch(
        v=1, entity="default", project="writers", run_id=run, writer=writer, seq=seq,
        ver=time.time_ns() - round(ago_s * 1e9), set=fields, set_once=created,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("batches", "state"),
    [
        pytest.param(  # a node lost an hour ago, the job resumed on another and finished
            [("lost", 0, 3600, "running"), ("resumed", 0, 20, "running"),
             ("resumed", 1, 10, "finished")],
            "finished", id="resumed-after-a-lost-node",
        ),
        pytest.param(  # rank 0 finished; rank 1 kept going, then went silent
            [("rank0", 0, 3600, "running"), ("rank1", 0, 3500, "running"),
             ("rank0", 1, 3000, "finished"), ("rank1", 1, 2000, None)],
            "crashed", id="the-last-writer-died-unseen",
        ),
        pytest.param(  # one writer lost, another still sending
            [("lost", 0, 3600, "running"), ("alive", 0, 5, "running")],
            "running", id="one-writer-alive",
        ),
    ],
)  # fmt: skip
def test_the_state_follows_the_writers_that_are_alive(
    stack: StrideUp, batches: list[tuple[str, int, float, str | None]], state: str
) -> None:
    """Writers are alive while they send batches (within ``--lost-after``): the run is
    running while one that said so is; once none is, the writer that sent last
    decides (``crashed`` if it died saying ``running``). Reader and search agree."""
    run = f"w-{state}"
    publish(
        stack,
        [
            _beat(run, writer, seq, ago, **({"state": f'"{says}"'} if says else {}))
            for writer, seq, ago, says in batches
        ],
    )
    api = stride.Api(stack.http_url)
    expected = {w: s for w, _, _, s in batches if s}
    doc = wait_for(lambda: (d := state_doc(api, run)) and d.writers == expected and d)
    assert doc.state == state
    found = [r.id for r in api.runs("default/writers", filters={"state": state})]
    assert run in found
    if state == "running":
        assert doc.finished_at is None and doc.exit_code is None


def state_doc(api: stride.Api, run: str) -> stride.ApiRun | None:
    try:
        return api.run(f"default/writers/{run}")
    except stride.NotFoundError:
        return None
