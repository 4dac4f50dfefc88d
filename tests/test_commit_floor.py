"""The syscall sequence of a single commit (csrc/commit.c), held at the crate's floor.

A "compat" commit rewrites page 0 with pwrite (never by stores into the mapping, so
a kill cannot tear it): only the span of bytes that changes is written, usually the
selector byte, not the whole page. Counted with ``wchar`` of ``/proc/self/io`` (the
bytes this process passed to write system calls).
"""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
from support.format_v02 import check_valid_v02
from support.iohooks import IoHooks, close_quietly, create_pager

from mappedpages import Pager, Unavailable
from mappedpages._core import lib


def wchar() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    raise AssertionError("no wchar in /proc/self/io")


def test_compat_commit_writes_the_changed_bytes_of_page_0_only(tmp_path: Path) -> None:
    path = tmp_path / "floor.mpp"
    with Pager.create(path, 4096, durability="compat") as pager:
        pager.free(pager.alloc())
        first = check_valid_v02(path)
        gen = first.metas[first.selector].generation
        before = wchar()
        for _ in range(20):
            pager.free(pager.alloc())
        written = wchar() - before
        # Page 0 names the newest metadata copy after every "compat" commit.
        img = check_valid_v02(path)
        assert img.metas[img.selector].generation == gen + 40
        assert list(pager.allocated_pages()) == []
    # 40 commits, each naming the other metadata copy in page 0: a byte each, and
    # 8 bytes when the reader table's published pinned count changes (not here);
    # each also writes its metadata copy, a whole page, with pwrite (commit.c).
    assert written <= 40 * (4096 + 16), written


def _hooked(tmp_path: Path, mode: str, layout: str) -> tuple[Pager, IoHooks]:
    hooks = IoHooks()
    return create_pager(tmp_path / "w.mpp", 4096, hooks, durability=mode, layout=layout), hooks


@pytest.mark.parametrize(
    ("mode", "layout", "pwrites"),
    [("compat", "0.2", 2), ("fast", "0.2", 1), ("compat", "0.3", 1), ("fast", "0.3", 1)],
)
def test_a_commit_writes_its_metadata_copy_with_pwrite(
    tmp_path: Path, mode: str, layout: str, pwrites: int
) -> None:
    """The metadata copy goes out with one pwrite (and, in v0.2 "compat", page 0
    with another), never by stores into the mapping, which dirty the whole
    page-cache folio (up to 2 MiB) that the flush then writes."""
    p, hooks = _hooked(tmp_path, mode, layout)
    try:
        p.free(p.alloc())
        before = hooks.calls(lib.MP_IO_PWRITE)
        p.free(p.alloc())
        assert hooks.calls(lib.MP_IO_PWRITE) - before == 2 * pwrites
    finally:
        close_quietly(p)


@pytest.mark.parametrize("layout", ["0.2", "0.3"])
def test_a_failed_metadata_write_poisons_and_loses_nothing_acknowledged(
    tmp_path: Path, layout: str
) -> None:
    """The metadata copy's pwrite fails: the call raises, the pager takes no
    further commit, and reopening finds every commit acknowledged before."""
    p, hooks = _hooked(tmp_path, "fast", layout)
    try:
        kept = p.alloc_bulk(5)
        hooks.fail(lib.MP_IO_PWRITE, 1, errno.EIO)  # the next commit's metadata copy
        with pytest.raises(OSError):
            p.alloc()
        with pytest.raises(Unavailable):
            p.alloc()
    finally:
        close_quietly(p)
    with Pager.open(tmp_path / "w.mpp") as q:
        assert list(q.allocated_pages()) == kept
