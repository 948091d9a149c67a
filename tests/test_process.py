"""One delivery path per process: several runs, threads, and signal handlers left alone."""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import threading
import time
import venv
import warnings
from pathlib import Path

import pytest

import stride
from stride import _transport

from .conftest import StrideUp, read_log, run_python, state_of, wait_for, wait_rows


def test_a_delivery_helper_left_running_is_not_reported_and_one_that_exited_is_reaped() -> None:
    """The helper outlives its training process by design: dropping its ``Popen``
    while it runs (at exit, at the latest) must not print ``ResourceWarning:
    subprocess N is still running``, as CI's runs did at the end. A plain
    ``Popen`` dropped the same way does warn (so this check can fail)."""
    pids = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for cls in (subprocess.Popen, _transport._Helper):
                proc = cls(["sleep", "30"])
                pids.append(proc.pid)
                del proc
                gc.collect()
            leaks = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
        assert leaks == [f"subprocess {pids[0]} is still running"]
        done = _transport._Helper(["true"])
        pid = done.pid
        time.sleep(0.5)  # it has exited: dropping it reaps it, no zombie is left
        del done
        gc.collect()
        with pytest.raises(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGKILL)


def test_three_runs_in_one_process_share_one_transport(stack: StrideUp, spool: Path) -> None:
    settings = stack.settings(spool)
    runs = [stride.init(project="many", id=f"run-{i}", settings=settings) for i in range(3)]
    transports = {r._transport for r in runs}
    assert len(transports) == 1  # one log, one agent, one connection
    [transport] = transports
    assert transport is not None and transport._helper is not None  # one helper process
    assert _transport._helpers[-1] is transport._helper
    for step in range(3000):
        for i, run in enumerate(runs):
            if i == 1 and step >= 1000:
                continue  # run-1 finished at step 1000; the others go on
            run.log({"x": float(step * 10 + i)})
        if step == 1000:
            assert runs[1].finish().complete
    for run in (runs[0], runs[2]):
        assert run.finish().complete
    api = stride.Api(stack.http_url)
    for i, expected in ((0, 3000), (1, 1000), (2, 3000)):
        rows = wait_rows(api, f"default/many/run-{i}", expected)
        assert [r["x"] for r in rows] == [float(s * 10 + i) for s in range(expected)]
        wait_for(lambda i=i: state_of(api, f"default/many/run-{i}") == "finished")  # type: ignore[misc]


def test_runs_in_threads_and_one_run_shared_by_threads(stack: StrideUp, spool: Path) -> None:
    settings = stack.settings(spool)
    shared = stride.init(project="threads", id="shared", settings=settings)

    def work(i: int) -> None:
        with stride.init(project="threads", id=f"own-{i}", settings=settings) as own:
            for step in range(5000):
                own.log({"v": float(step)})
                shared.log({f"t{i}": float(step)}, step=i * 5000 + step)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert shared.finish().complete
    api = stride.Api(stack.http_url)
    for i in range(3):
        rows = wait_rows(api, f"default/threads/own-{i}", 5000)
        assert [r["_step"] for r in rows] == list(range(5000))
    rows = wait_rows(api, "default/threads/shared", 15000)
    assert [r["_step"] for r in rows] == list(range(15000))
    assert all(r[f"t{r['_step'] // 5000}"] == r["_step"] % 5000 for r in rows)


SIGNAL_CHECK = """
import signal, stride
def mine(signum, frame):
    pass
{install}
before = signal.getsignal(signal.SIGTERM)
run = stride.init(project="p", mode="offline", settings=stride.Settings(spool_dir={spool!r}))
after = signal.getsignal(signal.SIGTERM)
print(before is after, before == signal.SIG_DFL, after == signal.SIG_DFL)
run.finish()
"""


@pytest.mark.parametrize(
    ("install", "expected"),
    [
        ("signal.signal(signal.SIGTERM, mine)", "True False False"),  # the program's: kept
        ("signal.signal(signal.SIGTERM, signal.SIG_IGN)", "True False False"),  # ignored: kept
        ("", "False True False"),  # the default action: Stride chains to it
    ],
)
def test_init_never_replaces_someone_elses_sigterm_handler(
    tmp_path: Path, install: str, expected: str
) -> None:
    out = run_python(SIGNAL_CHECK.format(install=install, spool=str(tmp_path)))
    assert out.strip() == expected


def test_sigterm_with_a_handler_of_the_programs_runs_that_handler(
    stack: StrideUp, spool: Path
) -> None:
    """A launcher's handler (here: one that finishes cleanly) runs; Stride stays out."""
    code = (
        "import signal, sys, stride\n"
        "def graceful(signum, frame):\n"
        "    print('handled', flush=True)\n"
        "    sys.exit(0)\n"
        "signal.signal(signal.SIGTERM, graceful)\n"
        f"s = stride.Settings(server={stack.nats_url!r}, spool_dir={str(spool)!r})\n"
        "with stride.init(project='exits', id='graceful', settings=s) as run:\n"
        "    run.log({'a': 1.0})\n"
        "    print('ready', flush=True)\n"
        "    signal.pause()\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0
    assert proc.stdout.read().strip() == "handled"
    proc.stdout.close()
    api = stride.Api(stack.http_url)
    wait_for(lambda: state_of(api, "default/exits/graceful") == "finished")


@pytest.mark.slow
def test_the_base_install_is_one_import_name_and_imports_cleanly(tmp_path: Path) -> None:
    """A fresh virtualenv with `pip install <wheel>` only (no extras)."""
    root = Path(__file__).resolve().parent.parent
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels), str(root)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    [wheel] = wheels.glob("stride-*.whl")
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = str(env_dir / "bin" / "python")
    subprocess.run([python, "-m", "pip", "install", "-q", str(wheel)], check=True, timeout=300)
    check = (
        "import importlib.metadata as m, sys, threading\n"
        "files = m.distribution('stride').files\n"
        "tops = {f.parts[0] for f in files if f.suffix in ('.py', '.typed') and "
        "len(f.parts) > 1 and not f.parts[0].endswith(('.dist-info', '.data'))}\n"
        "print(sorted(tops))\n"
        "print(any(str(f) == 'stride/py.typed' for f in files))\n"
        "import stride\n"
        "print(threading.active_count(), stride.init.__module__)\n"
        "for name in ('stride.ingest', 'stride.query', 'stride.store'):\n"
        "    try:\n"
        "        __import__(name)\n"
        "    except ImportError as exc:\n"
        "        print(name, \"pip install 'stride[server]'\" in str(exc))\n"
    )
    out = subprocess.run(
        [python, "-c", check], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        "['stride']",
        "True",
        "1 stride._init",
        "stride.ingest True",
        "stride.query True",
        "stride.store True",
    ]


def test_a_killed_helper_is_reported_and_its_data_is_kept(tmp_path: Path) -> None:
    """The helper dies (killed by hand, OOM): finish() says so, names the spool and
    `stride sync`; nothing logged is lost (it is all in the log)."""
    spool = tmp_path / "spool"
    settings = stride.Settings(server="nats://127.0.0.1:9", spool_dir=spool)
    run = stride.init(project="p", id="orphan", settings=settings)
    for i in range(1000):
        run.log({"a": float(i)})
    assert run._transport is not None and run._transport._helper is not None
    helper = run._transport._helper
    helper.send_signal(signal.SIGKILL)
    helper.wait(timeout=10)
    report = run.finish(timeout=1)
    assert not report.complete
    assert report.last_error is not None
    assert "helper exited" in report.last_error and "stride sync" in report.last_error
    [directory] = [d for d in spool.iterdir() if d.is_dir()]
    batches = read_log(directory)
    steps = [s for b in batches for blk in b.metrics for s in memoryview(blk.steps).cast("q")]
    assert steps == list(range(1000))
