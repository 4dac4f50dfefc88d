"""Benchmark the example key-value store against sqlite3, dbm.sqlite3 and shelve.

Run by hand, with the package installed (or PYTHONPATH=. from the checkout):

    python benchmarks/bench_kvstore.py [--n 1000] [--value-size 100] [--batch 100]
                                       [--durability compat] [--dir DIR]

Every row is measured in the same run, in the same folder, with the same keys
(16 bytes) and values (--value-size bytes):

  * "put": one key per durable commit. kvstore: write the value, sync(), then
    commit its bucket (a protected page); sqlite3: one INSERT OR REPLACE per
    transaction in autocommit mode, with the defaults (rollback journal,
    synchronous=FULL), and again in WAL mode (synchronous=FULL).
  * "put, batches of B": B keys per commit (kvstore.batch(); one sqlite3
    transaction).
  * "get": every key once, in random order, from a store just reopened.
  * dbm.sqlite3 (Python 3.13 and later) commits every put as sqlite3 does.
  * shelve (over the platform's default dbm) never flushes: its puts are
    not durable, so its row shows the cost of the work without durability.

The commit cost is dominated by the flushes, so it depends on the file system
and device under --dir (default: a temporary folder).
"""

from __future__ import annotations

import argparse
import importlib.util
import random
import shelve
import shutil
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "kvstore.py"


def load_kvstore():
    spec = importlib.util.spec_from_file_location("kvstore", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["kvstore"] = module
    spec.loader.exec_module(module)
    return module


def timed(fn: Callable[[], None]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


class Results:
    def __init__(self) -> None:
        self.rows: list[tuple[str, str, str, int, float]] = []

    def add(self, store: str, op: str, durable: str, n: int, seconds: float) -> None:
        self.rows.append((store, op, durable, n, seconds))
        print(f"  {store:<28} {op:<22} {n / seconds:>10.0f} ops/s", file=sys.stderr)

    def print(self) -> None:
        table = [("store", "operation", "durable", "ops/s", "us/op")]
        for store, op, durable, n, seconds in self.rows:
            table.append((store, op, durable, f"{n / seconds:.0f}", f"{seconds / n * 1e6:.1f}"))
        widths = [max(len(r[c]) for r in table) for c in range(5)]

        def line(cells: tuple[str, ...]) -> str:
            out = [c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in
                   enumerate(zip(cells, widths))]
            return "| " + " | ".join(out) + " |"

        print(line(table[0]))
        print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
        for r in table[1:]:
            print(line(r))


def bench_kvstore(kv, work: Path, keys, values, order, batch: int, durability: str,
                  res: Results) -> None:
    name = f"kvstore ({durability})"
    path = work / "kv-single.kv"
    with kv.KVStore.create(path, buckets=256, durability=durability) as s:
        res.add(name, "put", "each put", len(keys),
                timed(lambda: [s.put(k, v) for k, v in zip(keys, values)] and None))
    path_b = work / "kv-batch.kv"
    with kv.KVStore.create(path_b, buckets=256, durability=durability) as s:

        def batched() -> None:
            for i in range(0, len(keys), batch):
                with s.batch():
                    for k, v in zip(keys[i : i + batch], values[i : i + batch]):
                        s.put(k, v)

        res.add(name, f"put, batches of {batch}", "each batch", len(keys), timed(batched))
    t0 = time.perf_counter()
    with kv.KVStore.open(path, durability=durability) as s:
        opened = time.perf_counter() - t0
        get = s.get

        def gets() -> None:
            for i in order:
                assert get(keys[i]) is not None

        res.add(name, "get", "-", len(keys), timed(gets))
    print(f"  (kvstore open with {len(keys)} keys: {opened * 1000:.1f} ms)", file=sys.stderr)


def bench_sqlite(work: Path, keys, values, order, batch: int, wal: bool, res: Results) -> None:
    mode = "WAL" if wal else "rollback journal"
    name = f"sqlite3 ({mode})"
    path = work / f"sqlite-{'wal' if wal else 'journal'}.db"
    con = sqlite3.connect(path, isolation_level=None)
    if wal:
        con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=FULL")
    con.execute("CREATE TABLE kv (k BLOB PRIMARY KEY, v BLOB) WITHOUT ROWID")
    sql = "INSERT OR REPLACE INTO kv VALUES (?, ?)"

    def singles() -> None:
        for k, v in zip(keys, values):
            con.execute(sql, (k, v))

    res.add(name, "put", "each put", len(keys), timed(singles))
    con.execute("DELETE FROM kv")

    def batched() -> None:
        for i in range(0, len(keys), batch):
            con.execute("BEGIN")
            con.executemany(sql, zip(keys[i : i + batch], values[i : i + batch]))
            con.execute("COMMIT")

    res.add(name, f"put, batches of {batch}", "each batch", len(keys), timed(batched))
    con.close()
    con = sqlite3.connect(path, isolation_level=None)
    q = "SELECT v FROM kv WHERE k = ?"

    def gets() -> None:
        for i in order:
            assert con.execute(q, (keys[i],)).fetchone() is not None

    res.add(name, "get", "-", len(keys), timed(gets))
    con.close()


def bench_dbm_sqlite3(work: Path, keys, values, order, res: Results) -> None:
    try:
        import dbm.sqlite3 as dbm_sqlite3  # Python 3.13+
    except ImportError:
        print("  (dbm.sqlite3 needs Python 3.13 or later: skipped)", file=sys.stderr)
        return
    path = work / "dbm-sqlite3.db"
    with dbm_sqlite3.open(str(path), "c") as db:
        res.add("dbm.sqlite3", "put", "each put", len(keys),
                timed(lambda: [db.__setitem__(k, v) for k, v in zip(keys, values)] and None))
    with dbm_sqlite3.open(str(path), "r") as db:
        res.add("dbm.sqlite3", "get", "-", len(keys),
                timed(lambda: [db[keys[i]] for i in order] and None))


def bench_shelve(work: Path, keys, values, order, res: Results) -> None:
    import dbm

    path = work / "shelf"
    skeys = [k.decode() for k in keys]
    with shelve.open(str(path), "n") as db:
        res.add("shelve", "put", "no (never flushed)", len(keys),
                timed(lambda: [db.__setitem__(k, v) for k, v in zip(skeys, values)] and None))
    backend = dbm.whichdb(str(path)) or "dbm"
    with shelve.open(str(path), "r") as db:
        res.add("shelve", "get", "-", len(keys),
                timed(lambda: [db[skeys[i]] for i in order] and None))
    print(f"  (shelve backend: {backend})", file=sys.stderr)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1000, help="keys per row")
    ap.add_argument("--value-size", type=int, default=100, help="bytes per value")
    ap.add_argument("--batch", type=int, default=100, help="keys per batched commit")
    ap.add_argument("--durability", default="compat", choices=("compat", "fast", "none"),
                    help="the kvstore pager's durability mode")
    ap.add_argument("--dir", type=Path, default=None, help="folder for the files")
    args = ap.parse_args()

    kv = load_kvstore()
    rng = random.Random(42)
    keys = [f"key-{i:012d}".encode() for i in range(args.n)]
    values = [rng.randbytes(args.value_size) for _ in range(args.n)]
    order = list(range(args.n))
    rng.shuffle(order)
    work = Path(tempfile.mkdtemp(prefix="bench-kvstore-", dir=args.dir))
    res = Results()
    try:
        print(f"measuring in {work} ...", file=sys.stderr)
        bench_kvstore(kv, work, keys, values, order, args.batch, args.durability, res)
        bench_sqlite(work, keys, values, order, args.batch, False, res)
        bench_sqlite(work, keys, values, order, args.batch, True, res)
        bench_dbm_sqlite3(work, keys, values, order, res)
        bench_shelve(work, keys, values, order, res)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(
        f"key-value stores: {args.n} keys of 16 bytes, values of {args.value_size} bytes, "
        f"Python {sys.version.split()[0]}, sqlite {sqlite3.sqlite_version}"
    )
    print()
    res.print()


if __name__ == "__main__":
    main()
