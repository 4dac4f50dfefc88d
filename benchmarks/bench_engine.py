"""Benchmark a storage engine on mappedpages against py-lmdb and sqlite3.

Run from a checkout (the library installed, ``pip install '.[bench]'`` for py-lmdb):

    python benchmarks/bench_engine.py [--dir DIR] [--quick]
    python -m mappedpages bench --only engine [--dir DIR] [--quick]

The engine is the copy-on-write B+tree of examples/btree.py (nodes in pages,
the root in ``roots[0]``, one engine transaction per batch). Every row runs in
the same process, on the same file system (``--dir``, default a temporary
folder in the current directory), with the same keys (16 random bytes) and
values (100 bytes), on a store preloaded with 10,000 keys:

  * (a) durable transactions/s with one put each;
  * (b) durable transactions/s with 100 puts each;
  * point reads/s of random existing keys;

for the B+tree in both layouts and every durability mode, py-lmdb (default
``sync=True``: durable at commit) and sqlite3 in WAL mode with
``synchronous=FULL`` (durable) and ``NORMAL`` (not durable at commit: marked
so). The floors are measured in the same folder: one bare ``fdatasync`` after
a 4 KiB ``pwrite`` per transaction, and two. Everything runs in 8 interleaved
rounds (a slice of each engine's transactions and of the floors per round, each
round starting with the next engine), so every figure sees the same machine
load and device latency. For the
B+tree, the flush calls (msync + fdatasync) per transaction of (a) and (b) are
counted through the library's I/O hooks (less the one flush a growth of the
file costs). Rows that are not durable are marked.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import random
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mappedpages import Pager
from mappedpages._core import ffi, lib
from mappedpages._options import _options

HERE = Path(__file__).resolve().parent
EXAMPLE = HERE.parent / "examples" / "btree.py"

KEY = 16
VALUE = 100
PRELOAD = 10_000


def _btree_module() -> Any:
    spec = importlib.util.spec_from_file_location("btree_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@dataclass
class Settings:
    """How many transactions each measurement runs."""

    single: int = 400
    batched: int = 60
    reads: int = 20_000

    @classmethod
    def quick(cls) -> Settings:
        """About a tenth of the samples."""
        return cls(single=60, batched=10, reads=3_000)


@dataclass
class Row:
    """One engine's figures."""

    name: str
    durable: bool
    single: float = 0.0  # transactions/s, one put each
    batched: float = 0.0  # transactions/s, 100 puts each
    reads: float = 0.0  # point reads/s
    flushes_single: float | None = None
    flushes_batched: float | None = None


class Engine:
    """What every engine under test offers."""

    def put_batch(self, items: list[tuple[bytes, bytes]]) -> None:
        raise NotImplementedError

    def get(self, key: bytes) -> bytes | None:
        raise NotImplementedError

    def flush_calls(self) -> int | None:
        return None

    def close(self) -> None:
        raise NotImplementedError


class BTreeEngine(Engine):
    """The B+tree of examples/btree.py, its flushes counted by the I/O hooks."""

    def __init__(self, path: Path, layout: str, mode: str) -> None:
        self.hooks = ffi.new("mp_io_hooks *")
        opts = _options(4096, 0.0, False, mode, 1 << 30, True, layout)
        opts.io_hooks = self.hooks
        out = ffi.new("mp_pager **")
        rc = lib.mp_pager_create(os.fsencode(str(path)), opts, out)
        if rc != 0:
            raise OSError(f"mp_pager_create: {rc}")
        self.pager = Pager(out[0], str(path))
        self.tree = _btree_module().BTree(self.pager)

    def put_batch(self, items: list[tuple[bytes, bytes]]) -> None:
        with self.tree.batch() as b:
            for k, v in items:
                b.put(k, v)

    def get(self, key: bytes) -> bytes | None:
        value: bytes | None = self.tree.get(key)
        return value

    def flush_calls(self) -> int:
        """Flush calls so far, less the one each growth of the file costs.

        A growth (the file doubles, up to the grow step) makes the new size
        durable with one flush of its own: a cost of the file's size, not of
        the transaction, and in "none" (whose frees wait for the next sync)
        a matter of when the run crosses a doubling.
        """
        calls = self.hooks.calls[lib.MP_IO_MSYNC] + self.hooks.calls[lib.MP_IO_FSYNC]
        # (counted by the hooks too, not by reading the page count around each
        # transaction: that read would add its own cost to the engine's row)
        growths = self.hooks.calls[lib.MP_IO_FALLOCATE]
        return int(calls) - int(growths)

    def close(self) -> None:
        self.pager.close()


class LmdbEngine(Engine):
    """py-lmdb with its defaults (sync=True, metasync=True): durable at commit."""

    def __init__(self, path: Path) -> None:
        import lmdb

        self.env = lmdb.open(str(path), map_size=1 << 30, subdir=True)

    def put_batch(self, items: list[tuple[bytes, bytes]]) -> None:
        with self.env.begin(write=True) as txn:
            for k, v in items:
                txn.put(k, v)

    def get(self, key: bytes) -> bytes | None:
        with self.env.begin() as txn:
            value: bytes | None = txn.get(key)
            return value

    def close(self) -> None:
        self.env.close()


class SqliteEngine(Engine):
    """sqlite3 in WAL mode, ``synchronous`` FULL (durable) or NORMAL (not at commit)."""

    def __init__(self, path: Path, synchronous: str) -> None:
        self.db = sqlite3.connect(str(path), isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute(f"PRAGMA synchronous={synchronous}")
        self.db.execute("CREATE TABLE kv (k BLOB PRIMARY KEY, v BLOB) WITHOUT ROWID")

    def put_batch(self, items: list[tuple[bytes, bytes]]) -> None:
        self.db.execute("BEGIN")
        self.db.executemany("INSERT OR REPLACE INTO kv VALUES (?, ?)", items)
        self.db.execute("COMMIT")

    def get(self, key: bytes) -> bytes | None:
        row = self.db.execute("SELECT v FROM kv WHERE k = ?", (key,)).fetchone()
        return None if row is None else bytes(row[0])

    def close(self) -> None:
        self.db.close()


def _fsync_floor(fd: int, n: int, per_txn: int) -> float:
    """Transactions/s of ``per_txn`` bare fdatasyncs, each after a 4 KiB pwrite.

    ``fd`` is a file of 64 KiB written and flushed once (``_floor_file``): no
    round creates or removes a file, whose metadata the next engine's first
    flush would otherwise commit in the file system's journal.
    """
    buf = os.urandom(4096)
    t0 = time.perf_counter()
    for i in range(n):
        for j in range(per_txn):
            os.pwrite(fd, buf, 4096 * ((2 * i + j) % 16))
            os.fdatasync(fd)
    return n / (time.perf_counter() - t0)


def _floor_file(path: Path) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    os.pwrite(fd, bytes(1 << 16), 0)
    os.fsync(fd)
    return fd


ROUNDS = 8


class _Subject:
    """One engine under test, its keys and its accumulated timings."""

    def __init__(self, name: str, durable: bool, engine: Engine, rng: random.Random) -> None:
        self.row = Row(name, durable)
        self.engine = engine
        self.rng = rng
        self.keys: list[bytes] = []
        self.t_single = self.t_batched = 0.0
        self.f_single = self.f_batched = 0
        self.n_single = self.n_batched = 0

    def fresh(self, n: int) -> list[tuple[bytes, bytes]]:
        items = [(self.rng.randbytes(KEY), self.rng.randbytes(VALUE)) for _ in range(n)]
        self.keys.extend(k for k, _ in items)
        return items

    def run(self, count: int, size: int) -> tuple[float, int]:
        """Time ``count`` transactions of ``size`` puts; (seconds, flush calls or -1)."""
        work = [self.fresh(size) for _ in range(count)]
        f0 = self.engine.flush_calls()
        t0 = time.perf_counter()
        for items in work:
            self.engine.put_batch(items)
        dt = time.perf_counter() - t0
        f1 = self.engine.flush_calls()
        return dt, (f1 - f0) if f0 is not None and f1 is not None else -1


def _floor(fd: int, count: int, per_txn: int, acc: list[float]) -> None:
    acc.append(1 / _fsync_floor(fd, count, per_txn))


def run(directory: Path, s: Settings) -> tuple[list[Row], dict[str, float]]:
    """Measure every engine and the floors in ``directory``, in interleaved rounds.

    The machine's load and the device's flush latency drift; every round runs
    a slice of each engine's transactions and of the floors, so all of them
    see the same conditions.
    """
    rng = random.Random(15)
    factories: list[tuple[str, bool, Callable[[Path], Engine]]] = []
    for layout in ("0.3", "0.2"):
        for mode in ("fast", "compat", "none"):
            factories.append(
                (
                    f"B+tree, layout {layout}, {mode!r}",
                    mode != "none",
                    lambda d, layout=layout, mode=mode: BTreeEngine(d / "tree.db", layout, mode),
                )
            )
    try:
        import lmdb  # noqa: F401

        factories.append(("py-lmdb (sync=True)", True, lambda d: LmdbEngine(d / "lmdb")))
    except ImportError:
        print("py-lmdb is not installed (pip install 'mappedpages[bench]'): its row is skipped")
    factories.append(
        ("sqlite3 WAL, synchronous=FULL", True, lambda d: SqliteEngine(d / "s.db", "FULL"))
    )
    factories.append(
        ("sqlite3 WAL, synchronous=NORMAL", False, lambda d: SqliteEngine(d / "s.db", "NORMAL"))
    )
    subjects: list[_Subject] = []
    floor_fd = -1
    try:
        for i, (name, durable, make) in enumerate(factories):
            sub = directory / f"e{i}"
            sub.mkdir()
            subject = _Subject(name, durable, make(sub), random.Random(rng.random()))
            for _ in range(PRELOAD // 1000):
                subject.engine.put_batch(subject.fresh(1000))
            subjects.append(subject)
        one: list[float] = []
        two: list[float] = []
        single = max(1, s.single // ROUNDS)
        batched = max(1, s.batched // ROUNDS)
        floor_fd = _floor_file(directory / "floor")
        for r in range(ROUNDS):
            _floor(floor_fd, single, 1, one)
            _floor(floor_fd, max(1, single // 2), 2, two)
            # Each round starts with the next engine: none is always the
            # first after the floors (or after any other engine).
            order = subjects[r % len(subjects) :] + subjects[: r % len(subjects)]
            for subject in order:
                dt, fl = subject.run(single, 1)
                subject.t_single += dt
                subject.f_single += fl
                subject.n_single += single
            for subject in order:
                dt, fl = subject.run(batched, 100)
                subject.t_batched += dt
                subject.f_batched += fl
                subject.n_batched += batched
        for subject in subjects:
            row = subject.row
            row.single = subject.n_single / subject.t_single
            row.batched = subject.n_batched / subject.t_batched
            if subject.engine.flush_calls() is not None:
                row.flushes_single = subject.f_single / subject.n_single
                row.flushes_batched = subject.f_batched / subject.n_batched
            probe = [subject.rng.choice(subject.keys) for _ in range(s.reads)]
            t0 = time.perf_counter()
            for k in probe:
                if subject.engine.get(k) is None:
                    raise AssertionError(f"{row.name}: a key written is missing")
            row.reads = s.reads / (time.perf_counter() - t0)
    finally:
        for subject in subjects:
            subject.engine.close()
        if floor_fd >= 0:
            os.close(floor_fd)
    floors = {
        "one fdatasync": 1 / statistics.median(one) if one else 0.0,
        "two fdatasyncs": 1 / statistics.median(two) if two else 0.0,
    }
    return [subject.row for subject in subjects], floors


def render(rows: list[Row], floors: dict[str, float], directory: Path) -> str:
    """The table, the floors and the verdicts on the issue's targets."""
    lines = [f"engine benchmark in {directory}", ""]
    head = ("engine", "(a) txn/s, 1 put", "(b) txn/s, 100 puts", "reads/s", "flushes/txn a, b")
    table = [head]
    for r in rows:
        mark = "" if r.durable else " (not durable)"
        fl = (
            "-"
            if r.flushes_single is None or r.flushes_batched is None
            else f"{r.flushes_single:.2f}, {r.flushes_batched:.2f}"
        )
        table.append(
            (r.name + mark, f"{r.single:,.0f}", f"{r.batched:,.0f}", f"{r.reads:,.0f}", fl)
        )
    for name, value in floors.items():
        table.append((f"floor: {name} per txn", f"{value:,.0f}", "", "", ""))
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    for i, row in enumerate(table):
        lines.append(" | ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
        if i == 0:
            lines.append("-|-".join("-" * w for w in widths))
    by = {r.name: r for r in rows}
    lmdb = by.get("py-lmdb (sync=True)")
    fast3 = by.get("B+tree, layout 0.3, 'fast'")
    fast2 = by.get("B+tree, layout 0.2, 'fast'")
    lines.append("")
    if lmdb and fast3 and fast2:
        lines.append(
            f"target: 0.3 'fast' >= 1.5x py-lmdb: (a) {fast3.single / lmdb.single:.2f}x, "
            f"(b) {fast3.batched / lmdb.batched:.2f}x"
        )
        lines.append(
            f"target: 0.2 'fast' >= 1x py-lmdb: (a) {fast2.single / lmdb.single:.2f}x, "
            f"(b) {fast2.batched / lmdb.batched:.2f}x"
        )
    if fast3:
        lines.append(
            "target: 0.3 'fast' (a) within 1.3x of one fdatasync per txn: "
            f"{floors['one fdatasync'] / fast3.single:.2f}x"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=None, help="folder for the files")
    parser.add_argument("--quick", action="store_true", help="fewer samples")
    args = parser.parse_args(argv)
    s = Settings.quick() if args.quick else Settings()
    base = args.dir if args.dir is not None else Path(os.getcwd())
    base.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="mappedpages-engine-", dir=base))
    try:
        rows, floors = run(work, s)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(render(rows, floors, base))
    return 0


if __name__ == "__main__":
    sys.exit(main())
