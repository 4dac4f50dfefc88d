#!/usr/bin/env python3
"""Write a seed corpus for the fuzz targets: small valid pager files, or (``--tree``)
inputs of fuzz/fuzz_tree.c: a count byte, record-tree pages of 1 KiB, a batch."""

from __future__ import annotations

import sys
from pathlib import Path

from mappedpages import Pager


def main(out: str) -> None:
    """Create the seed files in directory OUT."""
    d = Path(out)
    d.mkdir(parents=True, exist_ok=True)
    n = 0

    def new(name: str, page_size: int = 1024) -> Pager:
        path = d / f"{name}.mpp"
        path.unlink(missing_ok=True)
        return Pager.create(path, page_size=page_size)

    with new("empty"):
        n += 1
    with new("regular") as p:
        ids = p.alloc_bulk(9)
        p.free_bulk(ids[::3])
        n += 1
    with new("protected") as p:
        pids = [p.alloc_protected() for _ in range(3)]
        for k, pid in enumerate(pids):
            with p.write_protected(pid) as w:
                w.page[:8] = bytes([k + 1]) * 8
        p.free_protected(pids[1])
        p.alloc()
        n += 1
    with new("grown") as p:
        p.alloc_bulk(40)
        pid = p.alloc_protected()
        with p.write_protected(pid) as w:
            w.page[:4] = b"seed"
        n += 1
    with new("empty4096", 4096):
        n += 1
    print(f"{n} seed files in {d}")


def tree_seeds(out: str) -> None:
    """Write inputs of fuzz_tree.c: trees built by the library, then a batch."""
    import random
    import tempfile

    from mappedpages import pack_record, pack_records

    d = Path(out)
    d.mkdir(parents=True, exist_ok=True)
    rng = random.Random(7)
    for n, keys in enumerate((1, 20, 60, 150)):
        with tempfile.TemporaryDirectory() as tmp, Pager.create(Path(tmp) / "t", 1024) as p:
            with p.transaction() as tx:
                items = {b"k%04d" % rng.randrange(10000): rng.randbytes(20) for _ in range(keys)}
                root, _ = tx.tree_apply(0, pack_records(items.items()))
            # The pages in id order (ids 3, 4, ... in a new file, as the target
            # gives them), the root's index in bits 3-5 of the first byte.
            pages = sorted(p.allocated_pages())[:8]
            assert pages == list(range(3, 3 + len(pages))) and root in pages
            body = b"".join(bytes(p.page(i)) for i in pages)
            batch = pack_records([(b"k%04d" % rng.randrange(10000), b"v") for _ in range(5)])
            batch += pack_record(b"zz", None)
            head = (len(pages) - 1) | (pages.index(root) << 3)
            (d / f"tree{n}").write_bytes(bytes([head]) + body + batch)
    print(f"4 record-tree seeds in {d}")


if __name__ == "__main__":
    if sys.argv[1] == "--tree":
        tree_seeds(sys.argv[2])
    else:
        main(sys.argv[1])
