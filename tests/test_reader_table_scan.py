"""The writer's scan of the reader table (csrc/readers.c, readers_table_scan).

A table of the default capacity (126 slots) is read with its header in one system
call; a larger table, or one cut short, is read as far as the file goes, and every
live slot in it still pins the pages its reader's commit holds.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

from mappedpages import Pager, ReadOnlyPager

HEADER = SLOT = 64


def slot_pids(path: Path) -> list[int]:
    data = Path(str(path) + "-readers").read_bytes()
    return [struct.unpack_from("<Q", data, HEADER + SLOT * i)[0]
            for i in range((len(data) - HEADER) // SLOT)]


def test_a_reader_in_a_slot_past_the_default_capacity_pins_pages(tmp_path: Path) -> None:
    path = tmp_path / "wide.mpp"
    with Pager.create(path, page_size=1024, max_readers=140) as w:
        ids = w.alloc_bulk(20)
        readers = [ReadOnlyPager.open(path) for _ in range(131)]
        last = readers.pop()
        for r in readers:
            r.close()
        try:
            pids = slot_pids(path)
            assert len(pids) == 140
            assert [i for i, pid in enumerate(pids) if pid] == [130]
            assert [x.generation for x in w.readers()] == [last.generation]
            w.free_bulk(ids[:10])
            w.free(ids[10])
            fresh = w.alloc_bulk(30) + [w.alloc()]
            assert not set(fresh) & set(ids[:11]), "a page of the reader's commit was reused"
            assert w.pinned_free_pages == 11
            assert list(last.allocated_pages()) == ids
        finally:
            last.close()
        w.free(fresh[0])  # a commit: the scan finds no reader now
        assert w.pinned_free_pages == 0


def test_a_table_cut_short_is_read_as_far_as_it_goes(tmp_path: Path) -> None:
    path = tmp_path / "cut.mpp"
    with Pager.create(path, page_size=1024) as w:
        ids = w.alloc_bulk(20)
        with ReadOnlyPager.open(path) as r:
            assert slot_pids(path)[0] == os.getpid()
            os.truncate(str(path) + "-readers", HEADER + 3 * SLOT)
            assert [x.generation for x in w.readers()] == [r.generation]
            w.free_bulk(ids[:10])
            w.free(ids[10])
            fresh = w.alloc_bulk(30) + [w.alloc()]
            assert not set(fresh) & set(ids[:11]), "a page of the reader's commit was reused"
            assert w.pinned_free_pages == 11
