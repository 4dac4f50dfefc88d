"""Record trees give pages back as keys are deleted (csrc/tree.c, absorb_siblings).

A leaf rewritten to a quarter of a page or less takes in its right siblings
while they all fit one page: deletes in small batches, or in one batch that
reaches every leaf, leave a tree of about as many pages as its items need, its
items and its allocated pages checked against a model and the format. A
sibling that is not a record page is refused, with nothing changed.
"""

from __future__ import annotations

import random
import struct

import pytest
from support.record_pages import branch_bytes, page_bytes, walk
from test_record_tree import applied, check, fill, refused

from mappedpages import RECORD_LEAF, Pager, pack_records
from mappedpages._core import lib


def tree_pages(p: Pager) -> int:
    pages, _, _ = walk(p, p.roots[0])
    return len(pages)


def commit(p: Pager, changes: dict) -> None:
    with p.transaction() as tx:
        root, _ = tx.tree_apply(p.roots[0], pack_records(sorted(changes.items())))
        p.set_root(0, root)


@pytest.mark.parametrize("page_size", [1024, 4096])
@pytest.mark.parametrize("layout", ["0.2", "0.3"])
@pytest.mark.parametrize("batch", [10, None])  # None: every delete in one batch
def test_deletes_give_pages_back(tmp_path, page_size, layout, batch):
    p = Pager.create(tmp_path / "t.mpp", page_size, durability="none", layout=layout)
    model = fill(6000 if page_size == 1024 else 12000)
    commit(p, model)
    full = tree_pages(p)
    keys = sorted(model)
    random.Random(page_size + len(layout)).shuffle(keys)
    doomed = keys[: len(keys) * 9 // 10]
    step = batch or len(doomed)
    for i in range(0, len(doomed), step):
        changes = dict.fromkeys(doomed[i : i + step])
        commit(p, changes)
        model = applied(model, changes)
    check(p, model, absent=doomed[:200], reads=300)
    # A tenth of the items is left. Without merging, deletes keep nearly every
    # leaf (measured: 93% of the pages); a merged tree keeps its leaves at
    # least about a quarter full.
    left = tree_pages(p)
    assert left <= 0.45 * full, (left, full)
    p.close()


def test_merged_tree_takes_puts_again(tmp_path):
    """Leaves merged by deletes split again as the keys come back, all of them found."""
    p = Pager.create(tmp_path / "t.mpp", 1024, durability="none")
    model = fill(4000)
    commit(p, model)
    keys = sorted(model)
    gone = dict.fromkeys(keys[::10] + keys[1::10] + keys[2::10] + keys[3::10] + keys[4::10])
    for chunk in range(0, len(gone), 7):
        part = dict.fromkeys(list(gone)[chunk : chunk + 7])
        commit(p, part)
        model = applied(model, part)
    back = {k: b"back-" + k for k in list(gone)[::3]}
    for chunk in range(0, len(back), 50):
        part = dict(list(back.items())[chunk : chunk + 50])
        commit(p, part)
        model = applied(model, part)
    check(p, model, absent=list(gone)[1::3][:100])
    p.close()


@pytest.mark.parametrize("sibling", ["zeros", "branch", "free"])
def test_sibling_not_a_leaf_is_refused(tmp_path, sibling):
    """A leaf that would take in its right sibling reads it as a reached page is
    read: a sibling that is no leaf (or is free) is refused, nothing changed."""
    p = Pager.create(tmp_path / "t.mpp", 1024)
    a, leaf, sib, other = p.alloc_bulk(4)
    small = page_bytes(1024, RECORD_LEAF, [(b"a", b"1"), (b"b", b"2")])
    body = {
        "zeros": bytes(1024),
        "branch": branch_bytes(1024, [(b"", other)]),
        "free": page_bytes(1024, RECORD_LEAF, [(b"n", b"3")]),
    }[sibling]
    with p.transaction() as tx:
        tx.write_pages([a, leaf, sib, other], branch_bytes(1024, [(b"", leaf), (b"m", sib)])
                       + small + body + small)
        if sibling == "free":
            p.free(sib)
        p.set_root(0, a)
    # The delete reaches the first leaf only; what is left of it is tiny.
    refused(p, a, pack_records([(b"a", None)]), ValueError)
    p.close()


def test_sibling_taken_in_leaves_the_parent_one_key_less(tmp_path):
    """The format after a merge: the parent keeps the first leaf's key, not its sibling's."""
    p = Pager.create(tmp_path / "t.mpp", 1024)
    a, left, right = p.alloc_bulk(3)
    with p.transaction() as tx:
        tx.write_pages([a, left, right], branch_bytes(1024, [(b"", left), (b"m", right)])
                       + page_bytes(1024, RECORD_LEAF, [(b"a", b"1"), (b"b", b"2")])
                       + page_bytes(1024, RECORD_LEAF, [(b"n", b"3"), (b"p", b"4")]))
        p.set_root(0, a)
    commit(p, {b"a": None})
    root = p.roots[0]
    # The root gave way to its one child: a leaf holding both leaves' records.
    assert bytes(p.page(root)) == page_bytes(1024, RECORD_LEAF, [(b"b", b"2"), (b"n", b"3"),
                                                                 (b"p", b"4")])
    assert sorted(p.allocated_pages()) == [root]
    assert struct.unpack_from("<B", bytes(p.page(root)))[0] == lib.MP_RECORD_LEAF
    p.close()
