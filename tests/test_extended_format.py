"""The extended layout's crash-safety rules, checked on the bytes.

Each test builds a file past the v0.2 cap, then edits or inspects the free-map
and directory-index pages directly (FORMAT.md, "The extended layout"), so what
is checked is the on-disk rule, not only the API's view of it.
"""

from __future__ import annotations

import struct
import warnings
import zlib

import pytest
from support.geometry import layout
from support.iohooks import KINDS, IoHooks, create_pager
from support.workloads import _list_system

import mappedpages
from mappedpages import CorruptMetadata, Pager, ReadOnlyPager, RecoveryWarning

PS = 1024
C = layout(PS).chunk_pages  # pages per chunk; the v0.2 cap


def page(data: bytes, n: int) -> bytes:
    return data[n * PS : (n + 1) * PS]


def seal(body: bytes) -> bytes:
    """A page with its trailing CRC."""
    assert len(body) == PS
    return body[:-4] + struct.pack("<I", zlib.crc32(body[:-4]) & 0xFFFFFFFF)


def meta_generation(data: bytes) -> int:
    gens = []
    for n in (1, 2):
        pg = page(data, n)
        if zlib.crc32(pg[:-4]) & 0xFFFFFFFF == struct.unpack_from("<I", pg, PS - 4)[0]:
            gens.append(struct.unpack_from("<Q", pg, 8)[0])
    return max(gens)


def chunk_copies(data: bytes, i: int) -> list[tuple[int, int]]:
    """(generation, crc ok) of chunk i's two free-map copies."""
    out = []
    for w in (0, 1):
        pg = page(data, i * C + w)
        ok = zlib.crc32(pg[:-4]) & 0xFFFFFFFF == struct.unpack_from("<I", pg, PS - 4)[0]
        out.append((struct.unpack_from("<Q", pg, 0)[0], int(ok)))
    return out


def assert_falls_back(path, allocated: list[int]) -> None:
    """Open discards the newest metadata copy (its free map is not there) and
    shows the state of the older one."""
    with pytest.warns(RecoveryWarning, match="free-map page"):
        p = Pager.open(path)
    with p:
        assert sorted(p.allocated_pages()) == allocated


def extended_file(path, extra: int = 100) -> list[int]:
    with Pager.create(path, PS) as p:
        ids = p.alloc_bulk(C + extra)
        assert p.format_version == "0.3"
    return ids


def test_upgrade_marks_page0_and_keeps_the_rest(tmp_path):
    path = tmp_path / "x.mpp"
    with Pager.create(path, PS) as p:
        p.alloc_bulk(C - 3)
        assert p.page_count == C and p.format_version == "0.2"
        before = path.read_bytes()[:PS]
        assert before[5] == 2 and before[13:16] == b"\0\0\0"
        p.alloc()
        assert p.format_version == "0.3"
    after = path.read_bytes()
    assert after[5] == 3 and after[13:16] == b"EXT"
    # Only bytes 5 and 13-15 of page 0 changed.
    diff = [i for i in range(PS) if before[i] != after[i]]
    assert diff == [5, 13, 14, 15]
    # Chunk 1: copy A written at the upgrade's generation, copy B and the index
    # copies still zero.
    gen = meta_generation(after)
    assert chunk_copies(after, 1)[0] == (gen, 1)
    for n in (C + 1, C + 2, C + 3):
        assert page(after, n) == bytes(PS)


def test_minor_3_without_the_mark_is_refused(tmp_path):
    path = tmp_path / "x.mpp"
    extended_file(path)
    data = bytearray(path.read_bytes())
    data[13:16] = b"\0\0\0"
    path.write_bytes(bytes(data))
    with pytest.raises(mappedpages.CorruptSuperblock):
        Pager.open(path)
    with pytest.raises(mappedpages.CorruptSuperblock):
        ReadOnlyPager.open(path)


def test_marked_file_in_the_small_state_opens_like_v02(tmp_path):
    """An upgrade cut short after page 0's mark: the state is still v0.2's."""
    path = tmp_path / "x.mpp"
    with Pager.create(path, PS) as p:
        ids = p.alloc_bulk(50)
    data = bytearray(path.read_bytes())
    data[5] = 3
    data[13:16] = b"EXT"
    path.write_bytes(bytes(data))
    with Pager.open(path) as p:
        assert p.format_version == "0.3"
        assert list(p.allocated_pages()) == ids
        more = p.alloc_bulk(C)  # grows across the cap from here
        assert more[0] == ids[-1] + 1
    with Pager.open(path) as p:
        assert list(p.allocated_pages()) == ids + more


def test_a_leftover_copy_never_becomes_current(tmp_path):
    """A free-map copy written by a commit that never reached its commit point
    carries generation G+1. Without the writer's clean-up at open, the next
    commit (which raises the generation to G+1 without touching that chunk)
    would make it current. Forge one and check it is ignored, then erased."""
    path = tmp_path / "x.mpp"
    ids = extended_file(path, extra=200)
    with Pager.open(path) as p:
        p.free_bulk(ids[:10])  # free pages in chunk 0 only, so chunk 1 stays put
    data = bytearray(path.read_bytes())
    gen = meta_generation(bytes(data))
    (ga, oka), (gb, okb) = chunk_copies(bytes(data), 1)
    live = 0 if (oka and (not okb or ga >= gb)) else 1
    other = 1 - live
    # The leftover: the live copy with every page of the chunk marked free
    # except its layout pages, stamped G+1 (as an unfinished commit would).
    body = bytearray(page(bytes(data), C + live))
    struct.pack_into("<Q", body, 0, gen + 1)
    bitmap = bytearray(C // 8)
    bitmap[0] = 0x0F
    body[24 : PS - 4] = bitmap
    total = max(
        (struct.unpack_from("<QQ", page(bytes(data), n), 0) for n in (1, 2)),
        key=lambda tg: tg[1],
    )[0]
    span = min(C, total - C)
    struct.pack_into("<Q", body, 16, span - 4)
    start = (C + other) * PS
    data[start : start + PS] = seal(bytes(body))
    path.write_bytes(bytes(data))
    with Pager.open(path) as p:
        allocated = set(p.allocated_pages())
        assert set(ids[C - 3 + 1 :]) <= allocated  # chunk 1's pages still allocated
        # The leftover was erased before this writer committed anything.
        assert page(path.read_bytes(), C + other) == bytes(PS)
        p.free(ids[20])  # a commit in chunk 0: generation G+1
    with Pager.open(path) as p:
        assert set(p.allocated_pages()) == allocated - {ids[20]}


def test_damaged_free_map_falls_back_to_the_older_metadata_copy(tmp_path):
    path = tmp_path / "x.mpp"
    ids = extended_file(path)
    with Pager.open(path) as p:
        before = sorted(p.allocated_pages())
        p.free(ids[-1])  # the last page is in chunk 1: rewrites its free-map page
    data = bytearray(path.read_bytes())
    gen = meta_generation(bytes(data))
    copies = chunk_copies(bytes(data), 1)
    newest = [w for w in (0, 1) if copies[w] == (gen, 1)]
    assert newest, copies
    data[(C + newest[0]) * PS + 100] ^= 0xFF  # damage the copy the newest commit wrote
    path.write_bytes(bytes(data))
    # The commit whose free-map page is gone is dropped as a whole.
    assert_falls_back(path, before)


def test_both_free_map_copies_damaged_is_corrupt_metadata(tmp_path):
    path = tmp_path / "x.mpp"
    ids = extended_file(path)
    with Pager.open(path) as p:
        p.free(ids[-1])  # now both metadata copies rely on chunk 1
    data = bytearray(path.read_bytes())
    for w in (0, 1):
        data[(C + w) * PS + 100] ^= 0xFF
    path.write_bytes(bytes(data))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RecoveryWarning)
        with pytest.raises(CorruptMetadata):
            Pager.open(path)
        with pytest.raises(CorruptMetadata):
            ReadOnlyPager.open(path)


def test_layout_pages_are_refused_and_never_handed_out(tmp_path):
    path = tmp_path / "x.mpp"
    with Pager.create(path, PS) as p:
        ids = p.alloc_bulk(3 * C)
        layout = [i * C + k for i in (1, 2, 3) for k in range(4) if i * C + k < p.page_count]
        assert not set(layout) & set(ids)
        for n in layout:
            with pytest.raises(mappedpages.ReservedPage):
                p.free(n)
            with pytest.raises(mappedpages.ReservedPage):
                p.page(n)
        with pytest.raises(mappedpages.ReservedPage):
            p.free_bulk([ids[0], C + 2])
        assert ids[0] in set(p.allocated_pages())


def test_flushes_per_commit_in_the_extended_layout(tmp_path):
    """One flush per commit in compat and fast: an msync of the metadata copy
    when only chunk 0 changes, one fdatasync when a free-map page does."""
    for mode in ("compat", "fast"):
        path = tmp_path / f"{mode}.mpp"
        hooks = IoHooks()
        p = create_pager(path, PS, hooks, durability=mode)
        try:
            ids = p.alloc_bulk(C + 50)
            assert p.format_version == "0.3"
            for target, want in ((ids[0], (1, 0)), (ids[-1], (0, 1))):
                for what in ("free", "alloc"):
                    before = hooks.counts()
                    if what == "free":
                        p.free(target)
                    else:
                        assert p.alloc() == target
                    after = hooks.counts()
                    got = (after["msync"] - before["msync"], after["fsync"] - before["fsync"])
                    assert got == want, (mode, target, what, got)
        finally:
            p.close()


def test_a_protected_write_is_one_commit_in_the_extended_layout(tmp_path):
    path = tmp_path / "x.mpp"
    hooks = IoHooks()
    p = create_pager(path, PS, hooks, durability="compat")
    try:
        pid = p.alloc_protected()
        p.alloc_bulk(C)
        assert p.format_version == "0.3"
        before = hooks.counts()
        with p.write_protected(pid) as w:
            w.page[:4] = b"abcd"
        after = hooks.counts()
        # The staged copy and the directory copy (written with pwrite), the
        # index page, the root page holding their CRCs and the metadata copy,
        # all under one fdatasync (3 flushes before issue 18, then 2).
        assert (after["msync"] - before["msync"], after["fsync"] - before["fsync"]) == (0, 1)
    finally:
        p.close()
    with Pager.open(path) as q:
        assert bytes(q.protected_page(pid)[:4]) == b"abcd"


def test_a_commit_that_reached_the_disk_in_part_is_rejected_by_its_seal(tmp_path):
    """The metadata copy and the free-map pages it selects go out under one
    flush, so a power loss can keep the copy without a page. Here a commit
    frees a page of chunk 0 and allocates one in chunk 1 (free counts stay
    equal, so only the seal can tell); the image keeps its new metadata copy
    but chunk 1's free-map page as before. Open must show the state before the
    commit, not the new chunk 0 with the old chunk 1."""
    path = tmp_path / "x.mpp"
    ids = extended_file(path)
    image_before = path.read_bytes()
    gen = meta_generation(image_before)
    with Pager.open(path) as p:
        state_before = sorted(p.allocated_pages())
        with p.transaction():
            p.free(ids[0])
            new = p.alloc()
        assert new > C  # chunk 1
    after = path.read_bytes()
    torn = bytearray(image_before)
    for n in (1, 2):
        pg = page(after, n)
        if struct.unpack_from("<Q", pg, 8)[0] == gen + 1:
            torn[n * PS : (n + 1) * PS] = pg
    assert bytes(torn) != image_before
    path.write_bytes(bytes(torn))
    assert_falls_back(path, state_before)


def test_many_free_map_pages_in_one_commit_share_one_fdatasync(tmp_path):
    path = tmp_path / "x.mpp"
    hooks = IoHooks()
    p = create_pager(path, PS, hooks, durability="compat")
    try:
        ids = p.alloc_bulk(12 * C)
        # One page in each of chunks 1..11: 11 free-map pages in one commit.
        victims = [ids[i * C] for i in range(1, 12)]
        before = hooks.counts()
        p.free_bulk(victims)
        after = hooks.counts()
        assert after["fsync"] - before["fsync"] == 1  # everything under one fdatasync
        assert after["msync"] - before["msync"] == 0
    finally:
        p.close()
    with Pager.open(path) as q:
        assert not set(victims) & set(q.allocated_pages())


def test_damaged_layout_pages_never_crash_or_mislead(tmp_path):
    """Bit flips in the pages the extended layout reads on open (page 0, the
    metadata copies, free-map and index copies of two chunks): open either
    refuses with a documented error or opens a state whose counts add up."""
    import random

    base = tmp_path / "base.mpp"
    with Pager.create(base, PS) as p:
        pids = [p.alloc_protected() for _ in range(3)]
        ids = p.alloc_bulk(2 * C)
        p.free_bulk(ids[::97])
        with p.write_protected(pids[1]) as w:
            w.page[:3] = b"xyz"
    good = base.read_bytes()
    targets = [0, 1, 2] + [i * C + k for i in (1, 2) for k in range(4)]
    rnd = random.Random(7)
    opened = refused = 0
    for trial in range(100):
        data = bytearray(good)
        for _ in range(rnd.choice([1, 1, 2, 8])):
            n = rnd.choice(targets)
            off = n * PS + rnd.randrange(PS)
            data[off] ^= 1 << rnd.randrange(8)
        path = tmp_path / f"t{trial}.mpp"
        path.write_bytes(bytes(data))
        cls = Pager if trial % 2 else ReadOnlyPager
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RecoveryWarning)
                q = cls.open(path)
        except mappedpages.CorruptFileError:
            refused += 1
            continue
        with q:
            opened += 1
            chunk = C
            layout = 3 + (4 * ((q.page_count - 1) // chunk) if q.page_count > chunk else 0)
            allocated = list(q.allocated_pages())
            system = len(_list_system(q._handle))
            assert q.free_page_count == q.page_count - layout - len(allocated) - system
            assert all(n < chunk or n % chunk >= 4 for n in allocated)
        path.unlink()
    assert opened > 15 and refused > 3, (opened, refused)


@pytest.mark.parametrize("kind", ["msync", "fsync", "fallocate", "mmap"])
def test_a_failing_call_during_the_upgrade_leaves_old_or_new(tmp_path, kind):
    """Each call of each kind the upgrade makes fails in turn: the operation
    raises OSError (and a failed flush poisons the pager), and a reopen shows
    the state before the upgrade or after it, never anything else."""
    import errno as errno_mod

    err = {"msync": errno_mod.EIO, "fsync": errno_mod.EIO, "fallocate": errno_mod.ENOSPC,
           "mmap": errno_mod.ENOMEM}[kind]
    tried = 0
    for n in range(1, 40):
        path = tmp_path / f"{kind}{n}.mpp"
        hooks = IoHooks()
        p = create_pager(path, PS, hooks, durability="compat")
        before = p.alloc_bulk(C - 3)
        start = hooks.calls(KINDS[kind])
        hooks.fail(KINDS[kind], n, err)
        try:
            new = p.alloc_bulk(20)
        except OSError as exc:
            assert exc.errno == err
            new = None
            if kind in ("msync", "fsync"):
                with pytest.raises(mappedpages.Unavailable):
                    p.alloc()
        hooks.clear_faults()
        made = hooks.calls(KINDS[kind]) - start
        p.close()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RecoveryWarning)
            with Pager.open(path) as q:
                got = list(q.allocated_pages())
                assert got in (before, before + (new or [])) or (
                    new is None and got[: len(before)] == before and len(got) == len(before) + 20
                ), (kind, n)
                q.alloc_bulk(30)  # the file keeps working in whichever layout it is
            with Pager.open(path) as q:
                assert list(q.allocated_pages())[: len(before)] == before
        if new is None:
            tried += 1
        if n > made:
            break
    assert tried >= 1


def test_view_refuses_runs_over_layout_pages(tmp_path):
    path = tmp_path / "x.mpp"
    with Pager.create(path, PS) as p:
        p.alloc_bulk(2 * C)
        for first, n in ((C - 1, 2), (C - 5, 6), (C + 3, 1), (C, 4), (2 * C - 10, 12)):
            with pytest.raises(mappedpages.ReservedPage):
                p.view(first, n)
        for first, n in ((C - 5, 5), (C + 4, 100), (2 * C - 10, 10)):
            v = p.view(first, n)
            assert len(v) == n * PS
            v.release()
    with ReadOnlyPager.open(path) as r:
        with pytest.raises(mappedpages.ReservedPage):
            r.view(C - 1, 2)


BUSY_WRITER = """
import random, sys, time
import mappedpages
p = mappedpages.Pager.open(sys.argv[1], durability="fast")
CHUNK = int(sys.argv[3])
rnd = random.Random(1)
live = []
print("ready", flush=True)
end = time.monotonic() + float(sys.argv[2])
while time.monotonic() < end:
    # Allocations outnumber frees, up to a bound: the file stays near its 40
    # chunks however fast the machine (unbounded, it reached 6 GB in 6 s).
    if (rnd.random() < 0.55 and len(live) < 2 * CHUNK) or not live:
        live += p.alloc_bulk(rnd.choice([1, 50, 500, 3000]))
    else:
        k = rnd.randrange(len(live))
        n = min(len(live) - k, rnd.choice([1, 10, 300]))
        p.free_bulk(live[k : k + n])
        del live[k : k + n]
p.close()
"""


def test_reader_keeps_up_with_a_busy_writer(tmp_path):
    """A reader loads the free-map pages one after another while a writer in
    another process commits as fast as it can; a copy the reader needs can be
    rewritten (twice, by two commits) under it. That is a race, not damage:
    refresh must keep looking while the writer makes progress, and never
    report a corrupt file. (Five looks were not enough: about one refresh in
    forty failed here.)"""
    import subprocess
    import sys
    import time

    path = tmp_path / "busy.mpp"
    with Pager.create(path, PS) as p:
        p.alloc_bulk(40 * C)  # 40 chunks: a load reads 80 free-map copies
    proc = subprocess.Popen(
        [sys.executable, "-c", BUSY_WRITER, str(path), "6", str(C)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        assert proc.stdout.readline().strip() == b"ready"
        refreshes = 0
        with ReadOnlyPager.open(path) as r:
            while proc.poll() is None:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RecoveryWarning)
                    r.refresh()
                assert r.format_version == "0.3"
                refreshes += 1
                time.sleep(0.001)
    finally:
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err.decode(errors="replace")
    assert refreshes > 50
