"""The core reads a caller's id buffer once (it may change under it), into memory it owns.

mp_subpage_free_bulk commits through the pager in the middle of its work, so the
I/O hooks' barrier callback can change the caller's buffer at exactly that point:
a core that read the buffer again would apply other ids than it validated.
mp_protected_free_bulk and mp_subpage_restore are raced by another thread.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_child(code: str, timeout: float = 60.0) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=str(ROOT / "tests"),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, (
        f"child failed (rc {proc.returncode}, a signal if negative)\n"
        f"{proc.stdout}\n{proc.stderr}"
    )


def test_subpage_free_bulk_applies_the_ids_it_checked(tmp_path: Path) -> None:
    """Ids changed during free_bulk's commit: the freed slots are the ones checked."""
    run_child(
        f"""
        from support.iohooks import IoHooks, create_pager
        from mappedpages._core import ffi, lib

        buf = ffi.new("uint64_t[3]")
        late = []

        def on_barrier(kind, offset, length):
            # Mid-call: the pager is committing the emptied page. Point the
            # caller's buffer at the full page's slots.
            if late:
                buf[0], buf[1], buf[2] = late

        hooks = IoHooks(on_barrier)
        pager = create_pager({str(tmp_path / "s.mpp")!r}, 1024, hooks)
        out = ffi.new("mp_subpage **")
        assert lib.mp_subpage_new(pager._handle, 512, out) == 0
        s = out[0]
        ids = ffi.new("uint64_t[6]")
        assert lib.mp_subpage_alloc_bulk(s, 6, ids) == 0
        ids = sorted(int(i) for i in ids)
        a, b, c, d, e, f = ids  # three full pages of two slots each
        buf[0], buf[1], buf[2] = a, b, c
        late[:] = [e, f, e]
        assert lib.mp_subpage_free_bulk(s, buf, 3) == 0
        st = ffi.new("mp_sub_stats *")
        assert lib.mp_subpage_stats(s, st) == 0
        assert st.live_count == 3 and st.big_pages == 2, (st.live_count, st.big_pages)
        assert st.partial_pages == 1
        one = ffi.new("uint64_t *")
        assert lib.mp_subpage_alloc(s, one) == 0
        assert one[0] == c, (int(one[0]), ids)
        assert lib.mp_subpage_alloc(s, one) == 0
        assert one[0] not in (c, d, e, f), (int(one[0]), ids)
        lib.mp_subpage_destroy(s)
        pager.close()
        """
    )


def test_protected_free_bulk_buffer_changed_by_another_thread(tmp_path: Path) -> None:
    """Pids swapped during free_protected_bulk: never a signal, never a half-freed entry."""
    run_child(
        f"""
        import threading, time
        from array import array
        import mappedpages as mp

        p = mp.Pager.create({str(tmp_path / "p.mpp")!r}, 1024)
        N = 64
        pids = [p.alloc_protected() for _ in range(2 * N)]
        keep = pids[N:]
        free_ids = array("Q", pids[:N])
        other = array("Q", keep)
        buf = array("Q", free_ids)
        stop = False

        def mutate():
            while not stop:
                buf[:] = other
                buf[:] = free_ids

        t = threading.Thread(target=mutate)
        t.start()
        try:
            deadline = time.monotonic() + 2.0
            while time.monotonic() < deadline:
                try:
                    p.free_protected_bulk(buf)
                except (mp.DoubleFree, mp.OutOfBounds, mp.ReservedPage, ValueError):
                    continue
                break
        finally:
            stop = True
            t.join()
        live = sorted(p.allocated_protected_pages())
        # Whatever was freed is a whole set the core checked: all of one list
        # or nothing of it, never a mix.
        assert live in (sorted(pids), sorted(keep), sorted(pids[:N])), len(live)
        p.close()
        with mp.Pager.open({str(tmp_path / "p.mpp")!r}) as q:
            assert sorted(q.allocated_protected_pages()) == live
        """
    )


def test_subpage_restore_buffer_changed_by_another_thread(tmp_path: Path) -> None:
    """Ids swapped for reserved and far pages during restore: no signal, all or nothing."""
    run_child(
        f"""
        import threading, time
        from array import array
        import mappedpages as mp
        from mappedpages._core import ffi, lib

        p = mp.Pager.create({str(tmp_path / "r.mpp")!r}, 1024)
        a = mp.SubPageAllocator(p, 512)
        ids = a.alloc_bulk(200)
        good = array("Q", ids)
        bad = array("Q", ids)
        for i in range(0, len(ids), 5):
            bad[i] = (1 << 40) + i
        buf = array("Q", good)
        stop = False

        def mutate():
            while not stop:
                buf[:] = bad
                buf[:] = good

        out = ffi.new("mp_subpage **")
        assert lib.mp_subpage_new(p._handle, 512, out) == 0
        s = out[0]
        t = threading.Thread(target=mutate)
        t.start()
        ok = 0
        try:
            deadline = time.monotonic() + 2.0
            while time.monotonic() < deadline and ok < 50:
                cbuf = ffi.from_buffer("uint64_t[]", buf)
                rc = lib.mp_subpage_restore(s, cbuf, len(ids))
                st = ffi.new("mp_sub_stats *")
                assert lib.mp_subpage_stats(s, st) == 0
                if rc == 0:
                    ok += 1
                    assert st.live_count == len(ids)
                    lst_p = ffi.new("uint64_t[]", 1000)
                    lst_m = ffi.new("uint64_t[]", 1000)
                    n = ffi.new("uint64_t *")
                    assert lib.mp_subpage_list(s, lst_p, lst_m, 1000, n) == 0
                    held = sorted(int(lst_p[i]) for i in range(n[0]))
                    assert max(held) < p.page_count, held[-1]
                    lib.mp_subpage_destroy(s)
                    assert lib.mp_subpage_new(p._handle, 512, out) == 0
                    s = out[0]
                else:
                    assert st.live_count == 0 and st.big_pages == 0
        finally:
            stop = True
            t.join()
        lib.mp_subpage_destroy(s)
        """
    )
