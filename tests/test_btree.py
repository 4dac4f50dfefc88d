"""Tests of examples/btree.py, the copy-on-write B+tree on engine transactions.

A hypothesis model runs batches of puts and deletes against a dict, across
reopens, in both layouts and every durability mode; a child process writing
batches is killed with SIGKILL and the reopened tree is exactly the state of
the last batch it acknowledged (or the one it was committing); no page leaks.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mappedpages import RECORD_BRANCH, Pager

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "btree.py"


def _load():
    spec = importlib.util.spec_from_file_location("btree_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


btree = _load()


def reachable(tree) -> set[int]:
    """Every node page of the tree (FORMAT.md, "Record trees": a branch's values are ids)."""
    out: set[int] = set()
    stack = [tree.pager.roots[0]] if tree.pager.roots[0] else []
    while stack:
        pid = stack.pop()
        out.add(pid)
        page = bytes(tree.pager.page(pid))
        kind, _, n, _ = struct.unpack_from("<BBHI", page)
        at = 8
        for _ in range(n):
            klen, vlen = struct.unpack_from("<HI", page, at)
            if kind == RECORD_BRANCH:
                stack.append(struct.unpack_from("<Q", page, at + 6 + klen)[0])
            at += 6 + klen + vlen
    return out


def check(tree, model: dict) -> None:
    assert len(tree) == len(model)
    assert list(tree.range()) == sorted(model.items())
    for k, v in model.items():
        assert tree.get(k) == v
    # No leak: the allocated pages are exactly the tree's nodes.
    assert set(tree.pager.allocated_pages()) == reachable(tree)


keys = st.binary(min_size=0, max_size=12)
values = st.binary(min_size=0, max_size=40)
op = st.one_of(
    st.tuples(st.just("put"), keys, values),
    st.tuples(st.just("del"), keys, st.just(b"")),
)
batches = st.lists(st.lists(op, min_size=1, max_size=30), min_size=1, max_size=12)


@pytest.mark.parametrize(
    "layout,mode", [("0.2", "compat"), ("0.2", "fast"), ("0.3", "fast"), ("0.3", "none")]
)
@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(batches=batches, reopen_every=st.integers(1, 4), fail_at=st.integers(0, 20))
def test_model(tmp_path, layout, mode, batches, reopen_every, fail_at):
    path = tmp_path / f"t-{os.getpid()}-{time.monotonic_ns()}.db"
    model: dict[bytes, bytes] = {}
    pager = Pager.create(path, 1024, durability=mode, layout=layout)
    try:
        tree = btree.BTree(pager)
        for n, batch in enumerate(batches):
            if n == fail_at % max(1, len(batches)) and n % 2:
                # A batch that raises: nothing of it stays.
                with pytest.raises(KeyError):
                    with tree.batch() as b:
                        for kind, k, v in batch:
                            b.put(k, v) if kind == "put" else b.delete(k)
                        raise KeyError
            else:
                with tree.batch() as b:
                    for kind, k, v in batch:
                        if kind == "put":
                            b.put(k, v)
                            model[k] = v
                        else:
                            assert b.delete(k) == (k in model)
                            model.pop(k, None)
            check(tree, model)
            if n % reopen_every == 0:
                pager.close()
                pager = Pager.open(path, durability=mode)
                tree = btree.BTree(pager)
                check(tree, model)
    finally:
        pager.close()


def test_many_keys_split_and_shrink(tmp_path):
    with btree.BTree.open(str(tmp_path / "t.db"), 1024, durability="fast") as tree:
        model = {}
        with tree.batch() as b:
            for i in range(3000):
                k = b"%06d" % ((i * 7919) % 3000)
                b.put(k, b"v" * (i % 50))
                model[k] = b"v" * (i % 50)
        check(tree, model)
        assert list(tree.range(b"000100", b"000105")) == [
            (b"%06d" % i, model[b"%06d" % i]) for i in range(100, 105)
        ]
        for i in range(0, 3000, 3):
            k = b"%06d" % i
            assert tree.delete(k)
            del model[k]
        check(tree, model)
        with tree.batch() as b:
            for k in list(model):
                b.delete(k)
        model.clear()
        check(tree, model)
        assert tree.pager.roots[0] == 0


def test_range_bounds_match_the_model(tmp_path):
    with Pager.create(tmp_path / "t.db", 1024, durability="none") as pager:
        tree = btree.BTree(pager)
        model = {}
        for n in range(20):
            with tree.batch() as b:
                for i in range(50):
                    k = b"%05d" % ((n * 50 + i) * 7919 % 1000)
                    b.put(k, b"%d" % n)
                    model[k] = b"%d" % n
        check(tree, model)
        keys = sorted(model)
        for lo, hi in [(None, b"00100"), (b"00500", None), (b"00250", b"00251"), (b"x", None),
                       (b"", b""), (b"00999", b"01000"), (b"0050", b"0051")]:
            want = [(k, model[k]) for k in keys if (lo is None or k >= lo)
                    and (hi is None or k < hi)]
            assert list(tree.range(lo, hi)) == want, (lo, hi)


def test_entry_too_big_is_refused(tmp_path):
    with btree.BTree.open(str(tmp_path / "t.db"), 1024) as tree:
        with pytest.raises(ValueError):
            tree.put(b"k", b"x" * 1024)
        with pytest.raises(TypeError):
            tree.put("k", b"x")  # type: ignore[arg-type]
        assert len(tree) == 0 and tree.pager.roots == (0,) * 8


def test_one_flush_per_batch_in_fast_mode(tmp_path):
    from support.iohooks import IoHooks, create_pager

    hooks = IoHooks()
    pager = create_pager(tmp_path / "t.db", 4096, hooks, durability="fast", layout="0.3")
    try:
        tree = btree.BTree(pager)
        for i in range(200):  # past the growth of the first pages
            tree.put(b"k%d" % i, b"v")
        before = hooks.counts()
        for i in range(50):
            tree.put(b"x%d" % i, b"v" * 30)
        after = hooks.counts()
        grow = after["fallocate"] - before["fallocate"]
        flushes = after["msync"] + after["fsync"] - before["msync"] - before["fsync"]
        assert flushes - grow == 50, (before, after)
    finally:
        pager.close()


def test_kill_9_keeps_the_last_acknowledged_batch(tmp_path):
    path = tmp_path / "t.db"
    code = textwrap.dedent(
        f"""
        import importlib.util, sys
        spec = importlib.util.spec_from_file_location("b", {str(EXAMPLE)!r})
        b = importlib.util.module_from_spec(spec); spec.loader.exec_module(b)
        from mappedpages import RECORD_BRANCH, Pager
        p = Pager.create({str(path)!r}, 1024, durability="fast")
        tree = b.BTree(p)
        n = 0
        while True:
            with tree.batch() as bt:
                for j in range(20):
                    bt.put(b"%08d" % (n * 20 + j), b"batch %d" % n)
                if n:
                    bt.delete(b"%08d" % ((n - 1) * 20))
            print(n, flush=True)
            n += 1
        """
    )
    for delay in (0.4, 0.9):
        if path.exists():
            path.unlink()
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == -signal.SIGKILL
        acked = [int(x) for x in out.split()]
        if not acked:
            continue
        with Pager.open(path) as p:
            tree = btree.BTree(p)
            got = len(tree)
            last = acked[-1]
            # The tree is the state after batch last or last + 1, whole.
            for n in (last, last + 1):
                expect = {}
                for m in range(n + 1):
                    for j in range(20):
                        expect[b"%08d" % (m * 20 + j)] = b"batch %d" % m
                    if m:
                        expect.pop(b"%08d" % ((m - 1) * 20))
                if got == len(expect) and dict(tree.range()) == expect:
                    break
            else:
                raise AssertionError(f"tree of {got} keys after batch {last} acknowledged")
            assert set(p.allocated_pages()) == reachable(tree)
