"""Artifacts end to end: logged from runs, versioned by content, aliases, lineage, downloads.

Against a real ``stride up`` (nats-server, chDB, a local object directory).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import stride
from stride.errors import NotFoundError, UsageError

from .conftest import StrideUp, wait_for, wait_run


def _artifact(name: str, files: dict[str, bytes], **kwargs: Any) -> stride.Artifact:
    art = stride.Artifact(name, type="dataset", **kwargs)
    for path, data in files.items():
        art.add_data(path, data)
    return art


def _wait_version(api: stride.Api, ref: str, version: str) -> stride.ApiArtifact:
    def found() -> stride.ApiArtifact | None:
        try:
            art = api.artifact(ref)
        except NotFoundError:
            return None
        return art if art.version == version else None

    art: stride.ApiArtifact = wait_for(found)
    return art


def test_versions_follow_content_and_aliases_move(stack: StrideUp, tmp_path: Path) -> None:
    x = {"train.csv": b"a,b\n1,2\n", "nested/labels.txt": b"cat\n"}
    y = {"train.csv": b"a,b\n3,4\n"}
    settings = stack.settings(tmp_path / "spool")
    api = stride.Api(stack.http_url)
    with stride.init(project="arts", id="maker", settings=settings) as run:
        run.log_artifact(_artifact("data", x, metadata={"rows": 1}), aliases=["best"])
    _wait_version(api, "arts/data:latest", "v0")
    with stride.init(project="arts", id="maker", settings=settings) as run:
        run.log_artifact(_artifact("data", y))
    _wait_version(api, "arts/data:latest", "v1")
    with stride.init(project="arts", id="maker", settings=settings) as run:
        # The same content as v0 (files added in another order): no new version.
        run.log_artifact(_artifact("data", dict(reversed(x.items()))), aliases=["prod"])
    _wait_version(api, "arts/data:latest", "v0")

    versions = api.artifact_versions("arts/data")
    assert [(v.version, v.file_count, v.versions) for v in versions] == [
        ("v0", 2, 2),
        ("v1", 1, 2),
    ]
    assert versions[0].aliases == ["best", "latest", "prod"]
    assert versions[1].aliases == []
    v0 = api.artifact("default/arts/data:prod")
    assert (v0.version, v0.metadata, v0.producer, v0.size) == (
        "v0",
        {"rows": 1},
        "default/arts/maker",
        len(x["train.csv"]) + len(x["nested/labels.txt"]),
    )
    assert [f.path for f in v0.files] == ["nested/labels.txt", "train.csv"]
    assert v0.read("train.csv") == x["train.csv"]
    root = v0.download(tmp_path / "out")
    assert (root / "nested" / "labels.txt").read_bytes() == x["nested/labels.txt"]
    assert api.artifact("arts/data:v1").read("train.csv") == y["train.csv"]

    with stride.init(project="arts", id="maker", settings=settings) as run:
        run.log_artifact(_artifact("data", y), aliases=["best"])  # "best" moves to v1
    wait_for(lambda: api.artifact("arts/data:best").version == "v1")
    assert api.artifact("arts/data:latest").version == "v1"
    assert api.artifact("arts/data:prod").version == "v0"

    with pytest.raises(NotFoundError, match="no version 'v7'"):
        api.artifact("arts/data:v7")
    with pytest.raises(NotFoundError, match="no artifact 'nothing'"):
        api.artifact("arts/nothing:latest")
    with pytest.raises(NotFoundError, match="no file"):
        v0.read("missing.csv")


def test_lineage_records_who_logged_and_who_used(stack: StrideUp, tmp_path: Path) -> None:
    settings = stack.settings(tmp_path / "spool")
    api = stride.Api(stack.http_url)
    with stride.init(project="lineage", id="consumer", settings=settings) as run:
        # Used before it exists: recorded once the version arrives.
        assert run.use_artifact("weights:best", use_as="init") == "weights:best"
    with stride.init(project="lineage", id="trainer", settings=settings) as run:
        art = stride.Artifact("weights", type="model")
        (tmp_path / "w.bin").write_bytes(b"\x00" * 1000)
        art.add_file(tmp_path / "w.bin")
        run.log_artifact(art, aliases=["best"])
        run.log_artifact(_artifact("notes", {"n.txt": b"n"}))
    assert run.finish().files_left == 0
    with stride.init(project="lineage", id="evaluator", settings=settings) as run:
        run.use_artifact(art)  # an Artifact: its latest version

    used = wait_for(wait_run(api, "lineage/consumer").used_artifacts)
    assert [(a.name, a.version, a.use_as) for a in used] == [("weights", "v0", "init")]
    evaluated = wait_for(wait_run(api, "lineage/evaluator").used_artifacts)
    assert [(a.name, a.version) for a in evaluated] == [("weights", "v0")]
    logged = wait_for(lambda: (found := api.run("lineage/trainer").logged_artifacts())
                      and len(found) == 2 and found)  # fmt: skip
    assert [(a.name, a.type, a.producer) for a in logged] == [  # in the order logged
        ("weights", "model", "default/lineage/trainer"),
        ("notes", "dataset", "default/lineage/trainer"),
    ]
    assert [a.name for a in api.artifacts("lineage")] == ["notes", "weights"]
    assert [a.name for a in api.artifacts("lineage", type="model")] == ["weights"]
    assert api.run("lineage/trainer").used_artifacts() == []


def test_bad_artifacts_are_refused_at_the_call(stack: StrideUp, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="invalid artifact"):
        stride.Artifact("no spaces", type="dataset")
    with pytest.raises(UsageError, match="invalid artifact type"):
        stride.Artifact("ok", type="a/b")
    art = stride.Artifact("ok", type="dataset")
    with pytest.raises(UsageError, match="no such file"):
        art.add_file(tmp_path / "missing")
    with pytest.raises(UsageError, match=r"'\.\.' part"):
        art.add_data("../x", b"")
    art.add_data("x", b"1")
    with pytest.raises(UsageError, match="already has a file 'x'"):
        art.add_data("x", b"2")
    with stride.init(project="arts", settings=stack.settings(tmp_path / "spool")) as run:
        with pytest.raises(UsageError, match="kept by Stride"):
            run.log_artifact(art, aliases=["latest"])
        with pytest.raises(UsageError, match="kept by Stride"):
            run.log_artifact(art, aliases=["v2"])
        with pytest.raises(UsageError, match="no files"):
            run.log_artifact(stride.Artifact("empty", type="dataset"))
        with pytest.raises(UsageError, match="invalid alias"):
            run.use_artifact("ok:not valid")
    with pytest.raises(UsageError, match="finished"):
        run.log_artifact(art)


def test_a_large_artifact_file_is_chunked_and_checked(stack: StrideUp, tmp_path: Path) -> None:
    import hashlib
    import os

    data = os.urandom(1_300_000)  # three chunks
    (tmp_path / "big.bin").write_bytes(data)
    art = stride.Artifact("big", type="model")
    art.add_file(tmp_path / "big.bin", name="model/big.bin")
    with stride.init(project="arts", id="big", settings=stack.settings(tmp_path / "s")) as run:
        run.log_artifact(art)
    api = stride.Api(stack.http_url)
    got = _wait_version(api, "arts/big", "v0")
    (entry,) = got.files
    assert (entry.path, entry.size, entry.sha256) == (
        "model/big.bin",
        len(data),
        hashlib.sha256(data).hexdigest(),
    )
    assert got.read("model/big.bin") == data
    # An artifact's files are not the run's own files.
    assert list(api.run("arts/big").files()) == []


def test_deleting_a_run_keeps_its_artifacts_unless_asked(stack: StrideUp, tmp_path: Path) -> None:
    settings = stack.settings(tmp_path / "spool")
    api = stride.Api(stack.http_url)
    for run_id, name in (("keeper", "kept"), ("dropper", "dropped")):
        with stride.init(project="deletes", id=run_id, settings=settings) as run:
            run.log_artifact(_artifact(name, {"f": run_id.encode()}))
            run.use_artifact(f"{name}:latest")
        stored = wait_run(api, f"deletes/{run_id}")
        wait_for(stored.used_artifacts)
    api.run("deletes/keeper").delete()
    api.run("deletes/dropper").delete(delete_artifacts=True)
    assert api.artifact("deletes/kept").read("f") == b"keeper"
    with pytest.raises(NotFoundError, match="no artifact 'dropped'"):
        api.artifact("deletes/dropped")
    assert [a.name for a in api.artifacts("deletes")] == ["kept"]


def test_purging_a_file_keeps_bytes_an_artifact_lists(stack: StrideUp, tmp_path: Path) -> None:
    shared = b"weights shared by a file and an artifact"
    settings = stack.settings(tmp_path / "spool")
    api = stride.Api(stack.http_url)
    with stride.init(project="arts", id="sharing", settings=settings) as run:
        run.save_data("model.pt", shared)
        run.log_artifact(_artifact("shared-model", {"model.pt": shared}))
    _wait_version(api, "arts/shared-model", "v0")
    stored = wait_run(api, "arts/sharing")
    wait_for(lambda: list(stored.files()))
    stored.file("model.pt").delete(purge=True)
    assert list(stored.files()) == []
    assert api.artifact("arts/shared-model").read("model.pt") == shared
