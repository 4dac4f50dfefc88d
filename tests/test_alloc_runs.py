"""alloc_bulk(n, min_run=m): the pages come from free runs of at least m pages.

The policy, as documented on ``Pager.alloc_bulk``: the free runs that serve m
(at least m long, or the last run of the file, which a growth extends) are
taken lowest first, the last one cut to what is still wanted; the file grows
rather than shorter runs being used, unless it cannot grow that far. A model
of that policy in Python is checked against the library on random free maps.

The policy does not depend on the layout; the tests run on a file of each
layout ``Pager.create`` makes. A ``layout="0.3"`` file has, from its creation,
allocated system pages at 4-7 (the root pages, directory-index page 0) that
are never handed out: its first data ids are 3, 8, 9, ..., and the free runs
never cross 4-7.
"""

from __future__ import annotations

import errno
from array import array
from itertools import count, islice
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.iohooks import IoHooks, close_quietly, create_pager

from mappedpages import Pager
from mappedpages._core import lib

RESERVED = 3
# Pages past 0-2 that a new file of each layout holds allocated and never hands out.
SYSTEM = {"0.2": frozenset(), "0.3": frozenset(range(4, 8))}
both_layouts = pytest.mark.parametrize("version", sorted(SYSTEM))


def _allocated(p: Pager) -> set[int]:
    return set(p.allocated_pages())


def _data_ids(version: str, n: int) -> list[int]:
    """The first ``n`` ids a new file of layout ``version`` hands out."""
    return list(islice((i for i in count(RESERVED) if i not in SYSTEM[version]), n))


def _free(p: Pager, version: str) -> set[int]:
    """The free pages of ``p`` (a file of layout ``version``) below its page count."""
    return set(range(RESERVED, p.page_count)) - _allocated(p) - SYSTEM[version]


def _runs(free: set[int], total: int) -> list[tuple[int, int]]:
    """The maximal runs [start, end) of free pages, ascending."""
    runs: list[tuple[int, int]] = []
    for page in range(RESERVED, total):
        if page not in free:
            continue
        if runs and runs[-1][1] == page:
            runs[-1] = (runs[-1][0], page + 1)
        else:
            runs.append((page, page + 1))
    return runs


def _model(free: set[int], total: int, n: int, m: int) -> list[int] | None:
    """The ids the policy hands out, or None when it would grow the file."""
    out: list[int] = []
    for start, end in _runs(free, total):
        if len(out) == n:
            break
        if end - start >= m or end == total:
            out.extend(range(start, min(end, start + n - len(out))))
    return out if len(out) == n else None


def _fragmented(
    tmp_path: Path, version: str, holes: list[int], pages: int = 200
) -> tuple[Pager, int]:
    """A pager of layout ``version`` whose first ``pages`` data pages (3 .. 3 + pages,
    or 3 and 8 .. 7 + pages in a "0.3" file) are allocated but for ``holes``."""
    p = Pager.create(tmp_path / "f", 4096, durability="none", layout=version)
    ids = p.alloc_bulk(pages)
    assert ids == _data_ids(version, pages)
    assert set(holes) <= set(ids)  # each hole is a page the test allocated
    p.free_bulk([i for i in ids if i in set(holes)])
    p.sync()  # the frees are durable: their pages may be handed out again
    return p, p.page_count


@both_layouts
def test_takes_the_lowest_run_that_is_long_enough(tmp_path: Path, version: str) -> None:
    holes = [10, 11, 12] + list(range(40, 60)) + list(range(100, 130))
    p, _ = _fragmented(tmp_path, version, holes)
    with p:
        assert p.alloc_bulk(10, min_run=16) == list(range(40, 50))
        # What is left of that run (10 pages) is now too short: the next one.
        assert p.alloc_bulk(12, min_run=16) == list(range(100, 112))
        # Without min_run the lowest free pages come first.
        assert p.alloc_bulk(4) == [10, 11, 12, 50]


@both_layouts
def test_spans_several_runs_lowest_first_and_ascending(tmp_path: Path, version: str) -> None:
    holes = list(range(20, 38)) + list(range(50, 52)) + list(range(70, 90))
    p, _ = _fragmented(tmp_path, version, holes)
    with p:
        got = p.alloc_bulk(30, min_run=16)
        assert got == list(range(20, 38)) + list(range(70, 82))
        assert set(got) <= _allocated(p)


@both_layouts
def test_grows_the_file_rather_than_take_short_runs(tmp_path: Path, version: str) -> None:
    holes = [i for i in range(10, 190) if i % 4 == 0]  # many holes of one page
    p, total = _fragmented(tmp_path, version, holes)
    with p:
        free_before = _free(p, version)
        got = p.alloc_bulk(2 * total, min_run=16)
        assert got == sorted(got) and len(set(got)) == len(got)
        assert not set(got) & set(holes)  # no one-page hole was used
        # The file grew and the pages came from its last run.
        assert p.page_count > total
        last_run = _runs(free_before, total)[-1]
        assert got[0] == last_run[0]
        assert all(b == a + 1 for a, b in zip(got, got[1:]))


def test_takes_short_runs_when_the_file_cannot_grow(tmp_path: Path) -> None:
    """A growth that fails (the disk is full) leaves the runs a preference:
    the long runs first, then the free pages of short runs, the ids still in
    ascending order; only a call that needs more pages than are free fails,
    with the disk's error."""
    hooks = IoHooks()
    p = create_pager(tmp_path / "f", 4096, hooks, durability="fast", layout="0.3")
    try:
        ids = p.alloc_bulk(200)
        ids += p.alloc_bulk(p.free_page_count)  # the file is full: the next alloc grows
        holes = ids[:100:2]  # one-page holes low
        run = ids[150:170]  # a run of 20 higher up; the last page stays allocated
        p.free_bulk(holes + run)
        hooks.fail(lib.MP_IO_FALLOCATE, 1, errno.ENOSPC, persistent=True)
        total = p.page_count
        got = p.alloc_bulk(25, min_run=16)
        assert got == holes[:5] + run  # the run, then the lowest free pages
        assert p.page_count == total
        with pytest.raises(OSError) as info:
            p.alloc_bulk(p.free_page_count + 1, min_run=16)
        assert info.value.errno == errno.ENOSPC
        assert set(got) <= _allocated(p)
        assert not set(holes[5:]) & _allocated(p)
        hooks.clear_faults()
    finally:
        close_quietly(p)


def test_pages_freed_in_the_same_commit_are_not_taken(tmp_path: Path) -> None:
    with Pager.create(tmp_path / "f", 4096, durability="fast", layout="0.3") as p:
        ids = p.alloc_bulk(100)
        with p.transaction():
            p.free_bulk(ids[10:60])
            got = p.alloc_bulk(20, min_run=16)
        assert not set(got) & set(ids[10:60])
        assert set(got) <= _allocated(p)


@both_layouts
def test_the_allocation_is_durable_and_survives_reopen(tmp_path: Path, version: str) -> None:
    holes = list(range(30, 60))
    p, _ = _fragmented(tmp_path, version, holes)
    got = p.alloc_bulk(20, min_run=16)
    p.close()
    with Pager.open(tmp_path / "f") as q:
        assert set(got) <= set(q.allocated_pages())
        assert 50 not in set(q.allocated_pages())


@both_layouts
def test_out_buffer_and_zero(tmp_path: Path, version: str) -> None:
    p, _ = _fragmented(tmp_path, version, list(range(40, 60)))
    with p:
        p.page(45)[:4] = b"junk"
        out = array("Q", bytes(8 * 16))
        assert p.alloc_bulk(16, zero=True, out=out, min_run=16) is None
        assert list(out) == list(range(40, 56))
        assert bytes(p.page(45)[:4]) == bytes(4)


@pytest.mark.parametrize("bad", [0, -1, -(1 << 70)])
def test_min_run_below_one_is_refused_and_changes_nothing(tmp_path: Path, bad: int) -> None:
    with Pager.create(tmp_path / "f", 4096, durability="none", layout="0.3") as p:
        before = list(p.allocated_pages())
        with pytest.raises(ValueError, match="min_run"):
            p.alloc_bulk(3, min_run=bad)
        assert list(p.allocated_pages()) == before


@pytest.mark.parametrize("bad", [True, 2.0, "16", None])
def test_min_run_of_the_wrong_type_is_refused(tmp_path: Path, bad: object) -> None:
    with Pager.create(tmp_path / "f", 4096, durability="none", layout="0.3") as p:
        before = list(p.allocated_pages())
        with pytest.raises(TypeError, match="min_run"):
            p.alloc_bulk(3, min_run=bad)  # type: ignore[arg-type]
        assert list(p.allocated_pages()) == before


@both_layouts
def test_a_huge_min_run_asks_for_one_run(tmp_path: Path, version: str) -> None:
    p, total = _fragmented(tmp_path, version, list(range(20, 120)))
    with p:
        top = max(_allocated(p))  # the last data page _fragmented allocated
        assert top == _data_ids(version, 200)[-1]
        got = p.alloc_bulk(50, min_run=1 << 80)
        # No run is that long: the last run of the file (grown) serves.
        assert got[0] > top
        assert all(b == a + 1 for a, b in zip(got, got[1:]))


@both_layouts
@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    hole_indexes=st.lists(st.integers(0, 299), max_size=300, unique=True),
    n=st.integers(1, 120),
    m=st.sampled_from([1, 2, 3, 7, 8, 15, 16, 17, 33, 64, 65, 130]),
)
def test_matches_the_model_of_the_policy(
    tmp_path_factory: pytest.TempPathFactory,
    version: str,
    hole_indexes: list[int],
    n: int,
    m: int,
) -> None:
    path = tmp_path_factory.mktemp("model") / "f"
    with Pager.create(path, 4096, durability="none", layout=version) as p:
        ids = p.alloc_bulk(300)
        assert ids == _data_ids(version, 300)
        holes = [ids[i] for i in hole_indexes]  # any of the 300 data pages
        p.free_bulk(holes)
        p.sync()
        total = p.page_count
        free = _free(p, version)
        want = _model(free, total, n, m)
        got = p.alloc_bulk(n, min_run=m)
        assert got == sorted(got) and len(set(got)) == n
        assert all(i in free or i >= total for i in got)
        if want is not None:
            assert got == want
        else:  # the file grew for the runs it lacked
            assert p.page_count > total
        assert set(p.allocated_pages()) == (set(ids) - set(holes)) | set(got)
