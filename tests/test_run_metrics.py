"""What the service says about a run's metrics and projects beyond the points:
stats, the summary's metric values, projects, waiting for a run to end.

The checks against a long logged run are in ``test_query.py`` (its ``logged``
fixture); these log small runs of their own into the shared ``stack``.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

import stride
from stride import BadRequestError

from .conftest import StrideUp, state_of, wait_for, wait_rows


def test_stats_count_every_logged_value_and_end_at_the_newest(stack: StrideUp, spool: Path) -> None:
    """A step logged again, in a later batch, counts again (as ML-Dash counts what
    was logged); first and last are the newest values at the first and last step."""
    settings = stack.settings(spool)
    with stride.init(project="relog-stats", settings=settings) as run:
        for step in range(100):
            run.log({"v": 1.0}, step=step)
    with stride.init(project="relog-stats", id=run.id, settings=settings) as again:
        again.log({"v": 5.0}, step=0)  # replaces step 0...
        again.log({"v": -3.0}, step=99)  # ...and step 99
    api = stride.Api(stack.http_url)
    rows = wait_rows(api, run.path, 100)  # the stored points: one per step
    wait_for(lambda: api.run(run.path).stats()["v"]["count"] == 102)
    stats = api.run(run.path).stats()["v"]
    assert stats == {
        **{"count": 102, "first": 5.0, "last": -3.0, "min": -3.0, "max": 5.0},
        **{"mean": pytest.approx((100 + 5 - 3) / 102), "first_step": 0, "last_step": 99},
    }
    rows = wait_rows(api, run.path, 100)
    assert [r["v"] for r in (rows[0], rows[1], rows[99])] == [5.0, 1.0, -3.0]


def test_wait_until_finished_returns_once_the_run_ends_and_can_time_out(
    stack: StrideUp, spool: Path
) -> None:
    run = stride.init(project="waiting", settings=stack.settings(spool))
    run.log({"x": 1.0})
    api = stride.Api(stack.http_url)
    wait_for(lambda: state_of(api, run.path) == "running")
    remote = api.run(run.path)
    with pytest.raises(TimeoutError, match=r"still running after 0\.3 s"):
        remote.wait_until_finished(timeout=0.3, poll_s=0.1)
    finisher = threading.Timer(0.5, run.finish)
    finisher.start()
    t0 = time.monotonic()
    assert remote.wait_until_finished(timeout=30, poll_s=0.1) is remote
    assert remote.state == "finished" and time.monotonic() - t0 >= 0.4
    finisher.join()


def test_a_summary_value_the_user_set_wins_over_the_metrics_last(
    stack: StrideUp, spool: Path
) -> None:
    with stride.init(project="summary-wins", settings=stack.settings(spool)) as run:
        for step in range(50):
            run.log({"loss": 1.0 / (step + 1), "acc": step / 50})
        run.summary["loss"] = 0.001  # e.g. the best, kept by the user
    api = stride.Api(stack.http_url)
    wait_rows(api, run.path, 50)
    wait_for(lambda: api.run(run.path).summary.get("_step") == 49)
    summary = api.run(run.path).summary
    assert summary["loss"] == 0.001 and summary["acc"] == 49 / 50
    assert summary["_min"] == {"acc": 0.0, "loss": 1 / 50}
    assert summary["_max"] == {"acc": 49 / 50, "loss": 1.0}
    listed = next(r for r in api.runs("default/summary-wins") if r.path == run.path)
    assert listed.summary == summary  # the runs list carries the same


def test_projects_list_an_entitys_projects_with_run_counts_and_last_activity(
    stack: StrideUp, spool: Path
) -> None:
    settings = stack.settings(spool)
    for project, runs in (("beta", 1), ("alpha", 2)):
        for _ in range(runs):
            with stride.init(entity="team-p", project=project, settings=settings) as run:
                run.log({"x": 1.0})
    api = stride.Api(stack.http_url)
    wait_for(lambda: sum(p.run_count for p in api.projects("team-p")) == 3)
    projects = list(api.projects("team-p"))
    assert [(p.entity, p.name, p.run_count) for p in projects] == [
        ("team-p", "alpha", 2),
        ("team-p", "beta", 1),
    ]
    beats = [r.heartbeat_at for name in ("alpha", "beta") for r in api.runs(f"team-p/{name}")]
    assert projects[0].last_activity == max(beats[:2]) and projects[1].last_activity == beats[2]
    assert list(api.projects("team-p", per_page=1)) == projects  # page by page, same list
    assert list(api.projects("nobody-here")) == []
    with pytest.raises(BadRequestError, match="invalid entity"):
        list(api.projects("no/slash"))
