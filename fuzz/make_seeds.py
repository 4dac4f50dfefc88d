#!/usr/bin/env python3
"""Write a seed corpus of small, valid pager files for the fuzz targets."""

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


if __name__ == "__main__":
    main(sys.argv[1])
