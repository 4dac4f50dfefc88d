"""The record sum, computed here from FORMAT.md's words, against what the core writes.

A transaction with dirty pages commits a record (FORMAT.md, "The metadata tail"):
each run's first page, page count and record sum. The sum is recomputed here,
independently, over the committed bytes of every run, for runs of one page and
of several, with pages that end with their own CRC-32 (the case a CRC could not
tell apart) among them.
"""

from __future__ import annotations

import os
import random
import struct
import zlib

import pytest

from mappedpages import Pager

PRIME = 0x100000001B3
BASIS = 0xCBF29CE484222325
MASK = (1 << 64) - 1


def record_sum(data: bytes, first: int) -> int:
    """FORMAT.md, "Root pages": four lanes over the run's 8-byte little-endian words."""
    h = [BASIS ^ first ^ j for j in range(4)]
    for i, (w,) in enumerate(struct.iter_unpack("<Q", data)):
        h[i % 4] = ((h[i % 4] ^ w) * PRIME) & MASK
    s = h[0]
    for j in range(1, 4):
        s = ((s ^ h[j]) * PRIME) & MASK
    return (s ^ (s >> 32)) & 0xFFFFFFFF


def newest_record(path, ps: int) -> list[tuple[int, int, int]]:
    """The record of the newer metadata copy (v0.2 layout, pages 1 and 2)."""
    raw = open(path, "rb").read()
    copies = [raw[ps * k : ps * (k + 1)] for k in (1, 2)]
    meta = max(copies, key=lambda c: struct.unpack_from("<Q", c, 8)[0])
    (n,) = struct.unpack_from("<I", meta, ps - 76)
    return [struct.unpack_from("<QII", meta, ps - 76 - 16 * (i + 1)) for i in range(n)]


def crc_page(ps: int, rnd: random.Random) -> bytes:
    body = rnd.randbytes(ps - 4)
    return body + struct.pack("<I", zlib.crc32(body))


@pytest.mark.parametrize("ps", [1024, 4096])
def test_record_sums_match_the_format(tmp_path, ps):
    rnd = random.Random(ps)
    path = tmp_path / "sum.mpp"
    with Pager.create(path, ps, durability="fast") as p:
        ids = p.alloc_bulk(12)
        runs = [ids[0:1], ids[2:6], ids[7:8], ids[9:12]]  # one page, four, one, three
        with p.transaction() as tx:
            for run in runs:
                data = b"".join(crc_page(ps, rnd) if i % 2 else rnd.randbytes(ps) for i in run)
                tx.write_pages(run, data)
            p.set_root(0, ids[0])
        record = newest_record(path, ps)
        assert sorted((first, count) for first, count, _ in record) == sorted(
            (run[0], len(run)) for run in runs
        )
        raw = open(path, "rb").read()
        for first, count, stored in record:
            assert stored == record_sum(raw[first * ps : (first + count) * ps], first)
    assert os.path.getsize(path) > 12 * ps
