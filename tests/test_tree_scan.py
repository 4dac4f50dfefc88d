"""Tests of ``tree_items``, the range read of a record tree (csrc/scan.c).

The core copies records out a batch at a time (``mp_tree_scan``) and the next
batch goes on after the last key of the one before. Ranges that span many
batches read exactly what a model holds, for every kind of bound; the C call
refuses bad arguments; a tree changed between two batches still yields keys in
strictly ascending order; pages whose keys disagree on the order, in any way a
scan can meet them, are refused with ``ValueError`` instead of looping.
"""

from __future__ import annotations

import random
from itertools import islice

import pytest
from support.record_pages import U64, apply, branch_bytes, page_bytes, walk

from mappedpages import RECORD_LEAF, OutOfBounds, Pager, ReadOnlyPager, ReservedPage, pack_records
from mappedpages._core import ffi, lib


def fill(n: int, value_len: int) -> dict[bytes, bytes]:
    rnd = random.Random(n)
    return {b"k%06d" % i: rnd.randbytes(value_len) for i in range(n)}


@pytest.fixture
def big(tmp_path):
    """A tree of 3,000 keys with 200-byte values: about ten 64 KiB batches."""
    p = Pager.create(tmp_path / "scan.mpp", 4096, durability="none")
    model = fill(3000, 200)
    root, _ = apply(p, 0, pack_records(model.items()))
    yield p, root, model
    p.close()


def test_a_range_of_many_batches_is_the_model(big):
    p, root, model = big
    items = sorted(model.items())
    assert list(p.tree_items(root)) == items
    assert walk(p, root)[1] == items  # (the independent reader agrees)
    keys = [k for k, _ in items]
    for lo, hi in [(keys[5], keys[2900]), (b"k001", b"k002"), (b"", None), (None, keys[0]),
                   (keys[-1], None), (b"k0015005", b"k0015"), (b"zz", None), (None, b"")]:
        want = [(k, v) for k, v in items if (lo is None or k >= lo) and (hi is None or k < hi)]
        assert list(p.tree_items(root, lo, hi)) == want, (lo, hi)


def test_bounds_between_keys_and_past_the_ends(big):
    p, root, model = big
    keys = sorted(model)
    assert [k for k, _ in p.tree_items(root, keys[10] + b"\0", keys[13])] == keys[11:13]
    assert [k for k, _ in p.tree_items(root, b"a", b"k000003")] == keys[:3]


def test_a_reader_scans_its_commit(tmp_path):
    path = tmp_path / "r.mpp"
    with Pager.create(path, 4096) as p:
        root, _ = apply(p, 0, pack_records(fill(500, 300).items()))
        with ReadOnlyPager.open(path) as r:
            assert list(r.tree_items(root)) == list(p.tree_items(root))


def test_a_tree_changed_between_batches_still_moves_on(big):
    p, root, model = big
    it = p.tree_items(root)
    seen = [next(it)[0] for _ in range(10)]
    # The next commit replaces the pages of half the keys and frees the old
    # ones ("none": not reused before a sync, so the old tree stays readable).
    new_root, _ = apply(p, root, pack_records((k, b"new") for k in sorted(model)[::2]))
    seen += [k for k, _ in it]
    assert seen == sorted(model)  # the old root's tree, read to its end
    assert [v for _, v in p.tree_items(new_root)][:2] == [b"new", model[sorted(model)[1]]]


def test_bound_types(big):
    p, root, _ = big
    for lo, hi in [("a", None), (None, 5), (bytearray(b"a"), None)]:
        with pytest.raises(TypeError):
            p.tree_items(root, lo, hi)
    with pytest.raises(TypeError):
        p.tree_items(True)


def test_roots_no_view_may_show(big):
    p, _, _ = big
    with pytest.raises(ReservedPage):
        list(p.tree_items(1))
    with pytest.raises(OutOfBounds):
        list(p.tree_items(p.page_count + 5))
    assert list(p.tree_items(0)) == []


def scan(p, root, lo=b"", hi=b"", flags=0, cap=None):
    cap = p.page_size if cap is None else cap
    buf, used, more = ffi.new("uint8_t[]", max(cap, 1)), ffi.new("uint64_t *"), ffi.new("int *")
    rc = lib.mp_tree_scan(p._handle, root, lo, len(lo), hi, len(hi), flags, buf, cap, used, more)
    return rc, ffi.buffer(buf, used[0])[:], more[0]


def test_the_c_call_refuses_bad_arguments(big):
    p, root, _ = big
    assert scan(p, root, cap=p.page_size - 1)[0] == lib.MP_EINVALID_ARGUMENT
    assert scan(p, root, flags=8)[0] == lib.MP_EINVALID_ARGUMENT
    rc, data, more = scan(p, root)  # one page's worth: a batch, and more to come
    assert rc == 0 and more == 1 and 0 < len(data) <= p.page_size


def test_ranges_stopped_early_and_across_the_growing_batches(big):
    # The first batch is a page of records and each next one twice the one
    # before: ranges taken a few items at a time, from many starts, and ranges
    # that end just past each batch's end read what the model holds.
    p, root, model = big
    items = sorted(model.items())
    keys = [k for k, _ in items]
    for start in (0, 1, 17, 18, 19, 20, 500, len(keys) - 3):
        for take in (1, 10, 19, 20, 21, 60, 200):
            got = list(islice(p.tree_items(root, keys[start]), take))
            assert got == items[start : start + take]
    # Records of 213 bytes: batches of 19, 38, 76 and 153 of them (4, 8, 16
    # and 32 KiB), which end after the 19th, 57th, 133rd and 286th key.
    size, cap, edges = 6 + len(keys[0]) + 200, p.page_size, [0]
    while len(edges) < 5:
        edges.append(edges[-1] + cap // size)
        cap *= 2
    assert edges[1:] == [19, 57, 133, 286]
    for end in (e + d for e in edges[1:] for d in (-1, 0, 1)):
        assert list(p.tree_items(root, None, keys[end])) == items[:end]


class _ScanSpy:
    """The core's functions, with mp_tree_scan's batch sizes recorded."""

    def __init__(self) -> None:
        self.caps: list[int] = []

    def __getattr__(self, name: str):
        return getattr(lib, name)

    def mp_tree_scan(self, *args):
        self.caps.append(args[8])
        return lib.mp_tree_scan(*args)


def test_a_range_asks_for_a_page_first_then_batches_that_double(big, monkeypatch):
    import mappedpages._records as records

    p, root, model = big
    spy = _ScanSpy()
    monkeypatch.setattr(records, "lib", spy)
    assert next(iter(p.tree_items(root))) == min(model.items())
    assert spy.caps == [p.page_size]  # ten keys need no 64 KiB batch
    spy.caps.clear()
    assert len(list(p.tree_items(root))) == len(model)
    assert spy.caps[:5] == [p.page_size << i for i in range(5)]  # 4 KiB ... 64 KiB
    assert set(spy.caps[5:]) == {64 << 10} and len(spy.caps) > 6


def test_a_batch_the_core_cannot_split_raises_and_yields_nothing(big, monkeypatch):
    import mappedpages._records as records

    p, root, _ = big
    spy = _ScanSpy()
    spy.mp_record_spans = lambda *args: lib.MP_EINVALID_ARGUMENT
    monkeypatch.setattr(records, "lib", spy)
    with pytest.raises(ValueError):
        next(iter(p.tree_items(root)))


def spans(data: bytes, cap: int | None = None) -> tuple[int, list[int]]:
    n_max = len(data) // 6 + 1 if cap is None else cap
    out, n = ffi.new("uint64_t[]", 3 * max(n_max, 1)), ffi.new("uint64_t *")
    rc = lib.mp_record_spans(data, len(data), out, n_max, n)
    return rc, list(out[0 : 3 * n[0]])


def test_record_spans_name_each_record_or_refuse_the_batch(big):
    p, root, model = big
    rc, data, _ = scan(p, root, cap=4 * p.page_size)
    assert rc == 0
    rc, at = spans(data)
    assert rc == 0 and len(at) % 3 == 0 and at[-1] == len(data)
    pairs = [(data[at[i] : at[i + 1]], data[at[i + 1] : at[i + 2]]) for i in range(0, len(at), 3)]
    assert pairs == sorted(model.items())[: len(pairs)]
    assert spans(b"") == (0, [])
    # A record cut short, a head cut short, a delete, and more records than cap.
    assert spans(data[:-1])[0] == lib.MP_EINVALID_ARGUMENT
    assert spans(data[: at[0] - 1])[0] == lib.MP_EINVALID_ARGUMENT
    assert spans(pack_records([(b"k", None)]))[0] == lib.MP_EINVALID_ARGUMENT
    assert spans(data, cap=len(pairs) - 1)[0] == lib.MP_EINVALID_ARGUMENT
    assert spans(data, cap=len(pairs))[0] == 0


def test_after_excludes_the_key_and_from_includes_it(big):
    p, root, model = big
    keys = sorted(model)
    for flags, first in [(lib.MP_SCAN_FROM, keys[7]), (lib.MP_SCAN_AFTER, keys[8])]:
        rc, data, _ = scan(p, root, lo=keys[7], flags=flags)
        assert rc == 0 and data[6 : 6 + len(first)] == first
    rc, data, more = scan(p, root, hi=keys[0], flags=lib.MP_SCAN_TO)
    assert (rc, data, more) == (0, b"", 0)


def damaged(tmp_path, leaves):
    """A branch over leaves holding ``leaves`` (lists of keys), children keyed as given."""
    p = Pager.create(tmp_path / "bad.mpp", 1024)
    ids = p.alloc_bulk(1 + len(leaves))
    kids = [(b"" if i == 0 else sep, ids[1 + i]) for i, (sep, _) in enumerate(leaves)]
    pages = [branch_bytes(1024, kids)] + [
        page_bytes(1024, RECORD_LEAF, [(k, b"v") for k in keys]) for _, keys in leaves
    ]
    with p.transaction() as tx:
        tx.write_pages(ids, b"".join(pages))
    return p, ids[0]


@pytest.mark.parametrize("leaves", [
    [(b"", [b"m", b"x"]), (b"n", [b"n"])],       # a later leaf below an earlier key
    [(b"", [b"a", b"b"]), (b"c", [b"b", b"c"])],  # a key repeated across leaves
])
def test_keys_out_of_order_across_pages(tmp_path, leaves):
    p, root = damaged(tmp_path, leaves)
    with pytest.raises(ValueError):
        list(p.tree_items(root))
    p.close()


def test_a_child_named_twice_is_refused_not_looped(tmp_path):
    p = Pager.create(tmp_path / "loop.mpp", 1024)
    a, leaf = p.alloc_bulk(2)
    kids = [(b"" if i == 0 else b"k%02d" % i, leaf) for i in range(8)]
    with p.transaction() as tx:
        tx.write_pages([a, leaf], branch_bytes(1024, kids)
                       + page_bytes(1024, RECORD_LEAF, [(b"k00", b"v")]))
    with pytest.raises(ValueError):
        list(p.tree_items(a))
    assert U64.size == 8
    p.close()
