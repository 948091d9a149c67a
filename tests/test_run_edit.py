"""Editing and deleting stored runs: ``ApiRun.update()`` and ``ApiRun.delete()``."""

from __future__ import annotations

import asyncio
import http.client
import json
import urllib.parse
from pathlib import Path
from typing import Any

import nats
import pytest

import stride
from stride import BadRequestError, NotFoundError
from stride.wire import INGEST_SUBJECT, WIRE_VERSION, Batch, encode_batch

from .conftest import StrideUp, scan, wait_for, wait_rows

PROJECT = "edits"


def _log(stack: StrideUp, spool: Path, run_id: str, steps: int = 100, **init: Any) -> str:
    with stride.init(project=PROJECT, id=run_id, settings=stack.settings(spool), **init) as run:
        for step in range(steps):
            run.log({"loss": 10.0 - step / 10})
        run.summary["best"] = 0.5
    api = stride.Api(stack.http_url)
    wait_rows(api, run.path, steps)
    wait_for(lambda: "loss" in api.run(run.path).summary)
    return run.path


def _ids(api: stride.Api, spec: dict[str, Any]) -> list[str]:
    return sorted(r.id for r in api.runs(PROJECT, spec))


def test_update_persists_name_notes_tags_config_and_summary(
    stack: StrideUp, tmp_path: Path
) -> None:
    path = _log(stack, tmp_path, "edited", name="first", tags=["a"],
                config={"lr": 0.1, "old": 1, "model": {"depth": 18}})  # fmt: skip
    api = stride.Api(stack.http_url)
    run = api.run(path)
    assert run.read_only is False  # no tokens: anyone who reaches the service may edit
    assert run.user and _ids(api, {"user": run.user, "id": "edited"}) == ["edited"]
    run.name = "second"
    run.notes = "looked at it"
    run.tags.append("best")
    run.config["model"]["depth"] = 50
    del run.config["old"]
    run.summary["verdict"] = "keep"
    run.summary["loss"] = -1.0  # set by the user now: wins over the metric's last value
    assert run.update() is run
    assert (run.name, run.notes, run.tags) == ("second", "looked at it", ["a", "best"])
    again = api.run(path)
    assert again.config == {"lr": 0.1, "model": {"depth": 50}}
    assert again.summary["verdict"] == "keep" and again.summary["loss"] == -1.0
    assert again.summary["best"] == 0.5  # keys not changed stay
    assert again.summary["_min"]["loss"] == pytest.approx(0.1)  # the metric's, untouched
    # Search sees the new values, and not the old ones.
    assert _ids(api, {"name": "second", "tags": "best", "config.model.depth": 50}) == ["edited"]
    assert _ids(api, {"config.old": {"$exists": True}}) == []
    assert _ids(api, {"name": "first"}) == []
    assert _ids(api, {"summary.loss": {"$lt": 0}}) == ["edited"]
    assert _ids(api, {"summary.verdict": "keep"}) == ["edited"]


def test_an_update_with_nothing_changed_sends_nothing_and_keeps_the_run(
    stack: StrideUp, tmp_path: Path
) -> None:
    path = _log(stack, tmp_path, "untouched", name="same")
    api = stride.Api(stack.http_url)
    run = api.run(path)
    before = api.get(f"/api/v1/runs/{path}")
    run.update()
    assert api.get(f"/api/v1/runs/{path}") == before


def _send(stack: StrideUp, method: str, path: str, body: bytes | None = None) -> tuple[int, Any]:
    parsed = urllib.parse.urlsplit(stack.http_url)
    conn = http.client.HTTPConnection(parsed.hostname or "", parsed.port)
    conn.request(method, path, body)
    answer = conn.getresponse()
    status, data = answer.status, json.loads(answer.read())
    conn.close()
    return status, data


def test_bad_updates_are_refused_with_a_reason(stack: StrideUp, tmp_path: Path) -> None:
    path = _log(stack, tmp_path, "guarded")
    api = stride.Api(stack.http_url)
    run = api.run(path)
    run.summary["_min"] = {"loss": -100.0}
    with pytest.raises(BadRequestError, match="_min, _max and _step are the service's"):
        run.update()
    url = f"/api/v1/runs/{path}"
    for body, message in [
        (b'{"colour": "red"}', "must be a JSON run update"),
        (b'{"tags": "not-a-list"}', "must be a JSON run update"),
        (b"{}", "nothing to update"),
        (json.dumps({"notes": "x" * 300_000}).encode(), "the limit is 256 KiB"),
    ]:
        status, answer = _send(stack, "PATCH", url, body)
        assert (status, message in answer["error"]) == (400, True), answer
    status, answer = _send(
        stack, "PATCH", f"/api/v1/runs/default/{PROJECT}/nobody", b'{"name": "x"}'
    )
    assert status == 404 and "not found" in answer["error"]
    assert api.run(path).summary["_min"]["loss"] == pytest.approx(0.1)


def test_delete_removes_the_run_and_only_it(stack: StrideUp, tmp_path: Path) -> None:
    gone = _log(stack, tmp_path / "a", "doomed", steps=300)
    kept = _log(stack, tmp_path / "b", "survivor", steps=200)
    api = stride.Api(stack.http_url)
    api.run(gone).delete()
    with pytest.raises(NotFoundError):
        api.run(gone)
    with pytest.raises(NotFoundError):
        api.run(gone).history()
    assert "doomed" not in _ids(api, {})
    # Its search rows went too: no page comes back short for a run that is gone.
    after, pages = None, []
    while True:
        page = api.get(f"/api/v1/runs/default/{PROJECT}", [("per_page", 1), ("after", after)])
        pages.append([r["id"] for r in page["runs"]])
        if (after := page["next"]) is None:
            break
    assert all(len(p) == 1 for p in pages[:-1]) and ["doomed"] not in pages
    assert _ids(api, {"summary.best": 0.5, "id": {"$in": ["doomed", "survivor"]}}) == ["survivor"]
    assert [r["_step"] for r in scan(api, kept, ["loss"])] == list(range(200))
    assert api.run(kept).stats()["loss"]["count"] == 200
    status, answer = _send(stack, "DELETE", f"/api/v1/runs/{gone}")
    assert status == 404 and "not found" in answer["error"]


def test_a_deleted_run_is_not_brought_back_by_a_late_resend(
    stack: StrideUp, tmp_path: Path
) -> None:
    """The ledger keeps a deleted run's batches: a spool synced later, whose batches
    were applied before the delete, is skipped rather than stored again."""
    batch = Batch(
        v=WIRE_VERSION, entity="default", project=PROJECT, run_id="resent", writer="w", seq=0,
        ver=1_790_000_000_000_000_000, set={"state": '"finished"'},
        set_once={"created_at": '"2026-09-21T00:00:00+00:00"'},
    )  # fmt: skip

    async def send(msg_id: str) -> None:
        nc = await nats.connect(stack.nats_url)
        await nc.jetstream().publish(
            INGEST_SUBJECT, encode_batch(batch), headers={"Nats-Msg-Id": msg_id}
        )
        await nc.close()

    api = stride.Api(stack.http_url)
    asyncio.run(send("first"))
    wait_for(lambda: _ids(api, {"id": "resent"}) == ["resent"])
    api.run(batch.path).delete()
    asyncio.run(send("again, past JetStream's duplicate window"))
    marker = _log(stack, tmp_path, "after-resend", steps=1)  # ingested after the resend
    assert api.run(marker).state == "finished"
    assert _ids(api, {"id": "resent"}) == []
    with pytest.raises(NotFoundError):
        api.run(batch.path)


def test_user_is_who_started_the_run(
    stack: StrideUp, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STRIDE_USER", "ada")
    path = _log(stack, tmp_path, "by-ada", steps=1)
    monkeypatch.setenv("STRIDE_USER", "bob")  # joins later: the run stays Ada's
    with stride.init(project=PROJECT, id="by-ada", settings=stack.settings(tmp_path)) as run:
        run.log({"loss": 0.0}, step=1)
    api = stride.Api(stack.http_url)
    wait_rows(api, path, 2)
    assert api.run(path).user == "ada"
    assert _ids(api, {"user": "ada"}) == ["by-ada"]
