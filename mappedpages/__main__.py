"""Command line: ``python -m mappedpages demo``.

``demo`` creates a pager file in a temporary directory, allocates, writes,
frees, reopens and verifies, and prints what it did and the file's stats.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import zlib
from pathlib import Path

from mappedpages import Pager


def _pattern(page_id: int, size: int) -> bytes:
    return bytes((page_id * 31 + i) % 251 for i in range(size))


def demo(directory: Path | None = None, page_size: int = 4096) -> int:
    """Run the demo in ``directory`` (a fresh temporary one by default)."""
    with tempfile.TemporaryDirectory(prefix="mappedpages-demo-") as tmp:
        path = (directory or Path(tmp)) / "demo.mpp"
        print(f"mappedpages demo: {path}")
        t0 = time.perf_counter()
        with Pager.create(path, page_size=page_size) as pager:
            print(f"created: page_size={pager.page_size} pages={pager.page_count} "
                  f"free={pager.free_page_count}")
            ids = [pager.alloc() for _ in range(50)]
            print(f"alloc x50 (one durable commit each): ids {ids[0]}..{ids[-1]}, "
                  f"file grew to {pager.page_count} pages")
            for pid in ids:
                pager.page(pid)[:] = _pattern(pid, pager.page_size)
            bulk = pager.alloc_bulk(100)
            print(f"alloc_bulk(100) in one commit: ids {bulk[0]}..{bulk[-1]}, "
                  f"pages={pager.page_count}")
            freed = ids[::5]
            for pid in freed:
                pager.free(pid)
            pager.free_bulk(bulk)
            print(f"free x{len(freed)}, free_bulk x{len(bulk)}: free={pager.free_page_count}")
            prot = pager.alloc_protected()
            with pager.write_protected(prot) as writer:
                writer.page[:12] = b"hello, world"
            print(f"protected page {prot} committed atomically")
            pager.sync()
            print("sync(): page data flushed to disk")
            expected = sorted(set(ids) - set(freed))
            checksums = {pid: zlib.crc32(pager.page(pid)) for pid in expected}
        elapsed = time.perf_counter() - t0
        with Pager.open(path) as pager:
            live = list(pager.allocated_pages())
            ok = live == expected and all(
                zlib.crc32(pager.page(pid)) == crc for pid, crc in checksums.items()
            )
            ok = ok and bytes(pager.protected_page(prot)[:12]) == b"hello, world"
            ok = ok and pager.verify_protected(prot)
            print(f"reopened: pages={pager.page_count} free={pager.free_page_count} "
                  f"allocated={len(live)} protected={list(pager.allocated_protected_pages())}")
            print(f"file size: {path.stat().st_size} bytes; work took {elapsed * 1000:.1f} ms")
        print("verified: every surviving page holds its data" if ok else "VERIFY FAILED")
        return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m mappedpages`` and the ``mappedpages`` script."""
    parser = argparse.ArgumentParser(prog="mappedpages", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="run a demo on a real file in a temporary directory")
    d.add_argument("--page-size", type=int, default=4096)
    args = parser.parse_args(argv)
    if args.command == "demo":
        return demo(page_size=args.page_size)
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
