"""The I/O hooks cover pwrite, pread, open and flock as well (csrc/os.c).

A failed page-0 rewrite (pwrite) poisons the pager like a failed flush; a failed
pread, open or flock makes open fail with that errno and change nothing.
"""

from __future__ import annotations

import errno
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from support.iohooks import IoHooks, create_pager, open_pager  # noqa: E402

import mappedpages as mp  # noqa: E402
from mappedpages._core import lib  # noqa: E402


def test_kinds_are_appended_before_the_count() -> None:
    kinds = [lib.MP_IO_PWRITE, lib.MP_IO_PREAD, lib.MP_IO_OPEN, lib.MP_IO_FLOCK]
    assert kinds == [6, 7, 8, 9]
    assert lib.MP_IO_WRITEBACK == 10
    assert lib.MP_IO_KINDS == 11
    hooks = IoHooks()
    assert len(hooks.table.calls) == lib.MP_IO_KINDS


def test_failed_page0_rewrite_poisons_the_pager(tmp_path: Path) -> None:
    hooks = IoHooks()
    path = tmp_path / "w.mpp"
    p = create_pager(path, 1024, hooks, durability="compat")
    before = hooks.calls(lib.MP_IO_PWRITE)
    p.alloc()
    assert hooks.calls(lib.MP_IO_PWRITE) > before, "compat's page-0 rewrite is a pwrite"
    hooks.fail(lib.MP_IO_PWRITE, 1, errno.EIO)
    with pytest.raises(OSError) as info:
        p.alloc()
    assert info.value.errno == errno.EIO
    with pytest.raises(mp.Unavailable):
        p.alloc()
    p.close()
    with mp.Pager.open(path) as q:
        assert q.page_count >= 4


def test_failed_pread_fails_open(tmp_path: Path) -> None:
    path = tmp_path / "r.mpp"
    mp.Pager.create(path, 1024).close()
    before = path.read_bytes()
    hooks = IoHooks()
    hooks.fail(lib.MP_IO_PREAD, 1, errno.EIO)
    with pytest.raises(OSError) as info:
        open_pager(path, hooks)
    assert info.value.errno == errno.EIO
    assert path.read_bytes() == before
    assert hooks.calls(lib.MP_IO_PREAD) == 1


def test_failed_open_fails_open(tmp_path: Path) -> None:
    path = tmp_path / "o.mpp"
    mp.Pager.create(path, 1024).close()
    hooks = IoHooks()
    hooks.fail(lib.MP_IO_OPEN, 1, errno.EACCES)
    with pytest.raises(OSError) as info:
        open_pager(path, hooks)
    assert info.value.errno == errno.EACCES
    hooks.clear_faults()
    open_pager(path, hooks).close()
    assert hooks.calls(lib.MP_IO_OPEN) == 2


def test_flock_faults(tmp_path: Path) -> None:
    path = tmp_path / "l.mpp"
    mp.Pager.create(path, 1024).close()
    hooks = IoHooks()
    hooks.fail(lib.MP_IO_FLOCK, 1, errno.EWOULDBLOCK, persistent=True)
    with pytest.raises(mp.Locked):
        open_pager(path, hooks)
    hooks.clear_faults()
    hooks.fail(lib.MP_IO_FLOCK, 1, errno.ENOLCK)
    with pytest.raises(OSError) as info:
        open_pager(path, hooks)
    assert info.value.errno == errno.ENOLCK
    hooks.clear_faults()
    open_pager(path, hooks).close()
