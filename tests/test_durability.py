"""Durability modes: what each flushes, what it leaves durable, what a crash leaves.

The flush counts documented in csrc/commit.c are checked with the I/O hooks
of tests/iohooks.py, which count every msync and fsync (and report its range).
What is durable is checked with the durable-file model of the same module: a
CrashRecorder follows the barriers, and the file made of only the durable
bytes (no dirty page written back) is opened and compared. What a process
crash leaves is the page cache: the file is copied while the pager is open
(or a child process is killed with SIGKILL) and the copy is opened.

Rust readers are modelled by tests/conftest.py's raw reader, which follows page
0's selector as the crate does.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
from support.format_v02 import check_valid_v02, read_image
from support.iohooks import DURABILITY_MODES, IoHooks, create_pager
from support.pagers import force_close, kill_when_ready
from support.powerloss import CrashRecorder
from support.workloads import count_problem, state_of

from mappedpages import Pager, ReadOnlyPager, RecoveryWarning
from mappedpages._core import lib

KILL_ROUNDS = int(os.environ.get("MAPPEDPAGES_KILL_ROUNDS", "4"))
PS = 4096

modes = pytest.mark.parametrize("mode", DURABILITY_MODES)
lazy_modes = pytest.mark.parametrize("mode", ["fast", "none"])

# Flushes of one allocation commit (csrc/commit.c).
COMMIT_MSYNCS = {"compat": 2, "fast": 1, "none": 0}


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------


def hooked(tmp_path, mode: str, name: str = "d.mpp", page_size: int = PS, room: int = 60):
    """A pager with I/O hooks whose file already has ``room`` free pages."""
    hooks = IoHooks()
    hooks.record_barriers = True
    p = create_pager(tmp_path / name, page_size, hooks, durability=mode)
    if room:
        p.free_bulk(p.alloc_bulk(room))
        p.sync()
    hooks.barriers.clear()
    return p, hooks


def flushes(hooks: IoHooks, fn) -> tuple[int, int]:
    """(msyncs, fsyncs) made by fn()."""
    m0, f0 = hooks.calls(lib.MP_IO_MSYNC), hooks.calls(lib.MP_IO_FSYNC)
    fn()
    return hooks.calls(lib.MP_IO_MSYNC) - m0, hooks.calls(lib.MP_IO_FSYNC) - f0


def msynced_pages(hooks: IoHooks, fn, page_size: int = PS) -> list[int]:
    """The first page of each msync made by fn(), in order."""
    hooks.barriers.clear()
    fn()
    return [off // page_size for kind, off, _ in hooks.barriers if kind == lib.MP_IO_MSYNC]


def copy_of(path: Path, dst: Path) -> Path:
    """What a kill leaves: the file's bytes as the page cache holds them."""
    shutil.copyfile(path, dst)
    return dst


def durable_copy(rec: CrashRecorder, dst: Path) -> Path:
    """What a power loss leaves when no dirty page was written back."""
    data = b"".join(rec.durable)[: rec.durable_size]
    dst.write_bytes(data)
    return dst


def allocated_of(path: Path) -> set[int]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RecoveryWarning)
        q = Pager.open(path)
    try:
        st = state_of(q)
        assert count_problem(q, st) is None, count_problem(q, st)
        return set(st.allocated)
    finally:
        force_close(q)


def crate_allocated(path: Path) -> set[int]:
    """The regular pages allocated in the copy page 0 selects (what the crate reads)."""
    img = read_image(path)
    sel = img.selected()
    assert not sel.problems(img.page_size, img.file_len), sel.problems(img.page_size,
                                                                       img.file_len)
    return set(sel.bits) - {0, 1, 2} - img.system_pages


# --------------------------------------------------------------------------
# the argument
# --------------------------------------------------------------------------


def test_default_mode_is_compat(tmp_path):
    with Pager.create(tmp_path / "a.mpp") as p:
        assert p.durability == "compat"
    with Pager.open(tmp_path / "a.mpp") as p:
        assert p.durability == "compat"


@modes
def test_mode_is_reported(tmp_path, mode):
    with Pager.create(tmp_path / "a.mpp", durability=mode) as p:
        assert p.durability == mode
        p.alloc()
    with Pager.open(tmp_path / "a.mpp", durability=mode) as p:
        assert p.durability == mode


def test_bad_modes_are_refused_before_anything_is_created(tmp_path):
    with pytest.raises(ValueError):
        Pager.create(tmp_path / "a.mpp", durability="fastest")
    with pytest.raises(TypeError):
        Pager.create(tmp_path / "a.mpp", durability=1)
    assert not (tmp_path / "a.mpp").exists()
    Pager.create(tmp_path / "a.mpp").close()
    with pytest.raises(ValueError):
        Pager.open(tmp_path / "a.mpp", durability="")


# --------------------------------------------------------------------------
# flushes per operation
# --------------------------------------------------------------------------


@modes
def test_alloc_and_free_flush_counts(tmp_path, mode):
    p, hooks = hooked(tmp_path, mode)
    try:
        want = (COMMIT_MSYNCS[mode], 0)
        a = p.alloc()
        assert flushes(hooks, p.alloc) == want
        assert flushes(hooks, lambda: p.free(a)) == want
        ids: list[int] = []
        assert flushes(hooks, lambda: ids.extend(p.alloc_bulk(7))) == want
        assert flushes(hooks, lambda: p.free_bulk(ids)) == want
        assert flushes(hooks, lambda: p.alloc(zero=True)) == want
    finally:
        force_close(p)


@modes
def test_what_an_allocation_commit_flushes(tmp_path, mode):
    """compat: the metadata copy, then page 0; fast: the metadata copy; none: nothing."""
    p, hooks = hooked(tmp_path, mode)
    try:
        pages = msynced_pages(hooks, p.alloc)
        if mode == "compat":
            assert len(pages) == 2 and pages[0] in (1, 2) and pages[1] == 0, pages
        elif mode == "fast":
            assert len(pages) == 1 and pages[0] in (1, 2), pages
        else:
            assert pages == []
    finally:
        force_close(p)


@modes
def test_protected_write_flushes_three_pages(tmp_path, mode):
    """The staged copy, the directory copy, page 0 (csrc/commit.c, README): three
    msyncs in "compat", the crate's order; in "fast" and "none" the staged copy
    and the directory copy, both written with pwrite and named by nothing until
    page 0 is, share one fdatasync, so a protected write is two flushes there
    (it was three before issue 18)."""
    p, hooks = hooked(tmp_path, mode)
    try:
        pid = p.alloc_protected()
        p.sync()

        def write():
            with p.write_protected(pid) as w:
                w.page[:4] = b"abcd"

        m0, f0 = hooks.calls(lib.MP_IO_MSYNC), hooks.calls(lib.MP_IO_FSYNC)
        pages = msynced_pages(hooks, write)
        fsyncs = hooks.calls(lib.MP_IO_FSYNC) - f0
        assert hooks.calls(lib.MP_IO_MSYNC) - m0 == len(pages)
        if mode == "compat":
            assert (len(pages), fsyncs) == (3, 0), f"a protected write flushed pages {pages}"
            assert pages[0] in p._backing(pid), pages
            assert pages[2] == 0, pages
        else:
            assert (pages, fsyncs) == ([0], 1), f"msyncs of pages {pages}, {fsyncs} fsyncs"
    finally:
        force_close(p)


@modes
def test_protected_alloc_and_free_flush_counts(tmp_path, mode):
    """alloc_protected: zeroed copy, directory copy, page 0, metadata copy (+ page 0
    again in compat); free_protected: metadata copy, directory copy, page 0."""
    p, hooks = hooked(tmp_path, mode)
    try:
        first = p.alloc_protected()  # makes the directory block
        p.sync()
        pid = None

        def alloc():
            nonlocal pid
            pid = p.alloc_protected()

        assert flushes(hooks, alloc) == (5 if mode == "compat" else 4, 0)
        assert flushes(hooks, lambda: p.free_protected(pid)) == (3, 0)
        assert flushes(hooks, lambda: p.free_protected(first)) == (3, 0)
    finally:
        force_close(p)


@modes
def test_sync_flushes(tmp_path, mode):
    """sync(): the whole mapping and an fsync, then what the mode deferred:
    page 0 in "fast", the metadata copy and page 0 in "none"."""
    p, hooks = hooked(tmp_path, mode)
    try:
        p.alloc()
        p.alloc()
        want = {"compat": (1, 1), "fast": (2, 1), "none": (3, 1)}[mode]
        assert flushes(hooks, p.sync) == want
        assert flushes(hooks, p.sync) == (1, 1)  # nothing deferred any more
    finally:
        force_close(p)


@modes
def test_close_flushes_what_the_mode_deferred(tmp_path, mode):
    p, hooks = hooked(tmp_path, mode)
    ids = [p.alloc() for _ in range(3)]
    want = {"compat": 0, "fast": 1, "none": 2}[mode]
    assert flushes(hooks, p.close) == (want, 0)
    check_valid_v02(tmp_path / "d.mpp", allocated=ids)


# --------------------------------------------------------------------------
# what is durable after each operation
# --------------------------------------------------------------------------


@modes
def test_durable_state_after_each_operation(tmp_path, mode):
    """The file made of only the durable bytes holds the latest commit in
    "compat" and "fast", the last synced state in "none"; after sync() every
    byte of the file is durable. In "compat" that file is also what the crate
    reads (page 0 selects the latest copy)."""
    path = tmp_path / "d.mpp"
    rec = CrashRecorder(path, PS, mode)
    hooks = IoHooks(rec.on_barrier)
    p = create_pager(path, PS, hooks, durability=mode)
    try:
        rec.start()
        synced: set[int] = set()
        held: list[int] = []
        rnd = random.Random(5)
        for step in range(24):
            r = rnd.random()
            if r < 0.4 or not held:
                held.append(p.alloc())
            elif r < 0.6:
                held.extend(p.alloc_bulk(rnd.randrange(1, 6)))
            elif r < 0.8:
                p.free(held.pop(rnd.randrange(len(held))))
            elif r < 0.9:
                n = rnd.randrange(1, len(held) + 1)
                batch = [held.pop(rnd.randrange(len(held))) for _ in range(n)]
                p.free_bulk(batch)
            else:
                v = p.page(held[0])
                v[:8] = step.to_bytes(8, "little")
                v.release()
                p.sync()
                synced = set(held)
                cur, _ = rec._read_current()
                assert list(cur) == rec.durable[: len(cur)], "sync() left dirty pages"
            hooks.check_errors()
            live = set(p.allocated_pages())
            dur = durable_copy(rec, tmp_path / f"durable{step}.mpp")
            want = synced if mode == "none" else live
            assert allocated_of(dur) == want, f"step {step}"
            if mode == "compat":
                check_valid_v02(dur, allocated=sorted(live))
    finally:
        rec.stop()
        force_close(p)


@lazy_modes
def test_close_leaves_page0_naming_the_newest_copy(tmp_path, mode):
    path = tmp_path / "d.mpp"
    with Pager.create(path, durability=mode) as p:
        ids = p.alloc_bulk(9)
        for i in ids[:4]:
            p.free(i)
        p.alloc()
        live = sorted(p.allocated_pages())
    img = check_valid_v02(path, allocated=live)
    assert img.selected().generation == max(m.generation for m in img.metas)
    with ReadOnlyPager.open(path) as r:
        assert list(r.allocated_pages()) == live


@lazy_modes
def test_a_writers_open_brings_page0_up_to_date(tmp_path, mode):
    """After a kill (the page cache copied), the next writer's open rewrites page 0
    so that the crate reads what this library reads."""
    path = tmp_path / "d.mpp"
    p = Pager.create(path, durability=mode)
    try:
        for _ in range(5):
            p.alloc()
        if mode == "none":
            p.sync()
            p.alloc()  # not synced: may be lost, never half-kept
        crashed = copy_of(path, tmp_path / "crashed.mpp")
    finally:
        force_close(p)
    mine = allocated_of(crashed)  # a writer's open and close
    check_valid_v02(crashed, allocated=sorted(mine))
    with ReadOnlyPager.open(crashed) as r:
        assert set(r.allocated_pages()) == mine


def test_fast_mode_crate_reads_the_latest_commit_or_the_one_before(tmp_path):
    """In "fast" mode page 0 is rewritten lazily, but the commits alternate
    between the two copies, and page 0 keeps naming one of them: after a kill,
    the crate (following page 0) reads the latest commit or the one before it;
    this library reads the latest."""
    path = tmp_path / "d.mpp"
    p = Pager.create(path, durability="fast")
    seen = []
    try:
        p.free_bulk(p.alloc_bulk(30))
        p.sync()
        states = [set(p.allocated_pages())]
        held: list[int] = []
        for step in range(10):
            if step % 3 == 2:
                p.free(held.pop(0))
            else:
                held.append(p.alloc())
            states.append(set(p.allocated_pages()))
            crashed = copy_of(path, tmp_path / f"c{step}.mpp")
            crate = crate_allocated(crashed)
            assert crate in (states[-1], states[-2]), f"step {step}"
            seen.append("latest" if crate == states[-1] else "previous")
            assert allocated_of(crashed) == states[-1]
    finally:
        force_close(p)
    assert "latest" in seen and "previous" in seen


@lazy_modes
def test_crate_view_right_after_alloc_protected(tmp_path, mode):
    """Documents what the crate reads after a kill right after alloc_protected
    in a lazy mode: page 0 names the directory entry, but it may still select a
    metadata copy whose bitmap marks the entry's backing pages free. This
    library's open drops nothing and repairs page 0."""
    path = tmp_path / "d.mpp"
    p = Pager.create(path, durability=mode)
    try:
        p.free_bulk(p.alloc_bulk(20))
        p.sync()
        pid = p.alloc_protected()
        backing = set(p._backing(pid))
        crashed = copy_of(path, tmp_path / "c.mpp")
    finally:
        force_close(p)
    img = read_image(crashed)
    assert backing <= img.system_pages
    with warnings.catch_warnings():
        warnings.simplefilter("error", RecoveryWarning)
        with Pager.open(crashed) as q:
            assert list(q.allocated_protected_pages()) == [pid]
    img = check_valid_v02(crashed)
    assert backing <= img.selected().bits


# --------------------------------------------------------------------------
# "none": the pending map, and crashes
# --------------------------------------------------------------------------


def test_none_a_freed_page_is_not_reused_before_sync(tmp_path):
    p = Pager.create(tmp_path / "n.mpp", durability="none")
    try:
        p.free_bulk(p.alloc_bulk(12))
        p.sync()
        a, b = p.alloc(), p.alloc()
        p.sync()
        p.free(a)
        got = [p.alloc() for _ in range(3)] + p.alloc_bulk(3)
        assert a not in got
        p.sync()
        assert p.alloc() == a  # the lowest free page, once the free is durable
        p.free(b)
        assert p.alloc() != b
        pid = p.alloc_protected()  # a directory commit makes the free durable first
        assert b in p._system  # ...so the new directory block may take the page
        assert pid == 0
    finally:
        force_close(p)


def test_none_reuse_without_growth_flushes_first(tmp_path):
    """With no other free page, the pager makes the pending frees durable (one
    flushed commit) and reuses them instead of growing the file."""
    path = tmp_path / "n.mpp"
    hooks = IoHooks()
    p = create_pager(path, PS, hooks, durability="none")
    try:
        ids = p.alloc_bulk(20)
        ids += p.alloc_bulk(p.free_page_count)
        p.sync()
        pages = p.page_count
        p.free(ids[2])
        assert p.free_page_count == 1
        got = None

        def alloc():
            nonlocal got
            got = p.alloc()

        m, f = flushes(hooks, alloc)
        assert got == ids[2]
        assert p.page_count == pages
        assert m >= 1 and f == 0
    finally:
        force_close(p)


def test_none_a_kill_loses_the_commits_since_sync_and_nothing_else(tmp_path):
    """In "none" mode the state since the last sync() lives in the process: a
    kill (the page cache copied) shows exactly the last synced state."""
    path = tmp_path / "n.mpp"
    p = Pager.create(path, durability="none")
    try:
        p.free_bulk(p.alloc_bulk(40))
        p.sync()
        rnd = random.Random(3)
        held: list[int] = []
        synced: set[int] = set()
        for step in range(30):
            if rnd.random() < 0.6 or not held:
                held.append(p.alloc())
            else:
                p.free(held.pop(rnd.randrange(len(held))))
            if step % 7 == 6:
                p.sync()
                synced = set(held)
            crashed = copy_of(path, tmp_path / f"c{step}.mpp")
            assert allocated_of(crashed) == synced, f"step {step}"
            assert crate_allocated(crashed) == synced
    finally:
        force_close(p)


CHILD = """
import json, os, sys, random
from mappedpages import Pager

path, mode, log = sys.argv[1], sys.argv[2], sys.argv[3]
p = Pager.open(path, durability=mode)
fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
held = sorted(p.allocated_pages())
rng = random.Random(os.getpid())

def say(kind, ids):
    os.write(fd, (json.dumps([kind, sorted(ids)]) + "\\n").encode())

print("ready", flush=True)
n = 0
while True:
    n += 1
    if rng.random() < 0.55 or len(held) < 3:
        pid = p.alloc()
        v = p.page(pid)
        v[:8] = pid.to_bytes(8, "little")
        v.release()
        held.append(pid)
    else:
        victim = held.pop(rng.randrange(len(held)))
        p.free(victim)
    if mode == "none":
        # Every state may become the durable one: with no other free page,
        # an alloc makes the pending frees durable, and all since sync() with them.
        say("op", held)
        if n % 4 == 0:
            say("syncing", held)
            p.sync()
            say("acked", held)
    else:
        say("acked", held)
"""


@modes
def test_sigkill_keeps_every_acknowledged_commit(tmp_path, mode):
    """A child allocates and frees in a loop ("none": with a sync() every four
    calls) and is killed with SIGKILL. The file must open consistent and show
    the last acknowledged state, or (one operation or one sync() in flight) the
    next one ("none": or a state reached since the last sync, which an alloc
    with no other free page makes durable to reuse the pages freed since); the
    pages of an acknowledged state hold what was written to them before a
    sync() ("none") or before they were acknowledged (data written
    through views is only durable at sync(), so it is checked in "none" only)."""
    path = tmp_path / "k.mpp"
    log = tmp_path / "log.jsonl"
    with Pager.create(path, durability=mode) as p:
        p.free_bulk(p.alloc_bulk(200))
    rng = random.Random(99)
    for rnd in range(KILL_ROUNDS):
        if log.exists():
            log.unlink()
        kill_when_ready(
            [sys.executable, "-c", textwrap.dedent(CHILD), str(path), mode, str(log)],
            rng.uniform(0.05, 0.25),
        )
        records = []
        for text in log.read_text().splitlines() if log.exists() else []:
            try:
                records.append(json.loads(text))
            except ValueError:
                break  # a line cut by the kill
        acked = [set(ids) for kind, ids in records if kind == "acked"]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RecoveryWarning)
            q = Pager.open(path, durability=mode)
        try:
            st = state_of(q)
            assert count_problem(q, st) is None, f"round {rnd}: {count_problem(q, st)}"
            got = set(st.allocated)
            if acked:
                last = acked[-1]
                if mode == "none":
                    # The last synced state, or one the child reached after it:
                    # made durable early to reuse freed pages, or by a sync in flight.
                    since = max(i for i, (kind, _) in enumerate(records) if kind == "acked")
                    allowed = [last] + [set(ids) for _, ids in records[since + 1 :]]
                    assert got in allowed, f"round {rnd}: not a state since the last sync"
                    for pid in got:
                        v = q.page(pid)
                        assert int.from_bytes(v[:8], "little") == pid
                        v.release()
                else:
                    # The last acknowledged state, or one operation more.
                    assert len(got ^ last) <= 1, (
                        f"round {rnd}: {sorted(got ^ last)} differ from the last "
                        f"acknowledged state"
                    )
        finally:
            force_close(q)
