"""Folders (Simvue's ``set_folder_details``): details set from runs, last write wins
per detail; folders listed with their runs."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

import stride
from stride import UsageError
from stride.ingest._tables import build_fields, build_folder_fields
from stride.wire import Batch

from .conftest import StrideUp, wait_for


def test_folders_are_listed_with_their_details_and_runs(stack: StrideUp, tmp_path: Path) -> None:
    settings = stack.settings(tmp_path)
    ids = []
    for folder in ("/exp/a", "/exp/a", "/exp/b"):
        with stride.init(project="folders", folder=folder, settings=settings) as run:
            run.log({"x": 1.0})
            ids.append(run.id)
    with stride.init(project="folders", folder="/exp/a", settings=settings) as run:
        run.set_folder_details(
            "/exp/a", metadata={"dataset": "imagenet", "epochs": 90}, tags=["sweep"],
            description="first sweep",
        )  # fmt: skip
        run.set_folder_details("/empty", description="nothing here yet")
        ids.append(run.id)
    with stride.init(project="folders", settings=settings) as other:  # in no folder
        # Only the description changes: metadata and tags stay.
        other.set_folder_details("/exp/a", description="the first sweep, redone")
    api = stride.Api(stack.http_url)

    def listed() -> list[stride.ApiFolder] | None:
        folders = api.folders("folders")
        done = [f.path for f in folders] == ["/empty", "/exp/a", "/exp/b"]
        return folders if done and folders[1].description.endswith("redone") else None

    empty, a, b = wait_for(listed)
    assert (a.run_count, b.run_count, empty.run_count) == (3, 1, 0)
    assert a.metadata == {"dataset": "imagenet", "epochs": 90} and a.tags == ["sweep"]
    assert a.description == "the first sweep, redone"
    assert (b.description, b.tags, b.metadata) == (None, [], {})
    assert empty.description == "nothing here yet"
    assert sorted(r.id for r in a.runs()) == sorted([ids[0], ids[1], ids[3]])
    assert [r.id for r in b.runs()] == [ids[2]]
    assert [f.path for f in api.folders("folders", prefix="/exp/")] == ["/exp/a", "/exp/b"]


def test_folder_details_are_stored_for_the_folder_not_the_run() -> None:
    batch = Batch(
        v=1, entity="e", project="p", run_id="r", writer="w", seq=0, ver=7,
        set={
            "folder:description:/a:b": '"d"', "folder:tags:/x": '["t"]', "name": '"n"',
            "folder:colour:/x": '"red"', "folder:tags:": "[]",  # not a detail; no path
        },
    )  # fmt: skip
    assert build_fields([batch]).column("field").to_pylist() == ["name", "heartbeat_at"]
    folders = build_folder_fields([batch])
    assert folders is not None
    assert [(r["path"], r["field"], r["value"]) for r in folders.to_pylist()] == [
        ("/a:b", "description", '"d"'),  # a colon in the path is kept
        ("/x", "tags", '["t"]'),
    ]
    assert build_folder_fields([msgspec.structs.replace(batch, set={"name": '"n"'})]) is None


def test_folder_details_are_checked_when_set(tmp_path: Path) -> None:
    offline = stride.Settings(spool_dir=tmp_path)
    with stride.init(project="p", mode="offline", settings=offline) as run:
        for path, kw, message in [
            ("", {}, "a folder is a path"),
            ("/a\nb", {}, "control character"),
            ("/a", {"tags": "one"}, "tags must be a list of strings"),
            ("/a", {"tags": [1]}, "tags must be a list of strings"),
            ("/a", {"metadata": [("k", 1)]}, "metadata must be a mapping"),
            ("/a", {"metadata": {"k": object()}}, "cannot be stored as JSON"),
        ]:
            with pytest.raises(UsageError, match=message):
                run.set_folder_details(path, **kw)
    for folder in (["/x", "/y"], "", "/a\x00"):
        with pytest.raises(UsageError, match="folder"):
            stride.init(project="p", folder=folder, mode="offline", settings=offline)
