"""Protected writes (issue 18): the writer stages in memory the library owns,
and the staged copy and the directory copy reach the file with pwrite, never
through the mapping (a store there dirties the whole page-cache folio under
the page, megabytes after a sequential read), with fewer flushes outside
v0.2 "compat"."""

from __future__ import annotations

import pytest
from support.iohooks import IoHooks, create_pager

from mappedpages._core import ffi, lib

PS = 1024


def _pager(tmp_path, mode: str, layout: str):
    hooks = IoHooks()
    p = create_pager(tmp_path / "w.mpp", PS, hooks, durability=mode, layout=layout)
    # The extended layout starts past the first chunk (7,968 pages of 1 KiB).
    p.free_bulk(p.alloc_bulk(9000 if layout == "0.3" else 20))
    pid = p.alloc_protected()
    with p.write_protected(pid) as w:
        w.page[:5] = b"first"
    p.sync()
    return p, hooks, pid


def _inactive(p, pid) -> int:
    out = ffi.new("uint64_t *")
    assert lib.mp_protected_page(p._handle, pid, out) == 0
    a, b = p._backing(pid)
    return b if int(out[0]) == a else a


@pytest.mark.parametrize("layout", ["0.2", "0.3"])
def test_an_open_writer_leaves_the_file_untouched(tmp_path, layout):
    """The staged copy lives in the writer's buffer until commit: opening a
    writer and writing into it changes no byte of the file's inactive copy."""
    p, hooks, pid = _pager(tmp_path, "compat", layout)
    try:
        staged = _inactive(p, pid)
        before = bytes(p._view(staged, readonly=True))
        w = p.write_protected(pid)
        assert bytes(w.page[:5]) == b"first"
        w.page[:6] = b"second"
        assert bytes(p._view(staged, readonly=True)) == before
        w.discard()
        assert bytes(p._view(staged, readonly=True)) == before
        assert bytes(p.protected_page(pid)[:5]) == b"first"
    finally:
        p.close()


@pytest.mark.parametrize("mode", ["compat", "fast", "none"])
@pytest.mark.parametrize("layout", ["0.2", "0.3"])
def test_staged_and_directory_copies_are_pwritten(tmp_path, mode, layout):
    """A protected write writes the staged copy and the directory copy with
    pwrite (two calls; v0.2 also rewrites page 0 with pwrite, one more). In the
    extended layout the commit writes its pages with pwrite too: the index
    page copy and the metadata copy, and in "compat" and "fast" the root page
    whose record vouches for the two copies ("none" keeps no record)."""
    p, hooks, pid = _pager(tmp_path, mode, layout)
    try:
        before = hooks.calls(lib.MP_IO_PWRITE)
        with p.write_protected(pid) as w:
            w.page[:6] = b"second"
        wrote = hooks.calls(lib.MP_IO_PWRITE) - before
        commit_pages = 0 if layout == "0.2" else (2 if mode == "none" else 3)
        assert wrote == (3 if layout == "0.2" else 2) + commit_pages, wrote
        assert bytes(p.protected_page(pid)[:6]) == b"second"
        assert p.verify_protected(pid)
    finally:
        p.close()


@pytest.mark.parametrize("mode", ["compat", "fast"])
def test_extended_protected_write_is_one_flush(tmp_path, mode):
    """Extended layout: the staged copy and the directory copy go out under the
    sealed commit's one fdatasync, their CRCs in the commit's record: 1 flush
    (it was 3, then 2)."""
    p, hooks, pid = _pager(tmp_path, mode, "0.3")
    try:
        m0, f0 = hooks.calls(lib.MP_IO_MSYNC), hooks.calls(lib.MP_IO_FSYNC)
        with p.write_protected(pid) as w:
            w.page[:6] = b"second"
        assert (hooks.calls(lib.MP_IO_MSYNC) - m0, hooks.calls(lib.MP_IO_FSYNC) - f0) == (0, 1)
    finally:
        p.close()
