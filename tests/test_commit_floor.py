"""The syscall sequence of a single commit (csrc/commit.c), held at the crate's floor.

A "compat" commit rewrites page 0 with pwrite (never by stores into the mapping, so
a kill cannot tear it): only the span of bytes that changes is written, usually the
selector byte, not the whole page. Counted with ``wchar`` of ``/proc/self/io`` (the
bytes this process passed to write system calls).
"""

from __future__ import annotations

from pathlib import Path

from support.format_v02 import check_valid_v02

from mappedpages import Pager


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
    # 8 bytes when the reader table's published pinned count changes (not here).
    assert written <= 40 * 16, written
