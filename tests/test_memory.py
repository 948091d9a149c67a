"""What the embedded default does to stay small beside training (see ``store/chdb.py``
and ``ingest/_memory.py``).

In-process on purpose: ``MADV_PAGEOUT`` reclaims only pages no other process
maps, so a child of this process (which maps the same library) could not show
it. chDB allows one open session per process: no other test module's store is
open while this one runs (their stores are module fixtures).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from chdb import session as chdb_session

from stride.ingest._memory import _TRIM, release_freed_memory
from stride.store.chdb import ChdbStore, _release_startup_code


def _resident_chdb_code_kib() -> int:
    """Resident KiB of the chDB library's read-only mappings (code and constants)."""
    total, counting = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        fields = line.split()
        if "-" in fields[0] and len(fields) >= 5:  # a mapping's header line
            counting = len(fields) == 6 and "w" not in fields[1] and "_chdb" in fields[5]
        elif counting and fields[0] == "Rss:":
            total += int(fields[1])
    return total


@pytest.mark.skipif(not Path("/proc/self/smaps").exists(), reason="Linux only")
def test_chdbs_start_up_code_is_handed_back_and_the_engine_still_works(tmp_path: Path) -> None:
    """chDB's start-up runs much of its library once; it must not stay resident.

    How much is resident before depends on what ran earlier in this process (the
    first import touches ~250 MiB; a later session start far less): the test
    asks for most of whatever is resident to be handed back."""
    chdb_session.Session(str(tmp_path / "a")).close()  # the engine starts and stops
    touched = _resident_chdb_code_kib()
    _release_startup_code()
    released = _resident_chdb_code_kib()
    assert touched > 10 * 1024, touched  # a started engine leaves its code resident...
    assert released < touched / 2, (touched, released)  # ...and most of it is handed back
    store = ChdbStore(tmp_path / "b")  # which opening a store does, and it works on
    assert store.query_arrow("SELECT 41 + 1 AS x").column("x").to_pylist() == [42]
    store.close()


def test_the_c_heap_can_be_trimmed_here() -> None:
    """On glibc (this machine, the Docker image) the trim is there and runs."""
    assert _TRIM is not None
    release_freed_memory()
