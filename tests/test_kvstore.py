"""Tests of examples/kvstore.py, the key-value store built on every part of the library."""

from __future__ import annotations

import importlib.util
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mappedpages import Pager

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "kvstore.py"


def _load():
    spec = importlib.util.spec_from_file_location("kvstore_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["kvstore_example"] = module
    spec.loader.exec_module(module)
    return module


kv = _load()


def value_for(i: int, size: int) -> bytes:
    return bytes((i * 7 + j) % 251 for j in range(size))


# Sizes that land in every storage class at 4096-byte pages: empty, small
# sub-page (<= 64), medium sub-page (<= 512), one value page, several pages.
SIZES = [0, 1, 64, 65, 512, 513, 4000, 4080, 4081, 20000]


@pytest.fixture
def store(tmp_path):
    s = kv.KVStore.create(tmp_path / "store.kv", buckets=8)
    yield s
    s.close()


def test_put_get_every_size_class_and_reopen(tmp_path):
    path = tmp_path / "s.kv"
    with kv.KVStore.create(path, buckets=4) as s:
        for i, size in enumerate(SIZES):
            s[f"k{i}".encode()] = value_for(i, size)
        for i, size in enumerate(SIZES):
            assert s[f"k{i}".encode()] == value_for(i, size)
        assert len(s) == len(SIZES)
    with kv.KVStore.open(path) as s:
        assert len(s) == len(SIZES)
        for i, size in enumerate(SIZES):
            assert s[f"k{i}".encode()] == value_for(i, size)
        assert sorted(s) == sorted(f"k{i}".encode() for i in range(len(SIZES)))


def test_overwrite_across_size_classes_frees_old_storage(store):
    base_pages = store.pager.page_count - store.pager.free_page_count
    for size in SIZES + SIZES[::-1]:
        store[b"k"] = value_for(size, size)
        assert store[b"k"] == value_for(size, size)
    store[b"k"] = b""
    assert store[b"k"] == b""
    # Every value page and sub-page page went back to the pager.
    assert store.pager.page_count - store.pager.free_page_count == base_pages
    assert store.stats()["small_values"] == 0
    assert store.stats()["medium_values"] == 0


def test_delete_and_missing_keys(store):
    store[b"a"] = b"1"
    assert b"a" in store
    assert store.delete(b"a") is True
    assert store.delete(b"a") is False
    assert b"a" not in store
    with pytest.raises(KeyError):
        store[b"a"]
    with pytest.raises(KeyError):
        del store[b"a"]
    assert store.get(b"a", b"dflt") == b"dflt"
    assert len(store) == 0


def test_argument_checks(store):
    with pytest.raises(TypeError):
        store["text"] = b"x"
    with pytest.raises(TypeError):
        store[b"k"] = "text"
    with pytest.raises(ValueError):
        store[b""] = b"x"
    with pytest.raises(ValueError):
        store[b"x" * 1025] = b"x"
    store[bytearray(b"ba")] = memoryview(b"mv")
    assert store[b"ba"] == b"mv"
    assert 5 not in store


def test_overflow_chains_in_one_bucket(tmp_path):
    path = tmp_path / "one.kv"
    keys = [f"key-{i:05d}-{'x' * (i % 40)}".encode() for i in range(600)]
    with kv.KVStore.create(path, buckets=1) as s:
        with s.batch():
            for i, k in enumerate(keys[:300]):
                s[k] = value_for(i, i % 100)
        for i, k in enumerate(keys[300:], start=300):
            s[k] = value_for(i, i % 100)
        assert s.stats()["bucket_pages"] > 3
        for k in keys[::3]:
            del s[k]
    with kv.KVStore.open(path) as s:
        expect = {k: value_for(i, i % 100) for i, k in enumerate(keys) if i % 3}
        assert dict(s.items()) == expect
        s[b"again"] = b"fits into a page emptied by the deletes"
        assert s.stats()["bucket_pages"] == len(s._chains[0])


def test_batch_is_one_commit_and_sees_its_own_writes(store):
    store[b"old"] = b"x"
    with store.batch():
        store[b"a"] = b"1"
        store[b"b"] = b"2" * 600
        del store[b"old"]
        assert store[b"a"] == b"1"
        assert b"old" not in store
        assert sorted(store) == [b"a", b"b"]
        assert len(store) == 2
        with store.batch():  # nested: joins the outer one
            store[b"c"] = b"3"
    assert dict(store.items()) == {b"a": b"1", b"b": b"2" * 600, b"c": b"3"}


def test_batch_rolls_back_on_error(tmp_path):
    path = tmp_path / "rb.kv"
    with kv.KVStore.create(path, buckets=2) as s:
        s[b"keep"] = b"kept"
        used = s.pager.page_count - s.pager.free_page_count
        with pytest.raises(RuntimeError):
            with s.batch():
                s[b"keep"] = b"changed"
                s[b"new"] = b"n" * 9000
                raise RuntimeError("boom")
        assert dict(s.items()) == {b"keep": b"kept"}
        assert s.pager.page_count - s.pager.free_page_count == used
    with kv.KVStore.open(path) as s:
        assert dict(s.items()) == {b"keep": b"kept"}


def test_failed_commit_changes_nothing(tmp_path, monkeypatch):
    path = tmp_path / "fail.kv"
    with kv.KVStore.create(path, buckets=2) as s:
        s[b"a"] = b"1" * 100
        used = s.pager.page_count - s.pager.free_page_count
        real = s._commit

        # A failure after the values were written, inside the commit's transaction.
        def failing_in_txn(plan, dirty):
            with s.pager.transaction():
                for page in dirty.values():
                    if page.pid >= 0:
                        with s.pager.write_protected(page.pid) as w:
                            w.page[:] = page.encode(s.pager.page_size)
                raise OSError(28, "No space left on device")

        monkeypatch.setattr(s, "_commit", failing_in_txn)
        with pytest.raises(OSError):
            s[b"a"] = b"2" * 100
        with pytest.raises(OSError):
            s[b"b"] = b"3" * 5000
        monkeypatch.setattr(s, "_commit", real)
        assert dict(s.items()) == {b"a": b"1" * 100}
        assert s.pager.page_count - s.pager.free_page_count == used
    with kv.KVStore.open(path) as s:
        assert dict(s.items()) == {b"a": b"1" * 100}


def test_open_gives_back_unreferenced_storage(tmp_path):
    path = tmp_path / "gc.kv"
    with kv.KVStore.create(path, buckets=2) as s:
        s[b"a"] = b"x" * 100
        s[b"b"] = b"y" * 9000
        expect = dict(s.items())
    # What a crash between a value's write and its bucket's commit leaves:
    # allocated pages and a protected page that nothing refers to.
    with Pager.open(path) as p:
        before = p.page_count - p.free_page_count
        p.alloc_bulk(5)
        p.alloc_protected()
    with kv.KVStore.open(path) as s:
        assert dict(s.items()) == expect
        assert s.pager.page_count - s.pager.free_page_count == before


def test_not_a_store(tmp_path):
    path = tmp_path / "plain.mpp"
    Pager.create(path).close()
    with pytest.raises(kv.KVStoreError):
        kv.KVStore.open(path)
    with Pager.open(path) as p:
        pid = p.alloc_protected()
        with p.write_protected(pid) as w:
            w.page[:8] = b"NOTKVSTR"
    with pytest.raises(kv.KVStoreError):
        kv.KVStore.open(path)
    with pytest.raises(FileExistsError):
        kv.KVStore.create(path)


def test_damaged_bucket_is_refused(tmp_path):
    path = tmp_path / "dmg.kv"
    with kv.KVStore.create(path, buckets=2) as s:
        s[b"a"] = b"1"
        bucket = s._bucket(b"a")
        pid = s._chains[bucket][0].pid
    with Pager.open(path) as p:
        # Change the committed copy behind the directory's back.
        a, b = p._backing(pid)
        active = p.protected_page(pid)
        raw = bytes(active)
        del active
        for page in (a, b):
            with open(path, "r+b") as fh:
                fh.seek(page * p.page_size)
                if fh.read(p.page_size) == raw:
                    fh.seek(page * p.page_size + 100)
                    fh.write(b"\xff")
    with pytest.raises(kv.KVStoreError, match="CRC"):
        kv.KVStore.open(path)


def test_demo_runs(tmp_path):
    r = subprocess.run(
        [sys.executable, str(EXAMPLE), "demo", str(tmp_path / "demo.kv")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert "verified" in r.stdout


CRASH_CHILD = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {example_dir!r})
    import kvstore
    def value_for(i, size):
        return bytes((i * 7 + j) % 251 for j in range(size))
    s = kvstore.KVStore.open({path!r})
    i = 0
    while True:
        size = (0, 10, 100, 600, 5000)[i % 5]
        if i % 7 == 3:
            s.delete(f"k{{i - 3}}".encode())
        elif i % 11 == 5:
            with s.batch():
                for j in range(4):
                    s[f"b{{i}}-{{j}}".encode()] = value_for(i + j, size)
        else:
            s[f"k{{i}}".encode()] = value_for(i, size)
        print(i, flush=True)
        i += 1
    """
)


def _expected_after(acked: int):
    """The store's content after operations 0..acked-1, as the child does them."""
    out = {}
    for i in range(acked):
        size = (0, 10, 100, 600, 5000)[i % 5]
        if i % 7 == 3:
            out.pop(f"k{i - 3}".encode(), None)
        elif i % 11 == 5:
            for j in range(4):
                out[f"b{i}-{j}".encode()] = value_for(i + j, size)
        else:
            out[f"k{i}".encode()] = value_for(i, size)
    return out


@pytest.mark.parametrize("round_", range(3))
def test_sigkill_mid_workload_loses_no_acknowledged_write(tmp_path, round_):
    path = tmp_path / "crash.kv"
    kv.KVStore.create(path, buckets=4).close()
    code = CRASH_CHILD.format(example_dir=str(EXAMPLE.parent), path=str(path))
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=tmp_path
    )
    acked = 0
    target = 40 + 25 * round_ + random.randrange(15)
    deadline = time.monotonic() + 60
    assert proc.stdout is not None
    while acked < target and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        acked = int(line) + 1
    os.kill(proc.pid, signal.SIGKILL)
    # Operations the child finished after our last read are in the pipe still.
    for line in proc.stdout.read().splitlines(keepends=True):
        if line.endswith("\n"):
            acked = int(line) + 1
    proc.wait()
    assert acked >= 10, "the child made too little progress"
    with kv.KVStore.open(path) as s:
        got = dict(s.items())
    done = _expected_after(acked)
    # The operation in flight at the kill may or may not have committed, whole.
    maybe = _expected_after(acked + 1)
    assert got in (done, maybe)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["put", "delete", "reopen", "batch"]),
            st.integers(0, 30),
            st.sampled_from([0, 3, 64, 65, 300, 513, 4081, 9000]),
        ),
        max_size=40,
    )
)
def test_model(tmp_path_factory, ops):
    path = tmp_path_factory.mktemp("model") / "m.kv"
    model: dict[bytes, bytes] = {}
    s = kv.KVStore.create(path, buckets=2, page_size=1024)
    try:
        for n, (op, k, size) in enumerate(ops):
            key = f"key{k}".encode()
            if op == "put":
                s[key] = model[key] = value_for(n, size)
            elif op == "delete":
                assert s.delete(key) == (key in model)
                model.pop(key, None)
            elif op == "batch":
                with s.batch():
                    for j in range(3):
                        bk = f"key{(k + j) % 31}".encode()
                        s[bk] = model[bk] = value_for(n + j, size)
            else:
                s.close()
                s = kv.KVStore.open(path)
            assert len(s) == len(model)
        assert dict(s.items()) == model
        s.close()
        s = kv.KVStore.open(path)
        assert dict(s.items()) == model
        used = s.pager.page_count - s.pager.free_page_count
        for key in list(model):
            del s[key]
        assert len(s) == 0
        assert s.pager.page_count - s.pager.free_page_count <= used
    finally:
        s.close()
