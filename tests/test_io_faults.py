"""I/O faults: the Nth call of each kind fails, once or from then on; and a real full disk.

For every kind of system call the C core makes (msync, fsync, ftruncate,
fallocate, mmap, munmap) and every N up to the number of such calls in the
standard workload, the workload is run again with call N failing (through the
hook table of tests/iohooks.py), transiently and persistently. The operation in
which the call falls must raise OSError with the injected errno. Where the call
was a flush, the pager must be poisoned (every later call raises Unavailable:
after a failed msync/fsync the kernel may have dropped the dirty pages, so a
retry cannot be trusted); elsewhere it must be unchanged and usable. A reopen
must show every acknowledged commit.
"""

from __future__ import annotations

import errno
import gc
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest
from support.iohooks import FLUSH_KINDS, KINDS, IoHooks, close_quietly, create_pager, open_pager
from support.workloads import State, standard_workload, state_of

from mappedpages import MappedPageError, Pager, RecoveryWarning, Unavailable
from mappedpages._core import lib

PS = 1024
ERRNO = {
    "msync": errno.EIO,
    "fsync": errno.EIO,
    "ftruncate": errno.EFBIG,
    "fallocate": errno.ENOSPC,
    "mmap": errno.ENOMEM,
    "munmap": errno.EINVAL,
}


@dataclass
class Reference:
    states: list[State]
    create_calls: dict[str, int]
    op_calls: list[dict[str, tuple[int, int]]]  # per op: kind -> (first, last) call number
    total_calls: dict[str, int]  # after close


_REFERENCE: dict[str, Reference] = {}


def reference(tmp: Path, mode: str = "compat") -> Reference:
    """The standard workload without faults: its states and where each call falls."""
    if mode in _REFERENCE:
        return _REFERENCE[mode]
    hooks = IoHooks()
    path = tmp / f"ref-{mode}.mpp"
    p = create_pager(path, PS, hooks, durability=mode)
    create_calls = hooks.counts()
    states = [state_of(p)]
    op_calls = []
    ctx: dict = {}
    for op in standard_workload():
        before = hooks.counts()
        op.fn(p, ctx)
        after = hooks.counts()
        op_calls.append({k: (before[k] + 1, after[k]) for k in KINDS})
        states.append(state_of(p))
    p.close()
    ref = Reference(states, create_calls, op_calls, hooks.counts())
    _REFERENCE[mode] = ref
    return ref


def _reopen_state(path: Path) -> tuple[State, list[str]]:
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        p = Pager.open(path)
    try:
        return state_of(p), [str(w.message) for w in rec if w.category is RecoveryWarning]
    finally:
        p.close()


def _poisoned_everywhere(p: Pager) -> list[str]:
    """Every state-changing call must raise Unavailable on a poisoned pager."""
    calls = {
        "alloc": lambda: p.alloc(),
        "alloc_bulk": lambda: p.alloc_bulk(2),
        "free_bulk": lambda: p.free_bulk([3]),
        "sync": lambda: p.sync(),
        "alloc_protected": lambda: p.alloc_protected(),
    }
    wrong = []
    for name, fn in calls.items():
        try:
            fn()
        except Unavailable:
            continue
        except Exception as exc:  # noqa: BLE001
            wrong.append(f"{name} raised {type(exc).__name__}: {exc}")
            continue
        wrong.append(f"{name} succeeded on a poisoned pager")
    return wrong


def run_with_fault(tmp: Path, kind: str, n: int, persistent: bool,
                   mode: str = "compat") -> list[str]:
    """Run the standard workload with call N of KIND failing; return what went wrong.

    Modes whose operations are durable when they return (compat, fast) only:
    there a failed operation may show, after a reopen, the state before it or
    the state it was making, and nothing older.
    """
    ref = reference(tmp, mode)
    err = ERRNO[kind]
    k = KINDS[kind]
    path = tmp / f"{kind}-{n}-{int(persistent)}.mpp"
    hooks = IoHooks()
    hooks.fail(k, n, err, persistent)
    where = (f"{mode}: {kind} call {n} ({'persistent' if persistent else 'transient'}, "
             f"errno {err})")
    try:
        p = create_pager(path, PS, hooks, durability=mode)
    except OSError as exc:
        if n > ref.create_calls[kind]:
            return [f"{where}: create failed, though the call is after create: {exc!r}"]
        if exc.errno != err:
            return [f"{where}: create raised errno {exc.errno}, not {err}"]
        if path.exists():
            return [f"{where}: a failed create left {path.name} behind"]
        return []
    if n <= ref.create_calls[kind] and k != lib.MP_IO_MUNMAP:
        close_quietly(p)
        return [f"{where}: create succeeded though call {n} falls inside it"]

    problems: list[str] = []
    ops = standard_workload()
    ctx: dict = {}
    failed_at = None
    poisoned = False
    i = 0
    while i < len(ops):
        op = ops[i]
        i += 1
        try:
            op.fn(p, ctx)
        except OSError as exc:
            if isinstance(exc, MappedPageError) or exc.errno != err:
                problems.append(f"{where}: op {i} ({op.label}) raised {exc!r}")
                break
            first, last = ref.op_calls[i - 1][kind]
            if failed_at is None and not first <= n <= last:
                problems.append(
                    f"{where}: op {i} ({op.label}) failed, but call {n} is in "
                    f"calls {first}..{last} of that op in the reference run"
                )
            failed_at = i
            gc.collect()  # drop a writer whose commit failed, and its view
            if k in FLUSH_KINDS:
                poisoned = True
                problems += [f"{where}: after the failed flush, {w}" for w in
                             _poisoned_everywhere(p)]
                break
            # Not a flush: nothing may have changed, and the pager stays usable.
            now = state_of(p)
            if not ref.states[i - 1].matches(now):
                problems.append(f"{where}: op {i} ({op.label}) failed but changed the "
                                f"state: {now.describe()}")
                break
            if persistent:
                try:
                    op.fn(p, ctx)
                    problems.append(f"{where}: a persistent failure let op {i} succeed on retry")
                except OSError as again:
                    if again.errno != err:
                        problems.append(f"{where}: retry raised {again!r}")
                hooks.clear_faults()
            i -= 1  # retry the operation: it must now succeed
            continue
        except Exception as exc:  # noqa: BLE001 - anything but OSError is wrong here
            problems.append(f"{where}: op {i} ({op.label}) raised {type(exc).__name__}: {exc}")
            break
        if not ref.states[i].matches(state_of(p)):
            problems.append(f"{where}: after op {i} ({op.label}) the state differs from the "
                            f"reference run: {state_of(p).describe()}")
            break
    inside_ops = any(r[kind][0] <= n <= r[kind][1] for r in ref.op_calls)
    if failed_at is None and inside_ops and k != lib.MP_IO_MUNMAP and not problems:
        problems.append(f"{where}: no operation failed, though call {n} falls inside one")
    try:
        p.close()
    except Exception as exc:  # noqa: BLE001
        problems.append(f"{where}: close raised {type(exc).__name__}: {exc}")
        close_quietly(p)

    got, warned = _reopen_state(path)
    if poisoned:
        assert failed_at is not None
        allowed = (ref.states[failed_at - 1], ref.states[failed_at])
        if not any(s.matches(got) for s in allowed):
            problems.append(
                f"{where}: after the failed op {failed_at} a reopen shows {got.describe()}; "
                f"expected {allowed[0].describe()} or {allowed[1].describe()}"
            )
    elif not problems and not ref.states[-1].matches(got):
        problems.append(f"{where}: reopen shows {got.describe()}, expected "
                        f"{ref.states[-1].describe()}")
    if not poisoned and warned and not problems:
        problems.append(f"{where}: a clean reopen warned: {warned}")
    path.unlink(missing_ok=True)
    return problems


@pytest.mark.parametrize("mode", ["compat", "fast"])
@pytest.mark.parametrize("persistent", [False, True], ids=["once", "persistent"])
# ftruncate is only called when fallocate is unsupported or fails (the
# workload makes no such call); test_ftruncate_after_failed_fallocate covers it.
@pytest.mark.parametrize("kind", [k for k in KINDS if k != "ftruncate"])
def test_nth_call_fails(tmp_path, kind, persistent, mode):
    ref = reference(tmp_path, mode)
    total = ref.total_calls[kind]
    assert total > 0, f"the workload makes no {kind} call"
    problems: list[str] = []
    for n in range(1, total + 1):
        problems += run_with_fault(tmp_path, kind, n, persistent, mode)
    assert not problems, f"{len(problems)} problem(s):\n" + "\n".join(problems[:10])


def test_call_counts_cover_every_kind(tmp_path):
    ref = reference(tmp_path)
    assert ref.total_calls["msync"] >= 30
    assert ref.total_calls["fsync"] >= 4
    assert ref.total_calls["fallocate"] >= 4
    assert ref.total_calls["mmap"] >= 4
    assert ref.total_calls["munmap"] >= 1


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_ftruncate_after_failed_fallocate(tmp_path, n):
    """A grow whose fallocate fails shrinks the file back; if that fails too, the
    grow still fails cleanly and the pager stays usable."""
    path = tmp_path / "t.mpp"
    hooks = IoHooks()
    p = create_pager(path, PS, hooks)
    hooks.fail(lib.MP_IO_FALLOCATE, 1, errno.ENOSPC)
    hooks.fail(lib.MP_IO_FTRUNCATE, 1, errno.EIO)
    ids = []
    with pytest.raises(OSError) as info:
        for _ in range(n * 8):
            ids.append(p.alloc())
    assert info.value.errno == errno.ENOSPC
    assert hooks.calls(lib.MP_IO_FTRUNCATE) == 1
    before = state_of(p)
    ids.append(p.alloc())  # the fault was once: growth works now
    assert ids == list(range(3, 3 + len(ids)))
    after = state_of(p)
    assert after.allocated == before.allocated | {ids[-1]}
    p.close()
    got, warned = _reopen_state(path)
    assert got.matches(after) and after.matches(got)
    assert not warned


@pytest.mark.parametrize("call", [1, 2])
def test_mmap_failure_at_open(tmp_path, call):
    path = tmp_path / "o.mpp"
    with Pager.create(path, page_size=PS) as p:
        p.alloc_bulk(5)
        before = state_of(p)
    data = path.read_bytes()
    hooks = IoHooks()
    hooks.fail(lib.MP_IO_MMAP, call, errno.ENOMEM)
    with pytest.raises(OSError) as info:
        open_pager(path, hooks)
    assert info.value.errno == errno.ENOMEM
    assert path.read_bytes() == data
    got, warned = _reopen_state(path)
    assert got.matches(before) and not warned


def test_failed_flush_then_reopen_keeps_acknowledged(tmp_path):
    """The simplest case spelled out: alloc, alloc whose metadata flush fails, reopen."""
    path = tmp_path / "f.mpp"
    hooks = IoHooks()
    p = create_pager(path, PS, hooks)
    first = p.alloc()
    hooks.fail(lib.MP_IO_MSYNC, 1, errno.EIO)
    with pytest.raises(OSError) as info:
        p.alloc()
    assert info.value.errno == errno.EIO
    with pytest.raises(Unavailable):
        p.alloc()
    with pytest.raises(Unavailable):
        p.free(first)
    p.close()
    with Pager.open(path) as q:
        assert first in set(q.allocated_pages())


def test_failed_protected_commit_can_be_dropped_and_closed(tmp_path):
    """A writer whose commit hit a failed flush must not keep the pager from closing."""
    path = tmp_path / "w.mpp"
    hooks = IoHooks()
    p = create_pager(path, PS, hooks)
    pid = p.alloc_protected()
    w = p.write_protected(pid)
    w.page[:4] = b"abcd"
    hooks.fail(lib.MP_IO_MSYNC, 1, errno.EIO)
    with pytest.raises(OSError):
        w.commit()
    try:
        w.discard()
    except (ValueError, MappedPageError):
        pass
    del w
    gc.collect()
    p.close()
    with Pager.open(path) as q:
        assert list(q.allocated_protected_pages()) == [pid]


# --------------------------------------------------------------------------
# A real full disk: a small tmpfs
# --------------------------------------------------------------------------

FILL = textwrap.dedent(
    """
    import json, sys, warnings
    from mappedpages import Pager
    path, ps = sys.argv[1], int(sys.argv[2])
    out = {"allocated": 0}
    p = Pager.create(path, page_size=ps)
    ids = []
    try:
        while True:
            pid = p.alloc()
            ids.append(pid)
            v = p.page(pid)
            v[:] = bytes([pid % 251]) * ps   # every allocated page is written
            v.release()
    except OSError as e:
        out["errno"] = e.errno
        out["error"] = type(e).__name__
    out["allocated"] = len(ids)
    out["page_count"] = p.page_count
    # still usable: free, alloc (reuses the freed page), bulk within the file, sync
    p.free(ids[-1])
    out["realloc"] = p.alloc() == ids[-1]
    free_now = p.free_page_count
    if free_now:
        out["bulk"] = len(p.alloc_bulk(free_now))
    p.sync()
    allocated = sorted(p.allocated_pages())
    p.close()
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        q = Pager.open(path)
    out["warnings"] = [str(w.message) for w in rec]
    out["reopened_same"] = sorted(q.allocated_pages()) == allocated
    out["data_ok"] = all(bytes(q.page(i))[:1] == bytes([i % 251]) for i in ids[:-1])
    q.close()
    print(json.dumps(out))
    """
)


@pytest.fixture
def small_tmpfs():
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tempfile.mkdtemp(prefix="mp-full-")
    # mount and umount are not ours: no sanitizer runtime preloaded into them.
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    try:
        res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=200k", "tmpfs", mnt],
                             capture_output=True, text=True, env=env)
    except FileNotFoundError:
        os.rmdir(mnt)
        pytest.skip("no mount command")
    if res.returncode != 0:
        os.rmdir(mnt)
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.strip() or res.returncode}")
    try:
        yield Path(mnt)
    finally:
        subprocess.run(["umount", mnt], check=False, env=env)
        os.rmdir(mnt)


@pytest.mark.parametrize("page_size", [1024, 4096])
def test_disk_full_for_real(small_tmpfs, page_size):
    # Leave an odd amount of room, so the failing grow is a partial one.
    (small_tmpfs / "filler").write_bytes(b"\0" * (37 * 1024))
    path = small_tmpfs / "full.mpp"
    res = subprocess.run([sys.executable, "-c", FILL, str(path), str(page_size)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, (
        f"the filling process died (returncode {res.returncode}; -7 is SIGBUS):\n"
        f"{res.stdout}\n{res.stderr}"
    )
    out = json.loads(res.stdout)
    assert out["errno"] == errno.ENOSPC and out["error"] == "OSError", out
    assert out["allocated"] > 10, out
    assert out["realloc"], out
    assert out["reopened_same"] and out["data_ok"], out
    assert out["warnings"] == [], out


if __name__ == "__main__":
    # python tests/test_io_faults.py --report: the figures in RELIABILITY.md.
    import time

    tmp = Path(tempfile.mkdtemp(prefix="mp-faults-"))
    total_runs = 0
    all_problems: list[str] = []
    t0 = time.monotonic()
    for mode in ("compat", "fast"):
        ref = reference(tmp, mode)
        for kind in KINDS:
            n_calls = ref.total_calls[kind]
            runs = 0
            found: list[str] = []
            for persistent in (False, True):
                for n in range(1, n_calls + 1):
                    found += run_with_fault(tmp, kind, n, persistent, mode)
                    runs += 1
            total_runs += runs
            all_problems += found
            print(f"{mode:6} {kind:10} {n_calls:3} calls in the workload, {runs:3} runs "
                  f"(once and persistent), {len(found)} problems")
    print(f"{total_runs} runs in {time.monotonic() - t0:.1f} s, {len(all_problems)} problems")
    for line in all_problems[:20]:
        print("  ", line)
