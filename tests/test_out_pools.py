"""The pools of out-parameters behind the hot calls stay seeded and whole.

alloc(), SubPageAllocator.alloc(), roots, tree_get and tree_apply each pop an
out-parameter (or buffer) from a shared pool and push it back. A pool that
ran down to empty between calls would free and reallocate its list's storage
at every call (``_ids.new_pool`` says why), and a pool that lost or doubled an
entry would either leak or hand one buffer to two threads at once.
"""

from __future__ import annotations

import threading

import mappedpages._records as records
from mappedpages import Pager, SubPageAllocator, pack_records
from mappedpages._ids import POOL_FLOOR, out_slots

POOLS = {
    "out_slots": out_slots,
    "tree_get": records._get_slots,
    "roots": records._roots_slots,
    "tree_apply": records._apply_outs,
}


def _exercise(pager: Pager, sub: SubPageAllocator) -> None:
    pid = pager.alloc()
    pager.free(pid)
    sub.free(sub.alloc())
    with pager.transaction() as tx:
        root, _ = tx.tree_apply(pager.roots[0], pack_records([(b"k", b"v")]))
        pager.set_root(0, root)
    assert pager.tree_get(pager.roots[0], b"k") == b"v"


def _check_pools() -> None:
    for name, pool in POOLS.items():
        assert len(pool) >= POOL_FLOOR, name
        assert len({id(x) for x in pool}) == len(pool), f"{name} holds an entry twice"


def test_pools_start_seeded() -> None:
    _check_pools()


def test_pools_stay_seeded_after_calls(tmp_path) -> None:
    pager = Pager.create(tmp_path / "p.mpp", 4096, durability="none", layout="0.3")
    try:
        sub = SubPageAllocator(pager, 256)
        before = {name: len(pool) for name, pool in POOLS.items()}
        for _ in range(20):
            _exercise(pager, sub)
        _check_pools()
        # One thread, one call in flight: nothing was added or lost.
        assert {name: len(pool) for name, pool in POOLS.items()} == before
        sub.detach()
    finally:
        pager.close()


def test_pools_whole_after_threads(tmp_path) -> None:
    pager = Pager.create(tmp_path / "p.mpp", 4096, durability="none", layout="0.3")
    errors: list[BaseException] = []
    got: list[list[int]] = [[] for _ in range(4)]

    def work(i: int) -> None:
        try:
            for _ in range(300):
                got[i].append(pager.alloc())
                assert len(pager.roots) == 8
        except BaseException as e:  # reported below
            errors.append(e)

    try:
        threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        ids = [pid for part in got for pid in part]
        assert len(set(ids)) == len(ids) == 1200  # no two calls shared an out-parameter
        _check_pools()
    finally:
        pager.close()
