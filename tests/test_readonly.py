"""ReadOnlyPager: reads only, read-only views, refresh, readers beside a writer.

A reader opens the file O_RDONLY, maps it read-only and takes no lock. It keeps
the state it opened with until refresh() moves it to the writer's latest
commit. Cross-process cases run readers in child interpreters that talk to
the test over a line protocol on stdin/stdout.
"""

from __future__ import annotations

import gc
import json
import os
import stat
import struct
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import pytest
from support.edit import edit_meta, read_at
from support.format_v02 import pattern, read_image
from support.pagers import force_close

import mappedpages
from mappedpages import Pager, ReadOnlyPager

PS = 4096

WRITE_METHODS = [
    "alloc",
    "free",
    "alloc_bulk",
    "free_bulk",
    "alloc_protected",
    "free_protected",
    "alloc_protected_bulk",
    "free_protected_bulk",
    "write_protected",
    "sync",
    "alloc_async",
    "free_async",
    "alloc_bulk_async",
    "free_bulk_async",
    "alloc_protected_async",
    "free_protected_async",
    "alloc_protected_bulk_async",
    "free_protected_bulk_async",
]


def stamp(view, value: int) -> None:
    view[:8] = struct.pack("<Q", value)


def read_stamp(view) -> int:
    return struct.unpack("<Q", bytes(view[:8]))[0]


def state(p) -> tuple:
    return (
        p.page_size,
        p.page_count,
        p.free_page_count,
        list(p.allocated_pages()),
        list(p.allocated_protected_pages()),
    )


@pytest.fixture(scope="module")
def populated(tmp_path_factory):
    """A closed file: 5 regular pages with patterns, 2 protected pages; returns facts.

    Shared by the tests of this module that only read it.
    """
    path = tmp_path_factory.mktemp("readonly") / "ro.mpp"
    with Pager.create(path, page_size=PS) as w:
        ids = w.alloc_bulk(5)
        for pid in ids:
            w.page(pid)[:] = pattern(pid, PS)
        prot = w.alloc_protected_bulk(2)
        for i, pid in enumerate(prot):
            with w.write_protected(pid) as wr:
                wr.page[:] = pattern(100 + i, PS)
        w.free(ids[1])
        w.sync()
        facts = {
            "path": path,
            "state": state(w),
            "ids": [i for i in ids if i != ids[1]],
            "prot": prot,
        }
    return facts


# --------------------------------------------------------------------------
# Opening and reading
# --------------------------------------------------------------------------


def test_open_offers_every_read(populated):
    path = populated["path"]
    with ReadOnlyPager.open(path) as r:
        assert isinstance(r, ReadOnlyPager)
        assert not isinstance(r, Pager)
        assert state(r) == populated["state"]
        assert r.page_size == PS
        assert r.path == str(path)
        assert not r.closed
        assert "ReadOnlyPager" in repr(r)
        for pid in populated["ids"]:
            v = r.page(pid)
            assert isinstance(v, memoryview)
            assert v.nbytes == PS and v.format == "B"
            assert bytes(v) == pattern(pid, PS)
        for i, pid in enumerate(populated["prot"]):
            v = r.protected_page(pid)
            assert isinstance(v, memoryview)
            assert bytes(v) == pattern(100 + i, PS)
            assert r.verify_protected(pid)
        del v
    assert r.closed


def test_open_with_page_size(populated):
    path = populated["path"]
    with ReadOnlyPager.open(path, page_size=PS) as r:
        assert r.page_size == PS
    with ReadOnlyPager.open(path, PS) as r:
        assert r.page_size == PS
    with pytest.raises(mappedpages.InvalidPageSize):
        ReadOnlyPager.open(path, page_size=2 * PS)
    with pytest.raises(mappedpages.InvalidPageSize):
        ReadOnlyPager.open(path, page_size=1000)
    with pytest.raises(TypeError):
        ReadOnlyPager.open(path, page_size="4096")


def test_open_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        ReadOnlyPager.open(tmp_path / "missing.mpp")
    junk = tmp_path / "junk.mpp"
    junk.write_bytes(b"not a pager file" * 1024)
    with pytest.raises(mappedpages.CorruptSuperblock):
        ReadOnlyPager.open(junk)
    with pytest.raises(IsADirectoryError):
        ReadOnlyPager.open(tmp_path)
    # A failed reader open leaves no file behind.
    assert not (tmp_path / "missing.mpp").exists()


def test_open_accepts_str_bytes_and_pathlike(populated):
    path = populated["path"]
    for form in (path, str(path), os.fsencode(str(path))):
        with ReadOnlyPager.open(form) as r:
            assert r.page_count == populated["state"][1]


def test_page_errors(populated):
    with ReadOnlyPager.open(populated["path"]) as r:
        for pid in (0, 1, 2):
            with pytest.raises(mappedpages.ReservedPage):
                r.page(pid)
        with pytest.raises(mappedpages.OutOfBounds):
            r.page(r.page_count)
        with pytest.raises(IndexError):
            r.page(r.page_count + 100)
        with pytest.raises(mappedpages.OutOfBounds):
            r.page(-1)
        with pytest.raises(TypeError):
            r.page("3")
        with pytest.raises(TypeError):
            r.page(3.0)
        with pytest.raises(mappedpages.OutOfBounds):
            r.protected_page(10**6)
        # The physical pages behind a protected page are not regular pages.
        img = read_image(populated["path"])
        for phys in img.system_pages:
            with pytest.raises(mappedpages.ReservedPage):
                r.page(phys)


# --------------------------------------------------------------------------
# Nothing writes
# --------------------------------------------------------------------------


@pytest.mark.parametrize("name", WRITE_METHODS)
def test_no_method_that_writes(populated, name):
    with ReadOnlyPager.open(populated["path"]) as r:
        assert not hasattr(r, name), f"ReadOnlyPager has a writing method {name!r}"
        assert not hasattr(ReadOnlyPager, name)
        with pytest.raises(AttributeError):
            getattr(r, name)()


def test_views_are_read_only(populated):
    with ReadOnlyPager.open(populated["path"]) as r:
        pid = populated["ids"][0]
        v = r.page(pid)
        assert v.readonly
        with pytest.raises(TypeError):
            v[0] = 1
        with pytest.raises(TypeError):
            v[:4] = b"abcd"
        with pytest.raises(TypeError):
            v[:] = bytes(PS)
        s = v[10:20]
        assert s.readonly
        with pytest.raises(TypeError):
            s[0] = 1
        c = v.cast("Q")
        assert c.readonly
        with pytest.raises(TypeError):
            c[0] = 1
        assert memoryview(v).readonly
        pv = r.protected_page(populated["prot"][0])
        assert pv.readonly
        with pytest.raises(TypeError):
            pv[0] = 1
        assert bytes(v) == pattern(pid, PS), "a refused write changed the page"
        del v, s, c, pv


def test_views_refuse_numpy_writes(populated):
    np = pytest.importorskip("numpy")
    with ReadOnlyPager.open(populated["path"]) as r:
        pid = populated["ids"][0]
        arr = np.frombuffer(r.page(pid), dtype=np.uint8)
        assert not arr.flags.writeable
        with pytest.raises(ValueError):
            arr[0] = 1
        with pytest.raises(ValueError):
            arr.flags.writeable = True
        assert arr.tobytes() == pattern(pid, PS)
        del arr


def _fds_on(path: Path) -> list[int]:
    target = os.path.realpath(path)
    out = []
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{name}") == target:
                out.append(int(name))
        except OSError:
            pass
    return out


def _fd_flags(fd: int) -> int:
    with open(f"/proc/self/fdinfo/{fd}") as fh:
        for line in fh:
            if line.startswith("flags:"):
                return int(line.split()[1], 8)
    raise AssertionError(f"no flags line for fd {fd}")


def _mapping_perms(path: Path) -> list[str]:
    target = os.path.realpath(path)
    perms = []
    with open("/proc/self/maps") as fh:
        for line in fh:
            fields = line.split(None, 5)
            if len(fields) == 6 and fields[5].strip() == target:
                perms.append(fields[1])
    return perms


def test_opens_file_without_write_permission(populated):
    path = populated["path"]
    os.chmod(path, 0o444)
    try:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o444
        with ReadOnlyPager.open(path) as r:
            assert state(r) == populated["state"]
            pid = populated["ids"][0]
            v = r.page(pid)
            assert bytes(v) == pattern(pid, PS)
            assert v.readonly
            with pytest.raises(TypeError):
                v[0] = 0
            del v
            r.refresh()
            assert state(r) == populated["state"]
            if sys.platform.startswith("linux"):
                # Tests may run as root, who could write anyway: check that the
                # file really was opened O_RDONLY and mapped without PROT_WRITE.
                fds = _fds_on(path)
                assert fds, "the reader holds no descriptor on its file"
                for fd in fds:
                    assert _fd_flags(fd) & os.O_ACCMODE == os.O_RDONLY, (
                        f"fd {fd} on the file is not O_RDONLY: flags {oct(_fd_flags(fd))}"
                    )
                # Every mapping of the file is read-only and shared: not
                # writable, and not private (a private copy stops following
                # the writer once written).
                perms = _mapping_perms(path)
                assert perms, "the file is not mapped"
                assert all(p == "r--s" for p in perms), (
                    f"the reader maps its file other than read-only and shared: {perms}"
                )
        assert os.stat(path).st_mode & 0o777 == 0o444
    finally:
        os.chmod(path, 0o644)


def test_reader_does_not_change_the_file(populated):
    path = populated["path"]
    before = path.read_bytes()
    mtime = os.stat(path).st_mtime_ns
    with ReadOnlyPager.open(path) as r:
        for pid in populated["ids"]:
            bytes(r.page(pid))
        for _ in range(3):
            r.refresh()
    assert path.read_bytes() == before
    assert os.stat(path).st_mtime_ns == mtime


def test_write_through_view_obj_cannot_reach_the_file(populated):
    """``view.obj`` is the exporter behind a view; writing through it raises TypeError.

    Run in a child interpreter: if the exporter is a writable buffer over a
    PROT_READ mapping, writing through it kills the process with SIGSEGV.
    The exporter is read-only, and the file itself must not change.
    """
    path = populated["path"]
    before = path.read_bytes()
    pid = populated["ids"][0]
    code = textwrap.dedent(
        f"""
        import mappedpages
        r = mappedpages.ReadOnlyPager.open({str(path)!r})
        v = r.page({pid})
        m = memoryview(v.obj)
        assert m.readonly
        try:
            m[{pid} * {PS}] ^= 0xFF
        except TypeError:
            print("done", flush=True)
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == "done", (
        "writing through memoryview(reader.page(i).obj) crashed the process "
        f"(returncode {proc.returncode}; -11 is SIGSEGV): a reader's views expose a "
        f"writable exporter over a read-only mapping.\nstderr: {proc.stderr[-2000:]}"
    )
    assert path.read_bytes() == before, "a write through a reader's view.obj changed the file"


# --------------------------------------------------------------------------
# Closing
# --------------------------------------------------------------------------


def test_close_rules(populated):
    r = ReadOnlyPager.open(populated["path"])
    v = r.page(populated["ids"][0])
    with pytest.raises(BufferError):
        r.close()
    assert not r.closed
    assert bytes(v[:4]) == pattern(populated["ids"][0], PS)[:4]
    del v
    r.close()
    r.close()
    assert r.closed
    for call in (
        lambda: r.page(populated["ids"][0]),
        lambda: r.protected_page(populated["prot"][0]),
        lambda: r.page_count,
        lambda: r.free_page_count,
        lambda: list(r.allocated_pages()),
        lambda: list(r.allocated_protected_pages()),
        r.refresh,
    ):
        with pytest.raises(ValueError):
            call()


def test_dropped_reader_releases_everything(populated):
    r = ReadOnlyPager.open(populated["path"])
    v = r.page(populated["ids"][0])
    del r
    gc.collect()
    assert bytes(v) == pattern(populated["ids"][0], PS)
    del v
    gc.collect()


# --------------------------------------------------------------------------
# Beside a writer, in this process
# --------------------------------------------------------------------------


def test_readers_open_beside_writer(tmp_path):
    path = tmp_path / "w.mpp"
    w = Pager.create(path)
    try:
        readers = [ReadOnlyPager.open(path) for _ in range(4)]
        a = w.alloc()
        stamp(w.page(a), 0xA11CE)
        w.sync()
        for r in readers:
            r.refresh()
            assert list(r.allocated_pages()) == [a]
            assert read_stamp(r.page(a)) == 0xA11CE
        # The writer works as usual with readers open.
        ids = w.alloc_bulk(50)
        w.free_bulk(ids[::2])
        for r in readers:
            r.refresh()
            assert state(r) == state(w)
            r.close()
    finally:
        force_close(w)


def test_reader_keeps_its_state_until_refresh(tmp_path):
    path = tmp_path / "keep.mpp"
    w = Pager.create(path)
    try:
        first = w.alloc_bulk(3)
        r = ReadOnlyPager.open(path)
        opened = state(r)
        assert opened == state(w)
        more = w.alloc_bulk(40)  # grows the file
        w.free(first[0])
        pid = w.alloc_protected()
        assert state(w) != opened
        assert state(r) == opened, "a reader changed state without refresh()"
        with pytest.raises(mappedpages.OutOfBounds):
            r.page(more[-1])
        with pytest.raises(mappedpages.OutOfBounds):
            r.protected_page(pid)
        r.refresh()
        assert state(r) == state(w)
        assert r.page(more[-1]).nbytes == PS
        assert bytes(r.protected_page(pid)) == bytes(PS)
        r.close()
    finally:
        force_close(w)


def test_refresh_picks_up_growth_and_old_views_stay_valid(tmp_path):
    path = tmp_path / "grow.mpp"
    w = Pager.create(path, page_size=1024)
    try:
        a = w.alloc()
        w.page(a)[:] = pattern(a, 1024)
        w.sync()
        r = ReadOnlyPager.open(path)
        old = r.page(a)
        old_slice = old[100:200]
        count0 = r.page_count
        assert count0 == 4
        ids = w.alloc_bulk(500)  # several doublings
        for pid in ids:
            w.page(pid)[:] = pattern(pid, 1024, salt=1)
        w.sync()
        assert r.page_count == count0
        r.refresh()
        assert r.page_count == w.page_count > count0
        assert r.free_page_count == w.free_page_count
        assert list(r.allocated_pages()) == [a] + ids
        for pid in ids:
            assert bytes(r.page(pid)) == pattern(pid, 1024, salt=1)
        # Views taken before the refresh still read the same page.
        assert bytes(old) == pattern(a, 1024)
        assert bytes(old_slice) == pattern(a, 1024)[100:200]
        w.page(a)[:4] = b"NEW!"
        assert bytes(old[:4]) == b"NEW!"
        del old, old_slice
        r.close()
    finally:
        force_close(w)


def test_refresh_sees_frees_and_reuse(tmp_path):
    path = tmp_path / "frees.mpp"
    with Pager.create(path) as w, ReadOnlyPager.open(path) as r:
        ids = w.alloc_bulk(20)
        r.refresh()
        assert list(r.allocated_pages()) == ids
        w.free_bulk(ids[5:])
        w.free(ids[0])
        r.refresh()
        assert list(r.allocated_pages()) == ids[1:5]
        assert r.free_page_count == w.free_page_count
        again = w.alloc()
        assert again == ids[0]
        r.refresh()
        assert list(r.allocated_pages()) == ids[:5]


def test_refresh_without_changes_is_harmless(populated):
    with ReadOnlyPager.open(populated["path"]) as r:
        v = r.page(populated["ids"][0])
        for _ in range(20):
            r.refresh()
            assert state(r) == populated["state"]
        assert bytes(v) == pattern(populated["ids"][0], PS)
        del v


def test_refresh_sees_protected_commits(tmp_path):
    path = tmp_path / "prot.mpp"
    with Pager.create(path) as w:
        pid = w.alloc_protected()
        with w.write_protected(pid) as wr:
            wr.page[:8] = b"version1"
        r = ReadOnlyPager.open(path)
        assert bytes(r.protected_page(pid)[:8]) == b"version1"
        with w.write_protected(pid) as wr:
            wr.page[:8] = b"version2"
        # Not refreshed: the reader still knows the old committed copy.
        assert bytes(r.protected_page(pid)[:8]) == b"version1"
        r.refresh()
        assert bytes(r.protected_page(pid)[:8]) == b"version2"
        assert r.verify_protected(pid)
        pid2 = w.alloc_protected()
        w.free_protected(pid)
        r.refresh()
        assert list(r.allocated_protected_pages()) == [pid2]
        with pytest.raises(mappedpages.OutOfBounds):
            r.protected_page(pid)
        r.close()


def test_refresh_validates_and_keeps_old_state_on_error(tmp_path):
    path = tmp_path / "bad.mpp"
    with Pager.create(path) as w:
        ids = w.alloc_bulk(3)
        w.page(ids[0])[:8] = b"readable"
        w.sync()
    r = ReadOnlyPager.open(path)
    try:
        before = state(r)
        view = r.page(ids[0])
        saved = read_at(path, PS, 2 * PS)
        # Break both metadata copies: refresh must refuse, as open would.
        edit_meta(path, 0, raw={100: 0x5A}, fix_crc=False)
        edit_meta(path, 1, raw={100: 0x5A}, fix_crc=False)
        with pytest.raises(mappedpages.CorruptMetadata):
            ReadOnlyPager.open(path)
        with pytest.raises(mappedpages.CorruptMetadata):
            r.refresh()
        assert state(r) == before, "a failed refresh changed the reader's state"
        assert bytes(view[:8]) == b"readable"
        assert r.page(ids[1]).nbytes == PS
        # Repaired file: refresh works again.
        with open(path, "r+b") as fh:
            fh.seek(PS)
            fh.write(saved)
        r.refresh()
        assert state(r) == before
        del view
    finally:
        force_close(r)


def test_refresh_warns_on_recovery(tmp_path):
    path = tmp_path / "rec.mpp"
    with Pager.create(path) as w:
        r = ReadOnlyPager.open(path)
        a = w.alloc()
        b = w.alloc()
    try:
        img = read_image(path)
        newest = img.newest()
        older = img.metas[1 - newest.index]
        assert newest.generation == older.generation + 1
        # Damage the newest copy: refresh falls back to the older one and says so.
        edit_meta(path, newest.index, raw={8: 0xFF}, fix_crc=False)
        with pytest.warns(mappedpages.RecoveryWarning):
            r.refresh()
        assert list(r.allocated_pages()) == [a]
        assert b not in list(r.allocated_pages())
    finally:
        force_close(r)


# --------------------------------------------------------------------------
# Readers in other processes
# --------------------------------------------------------------------------

READER_SCRIPT = textwrap.dedent(
    """
    import json, os, struct, sys, time, warnings
    from mappedpages import CorruptFileError, ReadOnlyPager, RecoveryWarning

    def state(r):
        ids = list(r.allocated_pages())
        return {
            "page_count": r.page_count,
            "free": r.free_page_count,
            "allocated": ids,
            "protected": list(r.allocated_protected_pages()),
            "stamps": {str(i): struct.unpack("<Q", bytes(r.page(i)[:8]))[0] for i in ids},
        }

    r = ReadOnlyPager.open(sys.argv[1], snapshot=sys.argv[2] == "snapshot")
    print(json.dumps(state(r)), flush=True)
    for line in sys.stdin:
        cmd = line.split()
        if not cmd or cmd[0] == "quit":
            break
        if cmd[0] == "refresh":
            r.refresh()
            print(json.dumps(state(r)), flush=True)
        elif cmd[0] == "state":
            print(json.dumps(state(r)), flush=True)
        elif cmd[0] == "follow":
            # Open another file and refresh it until its ".done" marker appears.
            f = ReadOnlyPager.open(cmd[1])
            print(json.dumps("opened"), flush=True)
            n = 0
            errors = []
            while not os.path.exists(cmd[1] + ".done") and len(errors) < 5:
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore", RecoveryWarning)
                        f.refresh()
                except CorruptFileError as e:
                    errors.append(f"refresh raised {type(e).__name__}: {e}")
                    continue
                n += 1
                pc, fc = f.page_count, f.free_page_count
                listed = len(list(f.allocated_pages()))
                if pc - 3 - fc != listed:
                    errors.append(f"counts: page_count {pc} free {fc} allocated {listed}")
            f.close()
            print(json.dumps({"refreshes": n, "errors": errors}), flush=True)
        elif cmd[0] == "loop":
            # Refresh for a while; every state seen must be a consistent commit.
            end = time.monotonic() + float(cmd[1])
            n = 0
            errors = []
            last_n = 0
            last_count = 0
            warned = []
            while time.monotonic() < end and len(errors) < 5:
                try:
                    with warnings.catch_warnings(record=True) as got:
                        warnings.simplefilter("always", RecoveryWarning)
                        r.refresh()
                    warned += [str(w.message) for w in got]
                except CorruptFileError as e:
                    errors.append(f"refresh raised {type(e).__name__}: {e}")
                    continue
                n += 1
                pc, fc = r.page_count, r.free_page_count
                ids = list(r.allocated_pages())
                if pc - 3 - fc != len(ids):
                    errors.append(f"counts: page_count {pc} free {fc} allocated {len(ids)}")
                if ids != list(range(3, 3 + len(ids))):
                    errors.append(f"not contiguous: {ids[:5]}..{ids[-5:]}")
                if pc < last_count or pc & (pc - 1):
                    errors.append(f"page_count {pc} after {last_count}")
                for i in ids if n % 16 == 0 else ():
                    s = struct.unpack("<Q", bytes(r.page(i)[:8]))[0]
                    if s not in (0, i):
                        errors.append(f"page {i} stamp {s}")
                        break
                last_count = pc
                last_n = len(ids)
            out = {"refreshes": n, "errors": errors, "last": last_n}
            out["warnings"] = len(warned)
            out["first_warnings"] = warned[:3]
            print(json.dumps(out), flush=True)
    r.close()
    """
)


class ReaderProcess:
    def __init__(self, path: Path, snapshot: bool = True) -> None:
        mode = "snapshot" if snapshot else "plain"
        self.proc = subprocess.Popen(
            [sys.executable, "-c", READER_SCRIPT, str(path), mode],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def reply(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait(timeout=30)
            raise AssertionError(f"reader process died: {self.proc.stderr.read()[-3000:]}")
        return json.loads(line)

    def send(self, cmd: str) -> None:
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()

    def ask(self, cmd: str) -> dict:
        self.send(cmd)
        return self.reply()

    def quit(self) -> None:
        try:
            self.send("quit")
            self.proc.stdin.close()
        except (BrokenPipeError, ValueError):
            pass
        rc = self.proc.wait(timeout=30)
        err = self.proc.stderr.read()
        self.proc.stdout.close()
        self.proc.stderr.close()
        assert rc == 0, f"reader process failed ({rc}): {err[-3000:]}"


def writer_state(w) -> dict:
    ids = list(w.allocated_pages())
    return {
        "page_count": w.page_count,
        "free": w.free_page_count,
        "allocated": ids,
        "protected": list(w.allocated_protected_pages()),
        "stamps": {str(i): read_stamp(w.page(i)) for i in ids},
    }


def test_reader_process_beside_writer(tmp_path):
    path = tmp_path / "xproc.mpp"
    w = Pager.create(path)
    reader = None
    try:
        first = w.alloc_bulk(3)
        for pid in first:
            stamp(w.page(pid), 1000 + pid)
        w.sync()
        reader = ReaderProcess(path)
        s0 = reader.reply()
        assert s0 == writer_state(w)
        # The writer goes on: growth, new data, frees, a protected page.
        more = w.alloc_bulk(60)
        for pid in more:
            stamp(w.page(pid), 5000 + pid)
        w.free_bulk(more[::3])
        w.free(first[1])
        prot = w.alloc_protected()
        w.sync()
        # Page bytes are shared memory (page 4, freed, now backs the protected
        # page); the allocation state is what must not move without refresh().
        still = reader.ask("state")
        for key in ("page_count", "free", "allocated", "protected"):
            assert still[key] == s0[key], f"the reader's {key} moved without refresh()"
        s1 = reader.ask("refresh")
        assert s1 == writer_state(w)
        assert s1["page_count"] > s0["page_count"]
        assert s1["protected"] == [prot]
        # And again after more commits.
        last = w.alloc_bulk(200)
        for pid in last:
            stamp(w.page(pid), pid)
        w.sync()
        assert reader.ask("refresh") == writer_state(w)
        reader.quit()
        reader = None
    finally:
        if reader is not None:
            reader.proc.kill()
            reader.proc.wait()
        force_close(w)


def test_many_reader_processes_while_writer_commits(tmp_path):
    path = tmp_path / "many.mpp"
    w = Pager.create(path, page_size=1024)
    readers: list[ReaderProcess] = []
    try:
        # Unregistered readers: the writer hands out the lowest free pages at
        # once, which keeps the allocated set contiguous (snapshot readers pin
        # freed pages, and allocation then skips them: see test_snapshots.py).
        readers = [ReaderProcess(path, snapshot=False) for _ in range(3)]
        for r in readers:
            assert r.reply()["allocated"] == []
        for r in readers:
            r.send("loop 1.2")
        # Commits that keep the allocated set contiguous from page 3: bulk
        # allocations at the lowest free ids, frees from the top.
        deadline = time.monotonic() + 1.4
        commits = 0
        n = 0
        k = 0
        while time.monotonic() < deadline:
            k += 1
            if n > 400 or (k % 4 == 0 and n > 20):
                top = list(w.allocated_pages())[-(1 + k % 17) :]
                w.free_bulk(top)
                n -= len(top)
            else:
                got = w.alloc_bulk(1 + k % 13)
                for pid in got:
                    stamp(w.page(pid), pid)
                n += len(got)
            commits += 1
        assert commits > 20
        for r in readers:
            result = r.reply()
            assert result["errors"] == [], (
                "a reader refreshing beside a committing writer saw a state that is no "
                f"commit of the writer's (or failed to load one): {result}"
            )
            assert result["refreshes"] > 10, result
        w.sync()
        for r in readers:
            final = r.ask("refresh")
            assert final["allocated"] == list(w.allocated_pages())
            assert final["page_count"] == w.page_count
            r.quit()
        readers = []
    finally:
        for r in readers:
            r.proc.kill()
            r.proc.wait()
        force_close(w)


def test_reader_processes_refresh_while_the_file_grows(tmp_path):
    """Refresh racing the writer's growth: a reader must load a commit, never fail.

    Each round is a fresh file that the writer doubles again and again, with
    commits after each growth, while two reader processes refresh it.
    """
    readers: list[ReaderProcess] = []
    first = tmp_path / "g0.mpp"
    Pager.create(first, page_size=1024).close()
    try:
        readers = [ReaderProcess(first) for _ in range(2)]
        for r in readers:
            r.reply()
        deadline = time.monotonic() + 1.2
        rounds = 0
        problems = []
        total = 0
        while time.monotonic() < deadline:
            rounds += 1
            path = tmp_path / f"g{rounds}.mpp"
            with Pager.create(path, page_size=1024) as w:
                for r in readers:
                    r.send(f"follow {path}")
                for r in readers:
                    assert r.reply() == "opened"
                for _ in range(9):
                    w.alloc_bulk(w.free_page_count + 1)  # one doubling
                    w.free(w.alloc())
                    w.free(w.alloc())
                Path(str(path) + ".done").touch()
                for r in readers:
                    result = r.reply()
                    total += result["refreshes"]
                    problems += result["errors"]
        assert problems == [], (
            f"readers refreshing a growing file failed {len(problems)} time(s) in {rounds} "
            f"rounds ({total} refreshes), e.g. {problems[:3]}"
        )
        assert total > 0
        for r in readers:
            r.quit()
        readers = []
    finally:
        for r in readers:
            r.proc.kill()
            r.proc.wait()


def test_refresh_beside_a_committing_writer_does_not_warn(tmp_path):
    """A copy the writer is rewriting at that moment is no damage: refresh must not report it.

    RecoveryWarning tells the user that open or refresh discarded or repaired
    damage; a reader that meets the writer mid-commit has found none.
    """
    path = tmp_path / "quiet.mpp"
    w = Pager.create(path, page_size=1024)
    # Unregistered, so that the writer's alloc takes the page just freed and
    # the reader's contiguity check holds (a snapshot reader pins it).
    reader = ReaderProcess(path, snapshot=False)
    try:
        reader.reply()
        reader.send("loop 0.8")
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            a = w.alloc()
            w.free(a)
        result = reader.reply()
        assert result["errors"] == [], result
        assert result["refreshes"] > 10, result
        assert result["warnings"] == 0, (
            f"{result['warnings']} RecoveryWarning(s) in {result['refreshes']} refreshes of an "
            "undamaged file while its writer committed, e.g. "
            f"{result['first_warnings']}"
        )
        reader.quit()
    finally:
        if reader.proc.poll() is None:
            reader.proc.kill()
            reader.proc.wait()
        force_close(w)


def test_reader_process_on_read_only_file_while_writer_waits(tmp_path):
    """Readers need no write permission and no lock; a writer opens beside them."""
    path = tmp_path / "perm.mpp"
    with Pager.create(path) as w:
        pid = w.alloc()
        stamp(w.page(pid), 77)
        w.sync()
    os.chmod(path, 0o444)
    reader = ReaderProcess(path)
    try:
        s = reader.reply()
        assert s["allocated"] == [pid] and s["stamps"] == {str(pid): 77}
        os.chmod(path, 0o644)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            with Pager.open(path) as w:
                b = w.alloc()
                stamp(w.page(b), 88)
                w.sync()
                s = reader.ask("refresh")
                assert s["allocated"] == [pid, b]
                assert s["stamps"] == {str(pid): 77, str(b): 88}
        reader.quit()
    finally:
        os.chmod(path, 0o644)
        if reader.proc.poll() is None:
            reader.proc.kill()
            reader.proc.wait()
