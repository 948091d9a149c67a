"""Four processes (the ranks of one job) write into one run at once: what is stored is
the union of what they logged, by the rules the README states ("Many writers")."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import stride

from .conftest import StrideUp, wait_for, wait_rows

RANKS = 4
STEPS = 500

RANK = textwrap.dedent(
    """
    import os, stride
    rank = int(os.environ["RANK"])
    run = stride.init(project="ranks", id="job-1", config={"world": 4})
    for step in range(500):
        # Per-rank keys never collide; "shared" steps are split between the ranks.
        run.log({f"rank{rank}/loss": rank + step / 1000}, step=step)
        run.log({"shared": float(rank)}, step=rank * 500 + step)
    run.summary[f"rank{rank}_done"] = True
    run.logs.info(f"rank {rank} finished", rank=rank)
    assert run.finish().complete
    """
)


def test_four_ranks_store_the_union_of_what_they_logged(stack: StrideUp, tmp_path: Path) -> None:
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", RANK],
            env={
                **os.environ,
                "RANK": str(rank),
                "STRIDE_SERVER": stack.nats_url,
                "STRIDE_SPOOL_DIR": str(tmp_path / f"spool-{rank}"),
            },
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in range(RANKS)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err

    api = stride.Api(stack.http_url)
    keys = [f"rank{r}/loss" for r in range(RANKS)]
    rows = wait_rows(api, "default/ranks/job-1", STEPS, keys=keys)
    assert [r["_step"] for r in rows] == list(range(STEPS))
    for r in range(RANKS):
        assert [row[f"rank{r}/loss"] for row in rows] == [r + s / 1000 for s in range(STEPS)]
    shared = wait_rows(api, "default/ranks/job-1", RANKS * STEPS, keys=["shared"])
    assert [row["shared"] for row in shared] == [float(s // STEPS) for s in range(RANKS * STEPS)]

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
