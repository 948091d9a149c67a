"""What the embedded default does to stay small beside training (see ``store/chdb.py``
and ``ingest/_memory.py``).

In-process on purpose: ``MADV_PAGEOUT`` reclaims only pages no other process
maps, so a child of this process (which maps the same library) could not show
it. chDB allows one open session per process: no other test module's store is
open while this one runs (their stores are module fixtures).
"""

from __future__ import annotations

import ctypes
import mmap
import os
from pathlib import Path

import pytest
from chdb import session as chdb_session

from stride.ingest._memory import _TRIM, release_freed_memory
from stride.store.chdb import _MADV_PAGEOUT, ChdbStore, _flush, _release_startup_code


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


@pytest.mark.skipif(not Path("/proc/self/smaps").exists(), reason="Linux only")
def test_a_library_written_moments_ago_is_flushed_so_its_pages_can_be_handed_back(
    tmp_path: Path,
) -> None:
    """Right after ``pip install`` chDB's library is still dirty in the page cache.
    Paging out unmaps dirty pages but cannot free them, and a fault later maps back
    all the cached pages around it: a fresh install's ``stride up`` kept ~90 MiB
    more of the library resident. Flushed first, the pages are freed. A file
    written here stands in for the library, mapped read-only as code is."""
    size = 8 << 20
    pages = size // mmap.PAGESIZE
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                          ctypes.c_int, ctypes.c_long]  # fmt: skip
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]

    def cached_after_page_out(flush: bool) -> int:
        """Pages of a just-written file still in the page cache after paging it out."""
        library = tmp_path / f"_chdb_{flush}.so"
        library.write_bytes(bytes(range(256)) * (size // 256))  # dirty for ~30 s
        fd = os.open(library, os.O_RDONLY)
        address = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_PRIVATE, fd, 0)
        os.close(fd)
        assert address not in (None, ctypes.c_void_p(-1).value)
        try:
            for offset in range(0, size, mmap.PAGESIZE):  # run through it all
                ctypes.string_at(address + offset, 1)
            if flush:
                _flush(str(library))
            assert libc.madvise(address, size, _MADV_PAGEOUT) == 0
            cached = ctypes.create_string_buffer(pages)
            assert libc.mincore(address, size, cached) == 0
            return sum(byte & 1 for byte in cached.raw)
        finally:
            libc.munmap(address, size)

    # Unflushed, the pages stay (unless the kernel wrote them back meanwhile: rare).
    assert cached_after_page_out(flush=False) > pages // 2
    assert cached_after_page_out(flush=True) < pages // 4
