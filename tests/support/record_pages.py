"""An independent reader and writer of record pages (FORMAT.md, "Record trees").

Written from the format, not from the library: the record-tree tests build
pages with it and check every tree the core writes against it.
"""

from __future__ import annotations

import struct

from mappedpages import RECORD_BRANCH, RECORD_LEAF

HDR = struct.Struct("<BBHI")
REC = struct.Struct("<HI")
U64 = struct.Struct("<Q")


def page_bytes(ps: int, kind: int, recs) -> bytes:
    """A record page of ``kind`` holding ``recs`` ((key, value) pairs, as given)."""
    body = b"".join(REC.pack(len(k), len(v)) + k + v for k, v in recs)
    return (HDR.pack(kind, 0, len(recs), 8 + len(body)) + body).ljust(ps, b"\0")


def branch_bytes(ps: int, kids) -> bytes:
    return page_bytes(ps, RECORD_BRANCH, [(k, U64.pack(c)) for k, c in kids])


def decode(page: bytes) -> tuple[int, list[tuple[bytes, bytes]]]:
    """(kind, records) of a tree page, every rule of the format checked."""
    kind, zero, n, end = HDR.unpack_from(page, 0)
    assert kind in (RECORD_LEAF, RECORD_BRANCH) and zero == 0, (kind, zero)
    assert 8 <= end <= len(page) and page[end:] == bytes(len(page) - end)
    recs, at = [], 8
    for _ in range(n):
        klen, vlen = REC.unpack_from(page, at)
        at += 6
        recs.append((page[at : at + klen], page[at + klen : at + klen + vlen]))
        at += klen + vlen
        assert at <= end
    assert at == end and n >= 1  # an emptied page goes: no node is empty
    keys = [k for k, _ in recs]
    assert all(a < b for a, b in zip(keys, keys[1:])), "keys must strictly ascend"
    if kind == RECORD_BRANCH:
        assert keys[0] == b"" and all(len(v) == 8 for _, v in recs)
    return kind, recs


def walk(pager, root: int):
    """Check the tree at ``root``; (its pages, its items in key order, its depth)."""
    pages: set[int] = set()
    items: list[tuple[bytes, bytes]] = []
    depths: set[int] = set()

    def visit(pid: int, depth: int, lo: bytes, hi: bytes | None) -> None:
        assert pid not in pages, f"page {pid} twice in the tree"
        pages.add(pid)
        kind, recs = decode(bytes(pager.page(pid)))
        for i, (k, _) in enumerate(recs):
            if kind == RECORD_LEAF or i > 0:
                assert lo <= k and (hi is None or k < hi), (pid, k, lo, hi)
        if kind == RECORD_LEAF:
            depths.add(depth)
            items.extend(recs)
            return
        for i, (k, v) in enumerate(recs):
            upper = recs[i + 1][0] if i + 1 < len(recs) else hi
            visit(U64.unpack(v)[0], depth + 1, lo if i == 0 else k, upper)

    if root:
        visit(root, 1, b"", None)
    assert len(depths) <= 1, f"leaves at depths {depths}"
    return pages, items, max(depths, default=0)


def snapshot(pager):
    ids = sorted(pager.allocated_pages())
    return pager.roots, pager.page_count, ids, [bytes(pager.page(i)) for i in ids]


def apply(pager, root: int, changes) -> tuple[int, int]:
    """One committed batch: tree_apply and the new root in slot 0."""
    with pager.transaction() as tx:
        new, delta = tx.tree_apply(root, changes)
        pager.set_root(0, new)
    return new, delta
