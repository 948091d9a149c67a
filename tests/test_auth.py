"""Auth: bearer tokens scoped to entities, read-only or read-write, stored hashed,
made and revoked with ``stride token``; a ``stride up --tokens`` refuses the rest."""

from __future__ import annotations

import http.client
import json
import re
import subprocess
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import stride
from stride import AuthError
from stride.query.auth import Tokens
from stride.query.openapi import OPERATIONS

from .conftest import STRIDE, StrideUp, stride_up, wait_for, wait_rows


def _token(tokens: Path, *args: str) -> tuple[str, str]:
    """``stride token create``: (id, token) as the CLI prints them."""
    out = subprocess.run(
        [*STRIDE, "token", "create", "--tokens", str(tokens), *args],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    token = out.split()[-1]
    return token.split("_")[1], token


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[StrideUp, Path]]:
    """A ``stride up`` with a tokens file, and runs of two entities in it."""
    tmp = tmp_path_factory.mktemp("auth")
    tokens = tmp / "tokens.jsonl"
    _, admin = _token(tokens, "--entity", "*")
    with stride_up(tmp / "data", "--tokens", str(tokens)) as up:
        for entity in ("alice", "bob"):
            with stride.init(
                entity=entity, project="p", id="r", settings=up.settings(tmp / "spool")
            ) as run:
                for step in range(100):
                    run.log({"loss": float(step)})
            wait_rows(stride.Api(up.http_url, token=admin), run.path, 100)
        yield up, tokens


def _call(
    up: StrideUp, method: str, path: str, token: str | None, body: bytes | None = None
) -> tuple[int, Any]:
    parsed = urllib.parse.urlsplit(up.http_url)
    conn = http.client.HTTPConnection(parsed.hostname or "", parsed.port)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    conn.request(method, path, body, headers)
    answer = conn.getresponse()
    data = answer.read()
    auth = answer.getheader("WWW-Authenticate")
    conn.close()
    try:
        return answer.status, (json.loads(data), auth)
    except ValueError:
        return answer.status, (None, auth)


def _every_operation(entity: str) -> list[tuple[str, str]]:
    """Every operation of the service, on the run ``entity/p/r``."""
    calls = []
    for op in OPERATIONS:
        path = op.path.format(entity=entity, project="p", run_id="r", name="a")
        calls.append((op.method.upper(), path))
    return calls


def test_without_a_token_every_endpoint_but_the_probes_is_refused(
    secured: tuple[StrideUp, Path],
) -> None:
    up, _ = secured
    for method, path in _every_operation("alice"):
        status, (body, challenge) = _call(
            up, method, path, None, b"{}" if method in ("POST", "PATCH") else None
        )
        if path in ("/healthz", "/readyz"):
            assert status == 200, path
            continue
        assert status == 401, (method, path, status)
        assert "needs a token" in body["error"] and challenge == 'Bearer realm="stride"'
    with pytest.raises(AuthError, match="needs a token"):
        stride.Api(up.http_url).run("alice/p/r")


def test_a_token_for_one_entity_reads_nothing_of_another_by_any_endpoint(
    secured: tuple[StrideUp, Path],
) -> None:
    up, tokens = secured
    token_id, alice = _token(tokens, "--entity", "alice")
    api = stride.Api(up.http_url, token=alice)
    assert api.run("alice/p/r").to_arrow().num_rows == 100
    assert [p.name for p in api.projects("alice")] == ["p"]
    scoped = [(m, p) for m, p in _every_operation("bob") if "{entity}" in _template(p)]
    assert len(scoped) == sum("{entity}" in op.path for op in OPERATIONS) > 10
    for method, path in scoped:
        body = b'{"name": "x"}' if method in ("POST", "PATCH") else None
        status, (answer, _) = _call(up, method, path, alice, body)
        assert status == 403, (method, path, status, answer)
        assert f"token {token_id} may not read entity 'bob'" in answer["error"]
    with pytest.raises(AuthError, match="may not read entity 'bob'"):
        stride.Api(up.http_url, token=alice).run("bob/p/r")
    assert stride.Api(up.http_url, token=alice).get("/api/v1/status")["ok"] is True


def _template(path: str) -> str:
    for op in OPERATIONS:
        if op.path.format(entity="bob", project="p", run_id="r", name="a") == path:
            return op.path
    raise AssertionError(path)


def test_a_read_only_token_reads_but_cannot_change_runs(secured: tuple[StrideUp, Path]) -> None:
    up, tokens = secured
    _, reader = _token(tokens, "--entity", "alice", "--read-only")
    run = stride.Api(up.http_url, token=reader).run("alice/p/r")
    assert run.read_only is True
    assert run.history(pandas=False)[-1]["_step"] == 99
    run.notes = "changed"
    with pytest.raises(AuthError, match="may not change runs"):
        run.update()
    with pytest.raises(AuthError, match="may not change runs"):
        run.delete()
    status, _ = _call(up, "PATCH", "/api/v1/runs/alice/p/r", reader, b'{"notes": "x"}')
    assert status == 403
    _, writer = _token(tokens, "--entity", "alice")
    run = stride.Api(up.http_url, token=writer).run("alice/p/r")
    assert run.read_only is False
    run.notes = "changed"
    assert run.update().notes == "changed"


def test_a_revoked_token_is_refused_without_a_restart(secured: tuple[StrideUp, Path]) -> None:
    up, tokens = secured
    token_id, token = _token(tokens, "--entity", "alice")
    api = stride.Api(up.http_url, token=token)
    assert api.run("alice/p/r").id == "r"
    out = subprocess.run(
        [*STRIDE, "token", "revoke", "--tokens", str(tokens), token_id],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert f"token {token_id} revoked" in out

    def refused() -> bool:
        try:
            api.run("alice/p/r")
        except AuthError as exc:
            return exc.status == 401 and "unknown or revoked" in exc.message
        return False

    wait_for(refused, timeout=10)
    listed = subprocess.run(
        [*STRIDE, "token", "list", "--tokens", str(tokens)], capture_output=True, text=True,
        check=True,
    ).stdout  # fmt: skip
    assert re.search(rf"^{token_id} .* revoked ", listed, re.MULTILINE)


def test_made_up_and_malformed_tokens_are_refused(secured: tuple[StrideUp, Path]) -> None:
    up, tokens = secured
    token_id, token = _token(tokens, "--entity", "alice")
    for bad in [token[:-1] + ("A" if token[-1] != "A" else "B"), f"stride_{token_id}_", "stride_",
                "nonsense", token.replace(token_id, "0" * 12)]:  # fmt: skip
        status, (body, _) = _call(up, "GET", "/api/v1/runs/alice/p/r", bad)
        assert status == 401 and "unknown or revoked" in body["error"], bad


def test_tokens_are_stored_hashed_and_owner_only(tmp_path: Path) -> None:
    store = Tokens(tmp_path / "tokens.jsonl")
    record, token = store.create(["alice"], write=False, name="ci")
    text = (tmp_path / "tokens.jsonl").read_text()
    secret = token.rsplit("_", 1)[-1] if token.count("_") == 2 else token.split("_", 2)[2]
    assert secret not in text and record.sha256 in text
    assert (tmp_path / "tokens.jsonl").stat().st_mode & 0o777 == 0o600
    grant = Tokens(tmp_path / "tokens.jsonl").check(token)  # read back by another reader
    assert grant is not None and grant.entities == {"alice"} and not grant.write
    with pytest.raises(ValueError, match="at least one entity"):
        store.create([], write=True)


def test_serving_beyond_loopback_without_tokens_warns(tmp_path: Path) -> None:
    with stride_up(tmp_path / "open", "--host", "0.0.0.0") as up:
        output = "\n".join(up.output)
    assert "WITHOUT AUTH" in output and "--tokens FILE" in output
    with stride_up(tmp_path / "loop") as up:
        assert "WITHOUT AUTH" not in "\n".join(up.output)


def test_an_unreadable_tokens_file_refuses_everything_and_says_why(tmp_path: Path) -> None:
    """Damaged while the service runs: every request gets a 503 naming the file and
    the line (fail closed, never open), and it works again once the file is fixed.
    Damaged before it starts: the service does not start."""
    tokens = tmp_path / "tokens.jsonl"
    _, admin = _token(tokens, "--entity", "*")
    good = tokens.read_bytes()
    with stride_up(tmp_path / "data", "--tokens", str(tokens)) as up:
        assert _call(up, "GET", "/api/v1/projects/alice", admin)[0] == 200
        tokens.write_bytes(good + b"{not json\n")
        for _ in range(3):
            status, (body, _) = _call(up, "GET", "/api/v1/projects/alice", admin)
            assert status == 503 and "cannot read its tokens file" in body["error"]
            assert str(tokens) not in body["error"]  # details for the log, not for callers
        assert _call(up, "GET", "/api/v1/projects/alice", None)[0] == 401  # no token: as ever
        tokens.write_bytes(good)
        assert _call(up, "GET", "/api/v1/projects/alice", admin)[0] == 200
    logged = [line for line in up.output if "cannot read the tokens file" in line]  # once
    assert len(logged) == 1 and f"{tokens}, line 2: not a token" in logged[0], logged
    tokens.write_bytes(b"garbage\n")
    result = subprocess.run(
        [*STRIDE, "up", "--data-dir", str(tmp_path / "data"), "--http-port", "0",
         "--nats-port", "0", "--tokens", str(tokens)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode != 0
    assert f"cannot read the tokens file: {tokens}, line 1: not a token" in result.stderr


def test_a_tokens_file_without_an_active_token_is_pointed_out(tmp_path: Path) -> None:
    tokens = tmp_path / "none.jsonl"
    with stride_up(tmp_path / "data", "--tokens", str(tokens)) as up:
        output = "\n".join(up.output)
    assert f"{tokens} holds no active token" in output
