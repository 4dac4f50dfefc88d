"""Tests of record trees: ``Transaction.tree_apply`` and ``tree_get`` (csrc/tree.c, records.c).

A hypothesis model applies batches of puts and deletes to a tree and to a dict,
in both layouts, at two page sizes, across reopens and blocks that raise; after
each batch the tree is decoded page by page from the format (FORMAT.md, "Record
trees") and must hold exactly the model's items, every leaf at one depth, keys
ascending in every page and within their parent's bounds, and the allocated
pages exactly the tree's pages. Bad input of every kind raises the documented
error and changes nothing; a file that cannot grow raises FileFull; readers see
their commit's tree; child interpreters check that input or pages changed from
another thread, or corrupted pages, never crash the process; a corrupt child
id is refused before it is followed, and tiny records at large page sizes split
at the u16 record count.
"""

from __future__ import annotations

import errno
import os
import random
import shutil
import struct
import subprocess
import sys
import tempfile
import textwrap
import time
from array import array

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.pagers import force_close
from support.record_pages import (
    HDR,
    REC,
    apply,
    branch_bytes,
    decode,
    page_bytes,
    snapshot,
    walk,
)

from mappedpages import (
    RECORD_BRANCH,
    RECORD_DELETE,
    RECORD_LEAF,
    FileFull,
    MappedPageError,
    OutOfBounds,
    Pager,
    ReadOnlyPager,
    ReservedPage,
    pack_record,
    pack_records,
    tree_max_record,
)
from mappedpages._core import ffi, lib
from mappedpages._records import tree_apply as core_tree_apply

SLOT = 1 << 63  # tree.c names a new page not yet allocated by SLOT | its slot
MISSING = object()


class Abort(Exception):
    pass


def check(pager, model: dict, absent=(), reads: int | None = None) -> None:
    """The tree holds exactly ``model``; ``reads`` keys of it (all: None) read back."""
    root = pager.roots[0]
    pages, items, _ = walk(pager, root)
    assert items == sorted(model.items())
    assert set(pager.allocated_pages()) == pages, "a page leaked or a node is free"
    keys = list(model) if reads is None else random.Random(1).sample(list(model), reads)
    for k in keys:
        assert pager.tree_get(root, k) == model[k]
    assert list(pager.tree_items(root)) == items
    ordered = [k for k, _ in items]
    bounds = [(a, b) for a in ordered[:3] + [b"", None] for b in ordered[-3:] + [None]]
    for lo, hi in random.Random(len(items)).sample(bounds, min(4, len(bounds))):
        want = [(k, v) for k, v in items if (lo is None or k >= lo) and (hi is None or k < hi)]
        assert list(pager.tree_items(root, lo, hi)) == want
    for k in absent:
        if k not in model:
            assert pager.tree_get(root, k, MISSING) is MISSING


def applied(model: dict, changes: dict) -> dict:
    """The model after a batch: ``changes`` maps keys to values, or None to delete."""
    after = {**model, **{k: v for k, v in changes.items() if v is not None}}
    for k in [k for k, v in changes.items() if v is None]:
        after.pop(k, None)
    return after


def fill(n: int, value_len: int = 20) -> dict[bytes, bytes]:
    return {b"k%06d" % i: (b"v%d-" % i * value_len)[:value_len] for i in range(n)}


@pytest.fixture
def pager(tmp_path):
    p = Pager.create(tmp_path / "t.mpp", 1024)
    yield p
    force_close(p)


@pytest.fixture
def tree(pager):
    """A committed two-level tree of 400 keys (root in slot 0) and its model."""
    model = fill(400)
    apply(pager, 0, pack_records(model.items()))
    assert walk(pager, pager.roots[0])[2] == 2
    return pager, model


# -------- 1. The model

keys = st.one_of(st.binary(max_size=20), st.binary(max_size=1))
batch = st.tuples(
    st.dictionaries(keys, st.one_of(st.none(), st.binary(max_size=60)), max_size=40),
    st.lists(st.integers(0, 1 << 20), max_size=12),  # existing keys to delete, by rank
    st.integers(0, 400),  # keys added in bulk, to grow the tree
    st.sampled_from(["keep", "keep", "reopen", "abort"]),
)


@pytest.mark.parametrize("page_size", [1024, 4096])
@pytest.mark.parametrize("layout", ["0.2", "0.3"])
@pytest.mark.parametrize("durability", ["fast", "none"])
@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(batches=st.lists(batch, min_size=1, max_size=8))
def test_model(tmp_path, page_size, layout, durability, batches):
    path = tmp_path / f"m-{time.monotonic_ns()}.mpp"
    p = Pager.create(path, page_size, layout=layout, durability=durability)
    model: dict[bytes, bytes] = {}
    try:
        for n, (drawn, drops, bulk, then) in enumerate(batches):
            changes = dict(drawn)
            ranked = sorted(model)
            for r in drops if ranked else ():
                changes[ranked[r % len(ranked)]] = None
            for i in range(bulk):
                changes[b"bulk%d-%04d" % (n, i)] = b"v%d" % i * (i % 7)
            after = applied(model, changes)
            root = p.roots[0]
            if then == "abort":
                with pytest.raises(Abort), p.transaction() as tx:
                    new, _ = tx.tree_apply(root, pack_records(changes.items()))
                    p.set_root(0, new)
                    for k in list(changes)[:5]:  # the writer reads its own batch
                        assert p.tree_get(new, k) == after.get(k)
                    raise Abort
            else:
                _, delta = apply(p, root, pack_records(changes.items()))
                assert delta == len(after) - len(model)
                model = after
            if then == "reopen":
                p.close()
                p = Pager.open(path, durability=durability)
            check(p, model, absent=[*changes, b"absent", b"\xff" * 21])
    finally:
        force_close(p)
        os.unlink(path)


# -------- 2, 3. Large batches, several batches in one block, rollback


def test_key_order_around_the_eight_byte_compare(tmp_path):
    # records.c compares a key's first 8 bytes as one big-endian number: keys
    # equal there, keys that are prefixes of others, bytes past 0x7f and keys
    # shorter than 8 bytes must still sort as bytes do in Python.
    base = [b"", b"\x00", b"\x7f" * 8, b"\x80" + b"\x00" * 7, b"\xff" * 7, b"\xff" * 8, b"\xff" * 9]
    stems = [b"abcdefg", b"abcdefgh", b"abcdefgi", b"\x00" * 8, b"\x01" + b"\xff" * 7]
    keys = set(base)
    for stem in stems:
        for tail in (b"", b"\x00", b"\x00\x00", b"\x01", b"\x7f", b"\x80", b"\xff", b"\xff\x00"):
            keys.add(stem + tail)
            keys.update(stem[:n] + tail for n in range(1, 8))
    for i in range(600):  # enough for branch pages, routed by the same compare
        keys.add(b"abcdefgh" + i.to_bytes(2, "big"))
        keys.add(b"abcdefg" + i.to_bytes(2, "little"))
    order = sorted(keys)
    r = random.Random(8)
    with Pager.create(tmp_path / "k.mpp", 1024) as p:
        model: dict[bytes, bytes] = {}
        shuffled = list(keys)
        r.shuffle(shuffled)
        for at in range(0, len(shuffled), 97):
            batch = {k: k[::-1] + b"v" for k in shuffled[at : at + 97]}
            apply(p, p.roots[0], pack_records(batch.items()))
            model.update(batch)
        assert walk(p, p.roots[0])[2] >= 2
        check(p, model, absent=[b"abcdefgh\x00\x00\x00", b"\xff" * 10, b"abcdefg\xff\xff\xff"])
        assert [k for k, _ in p.tree_items(p.roots[0])] == order
        gone = order[::3]
        apply(p, p.roots[0], pack_records((k, None) for k in gone))
        check(p, {k: v for k, v in model.items() if k not in set(gone)}, absent=gone)


def test_large_batches_split_deep_then_empty(tmp_path):
    p = Pager.create(tmp_path / "big.mpp", 1024, durability="none")
    rng = random.Random(7)
    order = list(range(20000))
    rng.shuffle(order)
    model = {b"key%08d" % i: b"value-%d" % i * 3 for i in order}
    root, delta = apply(p, 0, pack_records(model.items()))
    assert delta == 20000
    pages, items, depth = walk(p, root)
    assert depth >= 3 and items == sorted(model.items())
    assert set(p.allocated_pages()) == pages
    # Delete most of it in a few batches, rewriting some values on the way.
    ks = sorted(model)
    for part in range(4):
        changes = dict.fromkeys(ks[part::5])
        changes.update(dict.fromkeys(ks[part + 1 :: 97], b"new"))
        root, delta = apply(p, root, pack_records(changes.items()))
        after = applied(model, changes)
        assert delta == len(after) - len(model) < 0
        model = after
        check(p, model, absent=ks[part:500:5])
    root, delta = apply(p, root, pack_records((k, None) for k in model))
    assert (root, delta) == (0, -len(model))
    assert list(p.allocated_pages()) == []
    assert p.tree_get(0, ks[0]) is None
    p.close()


def test_several_batches_in_one_transaction(pager):
    model = fill(300)
    with pager.transaction() as tx:
        r1, d1 = tx.tree_apply(0, pack_records(model.items()))
        r2, d2 = tx.tree_apply(r1, pack_records((k, None) for k in list(model)[::2]))
        r3, d3 = tx.tree_apply(r2, pack_records([(b"k000001", b"x"), (b"zz", b"y")]))
        pager.set_root(0, r3)
        assert (d1, d2, d3) == (300, -150, 1)
        assert pager.tree_get(r3, b"k000001") == b"x" and pager.tree_get(r3, b"k000000") is None
    for k in list(model)[::2]:
        del model[k]
    model.update({b"k000001": b"x", b"zz": b"y"})
    check(pager, model)


def test_deleting_absent_keys_changes_nothing(tree):
    p, model = tree
    before = snapshot(p)
    with p.transaction() as tx:
        changes = pack_records([(b"", None), (b"k0000005", None), (b"zzz", None)])
        assert tx.tree_apply(p.roots[0], changes) == (p.roots[0], 0)
        assert tx.tree_apply(p.roots[0], b"") == (p.roots[0], 0)
        assert tx.tree_apply(0, changes) == (0, 0)
        assert tx.dirty_pages == 0
    assert snapshot(p) == before


def test_changes_may_be_any_bytes_like(pager):
    recs = pack_records([(b"a", b"1"), (b"b", b"2")])
    for i, buf in enumerate([bytearray(recs), memoryview(recs), array("B", recs)]):
        root, delta = apply(pager, pager.roots[0], buf)
        assert delta == (2 if i == 0 else 0) and pager.tree_get(root, b"b") == b"2"
    check(pager, {b"a": b"1", b"b": b"2"})


def test_raise_in_block_rolls_back(tree):
    p, model = tree
    old = p.roots[0]
    before = snapshot(p)
    with pytest.raises(Abort), p.transaction() as tx:
        changes = {k: None for k in list(model)[::2]}
        changes.update({b"new%04d" % i: b"n" * 50 for i in range(500)})
        new, delta = tx.tree_apply(old, pack_records(changes.items()))
        p.set_root(0, new)
        assert delta == 300 and p.tree_get(new, b"new0001") == b"n" * 50
        assert p.tree_get(old, b"k000000") == model[b"k000000"]  # the old tree is whole
        tx.tree_apply(new, pack_record(b"k000001", b"again"))
        raise Abort
    assert snapshot(p) == before
    check(p, model)
    p.close()
    p = Pager.open(p.path)
    check(p, model)
    p.close()


# -------- 4. Bad input: the documented error, and nothing changed


def refused(p, root, changes, exc) -> None:
    before = snapshot(p)
    with p.transaction() as tx:
        with pytest.raises(exc):
            tx.tree_apply(root, changes)
        assert tx.dirty_pages == 0
    assert snapshot(p) == before


MAX_1K = (1024 - 8) // 4 - 8
BAD_CHANGES = {
    "descending": pack_record(b"k1", b"1") + pack_record(b"k0", b"1"),
    "duplicate": pack_record(b"k1", b"1") + pack_record(b"k1", b"2"),
    "duplicate delete": pack_record(b"k1", None) + pack_record(b"k1", b"2"),
    "bad after good": pack_records((b"a%04d" % i, b"x") for i in range(300)) + b"\x01",
    "truncated value": pack_records([(b"a", b"1"), (b"b", b"22")])[:-1],
    "truncated head": pack_record(b"a", b"1") + REC.pack(1, 1)[:5],
    "vlen past the end": REC.pack(1, 1000) + b"ax",
    "klen past the end": REC.pack(0xFFFF, RECORD_DELETE) + b"a" * 100,
    "record too big": pack_record(b"k", b"x" * (MAX_1K - 6)),
    "delete too big": pack_record(b"k" * (MAX_1K - 5), None),
}


@pytest.mark.parametrize("case", sorted(BAD_CHANGES))
def test_bad_changes(tree, case):
    p, model = tree
    refused(p, p.roots[0], BAD_CHANGES[case], ValueError)
    refused(p, 0, BAD_CHANGES[case], ValueError)
    check(p, model)


@pytest.mark.parametrize("changes", ["a", [1, 2], None, 5, 3.0, object()])
def test_changes_not_bytes(tree, changes):
    p, _ = tree
    refused(p, p.roots[0], changes, TypeError)


BAD_ROOTS = [(True, TypeError), ("3", TypeError), (3.0, TypeError), (None, TypeError)]
BAD_ROOTS += [(-1, ValueError), (2**64, ValueError), (1, ReservedPage), (2, ReservedPage)]
BAD_ROOTS += [(10**6, OutOfBounds), (SLOT | 3, OutOfBounds), (2**64 - 1, OutOfBounds)]


@pytest.mark.parametrize("root,exc", BAD_ROOTS)
def test_bad_root(tree, root, exc):
    p, model = tree
    refused(p, root, pack_record(b"k000001", b"x"), exc)
    with pytest.raises(exc):
        p.tree_get(root, b"k000001")
    check(p, model)


ANY = object()


def bad_pages(ps: int, a: int, b: int, leaf: int, leaf2: int):
    """name: (page a, the root; page b; tree_apply's error; tree_get's error for b"z").

    tree_get's ``ANY``: a lookup reads in place only the records before the one
    it wants, so it may answer from a page whose later records are out of
    order (it never reads past the page); tree_apply checks whole pages.
    """
    good = page_bytes(ps, RECORD_LEAF, [(b"a", b"1"), (b"b", b"2")])
    one = page_bytes(ps, RECORD_LEAF, [(b"a", b"")])
    fork = branch_bytes(ps, [(b"", leaf), (b"m", b)])  # "a" goes to leaf, "z" to b
    bad = (ValueError, ValueError)
    return {
        "zeros": (bytes(ps), None, *bad),
        "random bytes": (b"\5" + random.Random(3).randbytes(ps - 1), None, *bad),
        "kind 3": (b"\3" + good[1:], None, *bad),
        "byte 1 set": (good[:1] + b"\1" + good[2:], None, *bad),
        "end past page": (good[:4] + struct.pack("<I", ps + 1) + good[8:], None, *bad),
        "end short": (good[:4] + struct.pack("<I", 20) + good[8:], None, *bad),
        "n too big": (good[:2] + struct.pack("<H", 3) + good[4:], None, *bad),
        "keys descending": (page_bytes(ps, RECORD_LEAF, [(b"b", b""), (b"a", b"")]), None,
                            ValueError, ANY),
        "leaf with a delete": (one[:10] + struct.pack("<I", RECORD_DELETE) + one[14:], None, *bad),
        "empty branch": (HDR.pack(RECORD_BRANCH, 0, 0, 8).ljust(ps, b"\0"), None, *bad),
        "branch vlen 7": (page_bytes(ps, RECORD_BRANCH, [(b"", b"1234567")]), None, *bad),
        "self cycle": (branch_bytes(ps, [(b"", a)]), None, *bad),
        "two-page cycle": (branch_bytes(ps, [(b"", b)]), branch_bytes(ps, [(b"", a)]), *bad),
        "child zeros": (fork, bytes(ps), *bad),
        "child reserved": (branch_bytes(ps, [(b"", leaf), (b"m", 2)]), None, ValueError,
                           ValueError),
        "child past end": (branch_bytes(ps, [(b"", leaf), (b"m", 10**6)]), None, ValueError,
                           ValueError),
        "leaves at two depths": (fork, branch_bytes(ps, [(b"", leaf2)]), ValueError, None),
        "one leaf twice": (branch_bytes(ps, [(b"", leaf), (b"m", leaf)]), None, ValueError, None),
        "child free": (fork, "free", ValueError, None),
    }


@pytest.mark.parametrize("case", sorted(bad_pages(1024, 0, 0, 0, 0)))
def test_bad_pages(pager, case):
    a, b, leaf, leaf2 = pager.alloc_bulk(4)
    root_page, b_page, apply_exc, get_exc = bad_pages(1024, a, b, leaf, leaf2)[case]
    leaf_page = page_bytes(1024, RECORD_LEAF, [(b"a", b"1"), (b"b", b"2")])
    with pager.transaction() as tx:
        tx.write_pages([a, leaf, leaf2], root_page + leaf_page + leaf_page)
        if b_page == "free":
            tx.write_pages([b], leaf_page)
            pager.free(b)
        elif b_page is not None:
            tx.write_pages([b], b_page)
        pager.set_root(0, a)
    # Changes reaching every child: "a" goes to the first, "z" to the last.
    refused(pager, a, pack_records([(b"a", b"new"), (b"z", b"new")]), apply_exc)
    if get_exc is None:  # a tree a read can follow: the range reads what the lookups do
        assert list(pager.tree_items(a, None, b"b")) == [(b"a", b"1")]
    else:  # (tree_items checks whole pages: also those a lookup stops short in)
        with pytest.raises((ValueError, MappedPageError)):
            list(pager.tree_items(a))
    if get_exc is ANY:
        assert pager.tree_get(a, b"z") is None  # (the lookup stops before the disorder)
    elif get_exc is not None:
        with pytest.raises(get_exc):
            pager.tree_get(a, b"z")
    else:
        assert pager.tree_get(a, b"a") == b"1"


def test_freed_root(tree):
    p, model = tree
    old = p.roots[0]
    apply(p, old, pack_records((k, None) for k in model))  # frees every page of the tree
    assert p.roots[0] == 0 and old not in set(p.allocated_pages())
    assert decode(bytes(p.page(old)))[0] == RECORD_BRANCH  # still looks like a tree
    refused(p, old, pack_record(b"k000001", b"x"), ValueError)


def test_calls_out_of_place(tree):
    p, model = tree
    before = snapshot(p)
    with p.transaction() as tx:
        pass
    with pytest.raises(ValueError):
        tx.tree_apply(p.roots[0], pack_record(b"a", b"1"))  # its block has ended
    with pytest.raises(ValueError):  # the core refuses too, with no transaction open
        core_tree_apply(p, p._usable(), p.roots[0], pack_record(b"a", b"1"))
    for key in (bytearray(b"k000001"), memoryview(b"k000001"), "k000001", None, 1):
        with pytest.raises(TypeError):
            p.tree_get(p.roots[0], key)
    assert p.tree_get(p.roots[0], b"k" * 0x10000, b"d") == b"d"  # no record holds it
    assert snapshot(p) == before
    root = p.roots[0]
    p.close()
    with pytest.raises(ValueError):
        p.tree_get(root, b"k000001")
    with pytest.raises(ValueError), p.transaction():
        pass
    with pytest.raises(ValueError):
        tx.tree_apply(root, pack_record(b"a", b"1"))
    reader = ReadOnlyPager.open(p.path)
    assert reader.tree_get(root, b"k000001") == model[b"k000001"]
    reader.close()
    with pytest.raises(ValueError):
        reader.tree_get(root, b"k000001")


# -------- 5, 6. A full file; readers


def test_file_full_changes_nothing(tmp_path):
    ps = 1 << 24  # max_pages = 2**20: a file of 16 TiB, sparse
    for where in (tmp_path, "/dev/shm"):
        if not os.path.isdir(where):
            continue
        folder = tempfile.mkdtemp(dir=where)  # the file and its reader table, removed after
        p = Pager.create(os.path.join(folder, "full.mpp"), ps, durability="none",
                         preallocate=False)
        try:
            model = {b"a": b"1", b"b": b"2"}
            apply(p, 0, pack_records(model.items()))
            room = p.max_pages - p.page_count + p.free_page_count
            try:
                p.alloc_bulk(room - 1)  # one free page left
            except OSError as e:
                if e.errno in (errno.EFBIG, errno.ENOSPC):
                    continue  # the file system holds no such file: try the next
                raise
            before = (p.roots, p.page_count, p.free_page_count, bytes(p.page(p.roots[0])))
            allocated = list(p.allocated_pages())
            big = tree_max_record(ps)
            batch = pack_records((b"big%d" % i, b"x" * (big - 10)) for i in range(5))
            with p.transaction() as tx:
                with pytest.raises(FileFull):
                    tx.tree_apply(p.roots[0], batch)  # 3 new pages: 2 leaves, a root
                assert tx.dirty_pages == 0
            assert (p.roots, p.page_count, p.free_page_count) == before[:3]
            assert bytes(p.page(p.roots[0])) == before[3]
            assert list(p.allocated_pages()) == allocated
            assert [p.tree_get(p.roots[0], k) for k in model] == list(model.values())
            model[b"c"] = b"3"
            root, delta = apply(p, p.roots[0], pack_record(b"c", b"3"))  # 1 page: fits
            assert delta == 1 and walk(p, root)[1] == sorted(model.items())
            return
        finally:
            force_close(p)
            shutil.rmtree(folder)
    pytest.skip("no file system here holds a 16 TiB sparse file")


def test_readers_see_their_commit(tmp_path):
    path = tmp_path / "r.mpp"
    p = Pager.create(path, 1024, durability="fast")
    model = fill(500)
    apply(p, 0, pack_records(model.items()))
    reader = ReadOnlyPager.open(path)
    try:
        assert reader.roots[0] == p.roots[0]
        assert walk(reader, reader.roots[0])[1] == sorted(model.items())
        apply(p, p.roots[0], pack_records([(b"k000001", b"new"), (b"k000002", None)]))
        apply(p, p.roots[0], pack_records((k, b"again") for k in list(model)[::3]))
        old = reader.roots[0]
        assert reader.tree_get(old, b"k000001") == model[b"k000001"]
        assert reader.tree_get(old, b"k000002") == model[b"k000002"]
        assert walk(reader, old)[1] == sorted(model.items())  # the snapshot's pages kept
        assert reader.refresh()
        assert reader.roots[0] == p.roots[0] != old
        assert reader.tree_get(reader.roots[0], b"k000001") == b"new"
        assert reader.tree_get(reader.roots[0], b"k000002", b"gone") == b"gone"
        assert reader.tree_get(reader.roots[0], b"k000003") == b"again"
    finally:
        reader.close()
        p.close()


# -------- 7. Memory safety, in child interpreters

PRELUDE = textwrap.dedent(
    """
    import os, random, struct, sys, threading
    from mappedpages import Pager, OutOfBounds, ReservedPage, pack_records
    REFUSED = (ValueError, OutOfBounds, ReservedPage)
    PATH = sys.argv[1]
    sys.setswitchinterval(1e-5)
    def build(n=3000):
        p = Pager.create(PATH, 1024, durability="none")
        with p.transaction() as tx:
            root, _ = tx.tree_apply(0, pack_records((b"k%05d" % i, b"v" * (i % 40))
                                                    for i in range(n)))
            p.set_root(0, root)
        return p
    """
)


def run_child(tmp_path, body: str, timeout: float = 120):
    path = str(tmp_path / f"child-{time.monotonic_ns()}.mpp")
    code = PRELUDE + textwrap.dedent(body) + "\nprint('done', flush=True)\n"
    argv = [sys.executable, "-X", "faulthandler", "-c", code, path]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    detail = f"rc={proc.returncode}\nstdout:\n{proc.stdout[-2000:]}\nstderr:\n{proc.stderr[-3000:]}"
    assert proc.returncode >= 0, "child killed by a signal\n" + detail
    assert proc.returncode == 0 and proc.stdout.splitlines()[-1:] == ["done"], detail
    return path


def test_changes_mutated_by_another_thread(tmp_path):
    path = run_child(
        tmp_path,
        """
        p = build(0)
        base = pack_records((b"k%05d" % i, b"v" * (i % 40)) for i in range(3000))
        buf, stop = bytearray(base), []
        def mutate():
            r = random.Random(1)
            while not stop:
                buf[r.randrange(len(buf))] = r.randrange(256)
                if r.random() < 0.02:
                    buf[:] = base
        t = threading.Thread(target=mutate)
        t.start()
        outcomes = {"applied": 0, "refused": 0}
        for n in range(300):
            # Every other batch is the buffer being changed; the others a clean
            # copy, which must apply (over whatever the changed ones applied).
            with p.transaction() as tx:
                try:
                    p.set_root(0, tx.tree_apply(p.roots[0], buf if n % 2 else base)[0])
                    outcomes["applied"] += 1
                except ValueError:
                    assert n % 2, "a clean batch was refused"
                    outcomes["refused"] += 1
        stop.append(1)
        t.join()
        print(outcomes)
        assert outcomes["applied"] >= 150, outcomes
        p.close()
        """,
    )
    with Pager.open(path) as p:  # whatever was applied left a whole tree, no leak
        pages, items, _ = walk(p, p.roots[0])
        assert set(p.allocated_pages()) == pages
        assert [p.tree_get(p.roots[0], k) for k, _ in items[:200]] == [v for _, v in items[:200]]


def test_pages_scribbled_by_another_thread(tmp_path):
    run_child(
        tmp_path,
        """
        p = build()
        ids = list(p.allocated_pages())
        views = {i: p.page(i) for i in ids}
        saved = {i: bytes(v) for i, v in views.items()}
        stop = []
        def scribble():
            r = random.Random(2)
            while not stop:
                i = r.choice(ids)
                views[i][r.randrange(1024)] = r.randrange(256)
                if r.random() < 0.05:
                    views[i][:] = saved[i]
        t = threading.Thread(target=scribble)
        t.start()
        r, outcomes = random.Random(3), {}
        for n in range(3000):
            key = b"k%05d" % r.randrange(3200)
            try:
                p.tree_get(p.roots[0], key)
            except REFUSED as e:
                outcomes[type(e)] = outcomes.get(type(e), 0) + 1
            if n % 10 == 0:
                try:
                    with p.transaction() as tx:
                        tx.tree_apply(p.roots[0], pack_records([(key, b"x"), (key + b"!", None)]))
                        raise KeyError  # roll back: the next try starts from the same tree
                except (KeyError,) + REFUSED:
                    pass
        stop.append(1)
        t.join()
        print(outcomes)
        """,
    )


def test_corrupt_pages_never_crash(tmp_path):
    run_child(
        tmp_path,
        """
        p = build()
        root = p.roots[0]
        ids = list(p.allocated_pages())
        saved = {i: bytes(p.page(i)) for i in ids}
        r = random.Random(4)
        outcomes = {}
        for trial in range(600):
            for i in r.sample(ids, r.randint(1, 3)):
                v = p.page(i)
                how = r.randrange(5)
                if how == 0:
                    v[:] = r.randbytes(1024)
                elif how == 1:
                    at = r.randrange(1024)
                    v[at] ^= 1 << r.randrange(8)
                elif how == 2:
                    at = r.randrange(1024 - 8)
                    v[at:at + 8] = struct.pack("<Q", r.choice(
                        [0, 1, 2, 3, i, r.choice(ids), 10**6, r.randrange(1 << 64), (1 << 63) | 1]))
                elif how == 3:
                    at = r.randrange(1024 - 4)
                    v[at:at + 4] = struct.pack("<I", r.choice([0, 7, 8, 1023, 1024, 2**32 - 1]))
                else:
                    at = r.randrange(1024)
                    n = r.randint(1, 32)
                    v[at:at + n] = r.randbytes(min(n, 1024 - at))
                del v
            def count(what):
                outcomes[what] = outcomes.get(what, 0) + 1
            for key in (b"k00000", b"k01500", b"k02999", b"", b"zz", b"k01234"):
                try:
                    p.tree_get(root, key)
                    count("get")
                except REFUSED:
                    count("get refused")
            changes = pack_records([(b"k%05d" % r.randrange(3000), b"x") for _ in range(5)])
            try:
                with p.transaction() as tx:
                    tx.tree_apply(root, changes)
                    raise KeyError  # roll back
            except KeyError:
                count("apply")
            except REFUSED:
                count("apply refused")
            for i in ids:
                p.page(i)[:] = saved[i]
        print(outcomes)
        assert len(outcomes) == 4, outcomes
        """,
    )


# -------- Corrupt child ids, and pages of many records


@pytest.mark.parametrize("child", [SLOT | 1, SLOT | 2**40])
def test_unreached_child_id_naming_a_slot(tmp_path, child):
    run_child(
        tmp_path,
        f"""
        from mappedpages import RECORD_BRANCH, RECORD_LEAF
        p = Pager.create(PATH, 4096)
        def page(kind, recs):
            body = b"".join(struct.pack("<HI", len(k), len(v)) + k + v for k, v in recs)
            head = struct.pack("<BBHI", kind, 0, len(recs), 8 + len(body))
            return (head + body).ljust(4096, b"\\0")
        leaf, top = p.alloc_bulk(2)
        with p.transaction() as tx:
            tx.write_pages([leaf, top], page(RECORD_LEAF, [(b"a", b"1")])
                           + page(RECORD_BRANCH, [(b"", struct.pack("<Q", leaf)),
                                                   (b"m", struct.pack("<Q", {child}))]))
        with p.transaction() as tx:
            try:
                root, _ = tx.tree_apply(top, pack_records([(b"b", b"2")]))  # reaches "a" only
            except ValueError:
                root = None
        assert root is None, "a corrupt tree was applied to: new root %d" % root
        """,
    )


@pytest.mark.parametrize("split", [False, True])
def test_many_small_records_at_large_page_sizes(tmp_path, split):
    p = Pager.create(tmp_path / "wide.mpp", 1 << 20, durability="none")
    try:
        ks = [b""] + [bytes([i]) for i in range(256)] + [bytes([i, j]) for i in range(256)
                                                        for j in range(255)]
        model = dict.fromkeys(ks[:65536], b"")
        first = list(model)[:-1] if split else list(model)
        root, _ = apply(p, 0, pack_records((k, b"") for k in first))
        root, _ = apply(p, root, pack_records((k, b"") for k in list(model)[len(first) :]))
        check(p, model, reads=300)  # (a lookup reads its pages whole: 1 MiB each here)
    finally:
        force_close(p)


# -------- 8. The largest record


@pytest.mark.parametrize("ps", [512, 1024, 4096, 65536, 1 << 30])
def test_tree_max_record_is_the_cores(ps):
    out = ffi.new("uint32_t *")
    assert lib.mp_tree_max_record(ps, out) == 0
    assert tree_max_record(ps) == out[0] == (ps - 8) // 4 - 8
    assert tree_max_record(4096) == 1014  # FORMAT.md's figure


@pytest.mark.parametrize(
    "ps,exc",
    [(True, TypeError), (4096.0, TypeError), ("4096", TypeError), (511, ValueError)]
    + [(0, ValueError), (-4096, ValueError), (2**32, ValueError)],
)
def test_tree_max_record_refuses(ps, exc):
    with pytest.raises(exc):
        tree_max_record(ps)


@pytest.mark.parametrize("ps", [1024, 4096])
def test_record_of_exactly_max_size(tmp_path, ps):
    p = Pager.create(tmp_path / "max.mpp", ps)
    most = tree_max_record(ps)
    model = {b"k" * (most - 6): b"", b"v": b"x" * (most - 7)}
    for i in range(40):  # enough of them to split leaves and branches
        model[b"%03d" % i + b"q" * (most - 9 - 3)] = b"abc"
    assert all(len(pack_record(k, v)) == most for k, v in model.items())
    root, delta = apply(p, 0, pack_records(model.items()))
    assert delta == len(model) and walk(p, root)[2] >= 3
    check(p, model)
    refused(p, root, pack_record(b"w", b"x" * (most - 6)), ValueError)  # one byte more
    refused(p, root, pack_record(b"k" * (most - 5), None), ValueError)
    check(p, model)
    p.close()


@pytest.mark.parametrize(
    "key,value", [(b"k" * 0x10000, b""), (b"k" * 0x10000, None)]
)
def test_pack_record_refuses_lengths_past_their_fields(key, value):
    with pytest.raises(ValueError):
        pack_record(key, value)
    with pytest.raises(ValueError):
        pack_records([(b"a", b"1"), (key, value)])
    assert pack_record(b"k" * 0xFFFF, None)[:6] == REC.pack(0xFFFF, RECORD_DELETE)


def test_a_branch_whose_children_are_itself_costs_what_the_file_holds(tmp_path):
    """A damaged branch naming itself as each of its 60 children: every call refuses it
    at once (each page is reached once in a tree), where following it would make 60**48
    visits, or copies of pages far past the file's size."""
    p = Pager.create(tmp_path / "fan.mpp", 4096)
    (a,) = p.alloc_bulk(1)
    fan = branch_bytes(4096, [(b"" if i == 0 else b"k%03d" % i, a) for i in range(60)])
    with p.transaction() as tx:
        tx.write_pages([a], fan)
    changes = pack_records((b"k%03d" % i, b"v") for i in range(0, 60 * 50, 50))
    refused(p, a, changes, ValueError)
    with pytest.raises(ValueError):
        list(p.tree_items(a))
    with pytest.raises(ValueError):
        p.tree_get(a, b"k010")
    p.close()
