"""Corrupt and hostile files: every bit flip, every truncation, impossible values.

The base file (1024-byte pages) holds regular pages and protected pages, so it
has directory pages. Each case edits a copy of it and opens it with
Pager.open. The only acceptable outcomes:

* it opens and shows the latest state (a RecoveryWarning is allowed);
* it opens and shows an earlier state of the file's history, with a
  RecoveryWarning;
* it raises a CorruptFileError subclass.

Anything else is a failure: a crash, a hang, another exception, an earlier
state without a warning (a silent rollback), or a state the file never had.

The cases run in a few worker processes (this file run as a script), each
with a timeout; a worker that dies is restarted after the case that killed
it, and that case is reported. ``python tests/test_hostile.py --report``
prints the tally of outcomes (the figures in RELIABILITY.md).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import warnings
import zlib
from collections import Counter
from pathlib import Path
from typing import Any

TESTS = Path(__file__).resolve().parent
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

from support.workloads import State, state_of  # noqa: E402

PS = 1024
U64 = (1 << 64) - 1
BATCH_TIMEOUT = float(os.environ.get("MAPPEDPAGES_HOSTILE_TIMEOUT", "300"))
SHADOW_MAGIC = b"MPX1"


# --------------------------------------------------------------------------
# The base file and its history
# --------------------------------------------------------------------------


def _fill(seed: int) -> bytes:
    return bytes((seed * 37 + i) % 253 for i in range(PS))


def build_base(path: Path) -> tuple[bytes, list[State], dict[str, Any]]:
    """Create the base file; return its bytes, the state after each step, and facts."""
    from mappedpages import Pager

    states = []
    with Pager.create(path, page_size=PS) as p:
        states.append(state_of(p))
        ids = p.alloc_bulk(10)
        for i in ids:
            v = p.page(i)
            v[:] = _fill(i)
            v.release()
        p.sync()
        states.append(state_of(p))
        pids = []
        for _ in range(3):
            pids.append(p.alloc_protected())
            states.append(state_of(p))
        for k, pid in enumerate(pids[:2]):
            with p.write_protected(pid) as w:
                w.page[:] = _fill(100 + k)
            states.append(state_of(p))
        p.alloc_bulk(5)
        states.append(state_of(p))
        with p.write_protected(pids[2]) as w:
            w.page[:] = _fill(200)
        states.append(state_of(p))
        p.free(ids[1])
        states.append(state_of(p))
        dir_pages = sorted(states[-1].system - _backing(p, pids))
    facts = {"dir_pages": dir_pages, "pids": pids, "regular": sorted(states[-1].allocated)}
    return path.read_bytes(), states, facts


def _backing(p: Any, pids: list[int]) -> set[int]:
    from mappedpages._core import ffi, lib

    out = set()
    pair = ffi.new("uint64_t[2]")
    for pid in pids:
        assert lib.mp_protected_backing(p._handle, pid, pair, pair + 1) == 0
        out.update((int(pair[0]), int(pair[1])))
    return out


# --------------------------------------------------------------------------
# Cases: lists of edits, applied to a copy of the base
# --------------------------------------------------------------------------
# An edit is ["flip", offset, bit] | ["put", offset, hex] | ["truncate", length]
# | ["reseal", "meta", copy] | ["reseal", "index"] | ["reseal", "page", id]
# (and ["crash"], which kills the worker: the harness's own test uses it).


def _crc(b: bytes) -> int:
    return zlib.crc32(b) & 0xFFFFFFFF


def apply_edits(data: bytes, edits: list[list[Any]]) -> bytes:
    buf = bytearray(data)
    for e in edits:
        if e[0] == "flip":
            buf[e[1]] ^= 1 << e[2]
        elif e[0] == "put":
            raw = bytes.fromhex(e[2])
            buf[e[1] : e[1] + len(raw)] = raw
        elif e[0] == "truncate":
            del buf[e[1] :]
        elif e[0] == "crash":
            # Only for the harness's own test: die as a crash in the core would.
            os.kill(os.getpid(), signal.SIGSEGV)
        elif e[0] == "reseal":
            if e[1] == "index":
                struct.pack_into("<I", buf, PS - 4, _crc(bytes(buf[20 : PS - 4])))
            else:
                page = e[2] + 1 if e[1] == "meta" else e[2]
                off = page * PS
                struct.pack_into("<I", buf, off + PS - 4, _crc(bytes(buf[off : off + PS - 4])))
    return bytes(buf)


def _active_meta(data: bytes) -> int:
    gens = [struct.unpack_from("<Q", data, (1 + c) * PS + 8)[0] for c in (0, 1)]
    return 0 if gens[0] >= gens[1] else 1


def _record_refs_offset(data: bytes, copy: int) -> tuple[int, int] | None:
    """(offset of the first block reference, count) of a metadata copy's
    directory record, when the copy has one."""
    base = (1 + copy) * PS
    if data[base + PS - 8 : base + PS - 4] != SHADOW_MAGIC:
        return None
    n = struct.unpack_from("<I", data, base + PS - 16)[0]
    return base + PS - 16 - 17 * n, n


def bitflip_cases(data: bytes, facts: dict[str, Any]) -> list[tuple[str, list]]:
    cases = []
    for page in [0, 1, 2] + facts["dir_pages"]:
        for byte in range(PS):
            for bit in range(8):
                cases.append((f"flip page {page} byte {byte} bit {bit}",
                              [["flip", page * PS + byte, bit]]))
    return cases


def truncation_cases(data: bytes) -> list[tuple[str, list]]:
    return [(f"truncate to {n} bytes", [["truncate", n]]) for n in range(0, len(data), 512)]


def _u32(v: int) -> str:
    return struct.pack("<I", v).hex()


def _u64(v: int) -> str:
    return struct.pack("<Q", v).hex()


def hostile_cases(data: bytes, facts: dict[str, Any]) -> list[tuple[str, list]]:
    """Impossible or hostile values, CRCs resealed where the field has one.

    Each name starts with "invalid:" (no file the library writes can hold
    it: it must be refused or reported) or "valid:" (another well-formed
    file: it must open consistently, as whatever it describes).
    """
    cases: list[tuple[str, list]] = []
    file_pages = len(data) // PS
    active = _active_meta(data)
    # Superblock.
    for log2 in (0, 1, 9, 31, 32, 63, 255, 0xFFFF, 0xFFFFFFFF):
        cases.append((f"invalid: page_size_log2 {log2}", [["put", 8, _u32(log2)]]))
    for log2 in range(11, 31):
        cases.append((f"invalid: page_size_log2 {log2} (not the file's)",
                      [["put", 8, _u32(log2)]]))
    for sel in (2, 3, 127, 128, 255):
        cases.append((f"invalid: selector {sel}", [["put", 12, f"{sel:02x}"]]))
    for minor in (3, 255):
        cases.append((f"invalid: version minor {minor}", [["put", 5, f"{minor:02x}"]]))
    cases.append(("invalid: major version 1", [["put", 4, "01"]]))
    cases.append(("invalid: meta_checksum changed", [["put", 16, _u32(0)]]))
    # Metadata copies.
    for copy, which in ((active, "active"), (1 - active, "inactive")):
        def meta(off: int, hexval: str, copy: int = copy) -> list:
            return [["put", (1 + copy) * PS + off, hexval], ["reseal", "meta", copy]]

        for total in (0, 1, 3, 4, file_pages + 1, file_pages * 2, 1 << 32, 1 << 63, U64):
            cases.append((f"invalid: {which} copy: total_pages {total}", meta(0, _u64(total))))
        for free in (0, 1 << 63, U64):
            cases.append((f"invalid: {which} copy: free_count {free}", meta(16, _u64(free))))
        cases.append((f"invalid: {which} copy: pages 0-2 not marked", meta(24, "00")))
        cases.append((f"invalid: {which} copy: bit past total_pages",
                      meta(24 + file_pages // 8 + 1, "01")))
        cases.append((f"invalid: {which} copy: bitmap all ones",
                      meta(24, "ff" * (file_pages // 8))))
        cases.append((f"invalid: {which} copy: zeroed, CRC resealed", meta(0, "00" * (PS - 4))))
    both_bad = [["put", PS + 0, _u64(0)], ["put", 2 * PS + 0, _u64(0)],
                ["reseal", "meta", 0], ["reseal", "meta", 1]]
    cases.append(("invalid: both copies: total_pages 0", both_bad))
    cases.append(("invalid: both copies: CRC wrong",
                  [["flip", PS + 100, 0], ["flip", 2 * PS + 100, 0]]))
    cases.append(("valid: active copy: generation 2^64-1",
                  [["put", (1 + active) * PS + 8, _u64(U64)], ["reseal", "meta", active]]))
    # The directory index (page 0, and the metadata copies' record if present).
    dir_a, dir_b = facts["dir_pages"][:2]
    regular = facts["regular"]
    targets = {
        "page 0": 0, "page 1": 1, "page 2": 2, "a free page": file_pages - 1,
        "past the end": file_pages, "2^63": 1 << 63, "2^64-1": U64,
    }
    for field, rel in (("page_a", 0), ("page_b", 8)):
        for name, value in targets.items():
            cases.append((f"invalid: directory ref 0 {field} -> {name}",
                          _ref_edit(data, active, 0, rel, _u64(value))))
        cases.append((f"valid: directory ref 0 {field} -> a regular page",
                      _ref_edit(data, active, 0, rel, _u64(regular[0]))))
    cases.append(("invalid: directory ref 0 page_a == page_b",
                  _ref_edit(data, active, 0, 0, _u64(dir_b))))
    cases.append(("valid: directory ref 0 pages swapped (an older directory)",
                  _ref_edit(data, active, 0, 0, _u64(dir_b) + _u64(dir_a))))
    for act in (2, 255):
        cases.append((f"invalid: directory ref 0 active byte {act}",
                      _ref_edit(data, active, 0, 16, f"{act:02x}")))
    cases.append(("valid: directory count 0 (its pages become regular pages)",
                  _count_edit(data, active, 0)))
    for count in (2, 58, 59, 1 << 31, 0xFFFFFFFF):
        cases.append((f"invalid: directory count {count}", _count_edit(data, active, count)))
    cases.append(("invalid: directory: a second block sharing the first one's pages",
                  _second_block(data, active)))
    # Directory entries (in both copies of the block's page, CRC resealed).
    entry_targets = dict(targets)
    entry_targets["a directory page"] = dir_a
    for slot in (0, 1):
        for field, rel in (("page_a", 1), ("page_b", 9)):
            for name, value in entry_targets.items():
                cases.append((f"invalid: entry {slot} {field} -> {name}",
                              _entry_edit(facts, slot, rel, _u64(value))))
            cases.append((f"valid: entry {slot} {field} -> a regular page",
                          _entry_edit(facts, slot, rel, _u64(regular[0]))))
        cases.append((f"invalid: entry {slot} page_a == page_b",
                      _entry_pages_equal(data, facts, slot)))
    cases.append(("invalid: entries 0 and 1 share their pages", _entries_share(data, facts)))
    cases.append(("valid: entry 0 in_use 0 (its pages become regular pages)",
                  _entry_edit(facts, 0, 0, "00")))
    cases.append(("invalid: entry 5 (unused) in_use 1 on pages 0/0",
                  _entry_edit(facts, 5, 0, "01")))
    cases.append(("invalid: directory page capacity 0", _dir_header(facts, _u32(0))))
    cases.append(("invalid: directory page capacity huge",
                  _dir_header(facts, _u32(0xFFFFFFFF))))
    return cases


def _ref_edit(data: bytes, active: int, i: int, rel: int, hexval: str) -> list:
    """Edit block reference i in page 0 and in every metadata record that has one."""
    edits: list[list[Any]] = [["put", 24 + 17 * i + rel, hexval], ["reseal", "index"]]
    for copy in (0, 1):
        rec = _record_refs_offset(data, copy)
        if rec is not None and i < rec[1]:
            edits += [["put", rec[0] + 17 * i + rel, hexval], ["reseal", "meta", copy]]
    return edits


def _count_edit(data: bytes, active: int, count: int) -> list:
    edits: list[list[Any]] = [["put", 20, _u32(count)], ["reseal", "index"]]
    for copy in (0, 1):
        if _record_refs_offset(data, copy) is not None:
            edits += [["put", (1 + copy) * PS + PS - 16, _u32(count)], ["reseal", "meta", copy]]
    return edits


def _second_block(data: bytes, active: int) -> list:
    ref0 = data[24 : 24 + 17]
    edits: list[list[Any]] = [["put", 20, _u32(2)], ["put", 24 + 17, ref0.hex()],
                              ["reseal", "index"]]
    for copy in (0, 1):
        rec = _record_refs_offset(data, copy)
        if rec is not None and rec[1] == 1:
            # The record grows downwards: n refs end at PS-16.
            base = (1 + copy) * PS
            first = data[rec[0] : rec[0] + 17]
            edits += [["put", base + PS - 16 - 34, (first + first).hex()],
                      ["put", base + PS - 16, _u32(2)], ["reseal", "meta", copy]]
    return edits


def _entry_edit(facts: dict[str, Any], slot: int, rel: int, hexval: str) -> list:
    edits: list[list[Any]] = []
    for page in facts["dir_pages"][:2]:
        edits += [["put", page * PS + 8 + 30 * slot + rel, hexval], ["reseal", "page", page]]
    return edits


def _entry_pages_equal(data: bytes, facts: dict[str, Any], slot: int) -> list:
    edits: list[list[Any]] = []
    for page in facts["dir_pages"][:2]:
        off = page * PS + 8 + 30 * slot
        a = data[off + 1 : off + 9]
        edits += [["put", off + 9, a.hex()], ["reseal", "page", page]]
    return edits


def _entries_share(data: bytes, facts: dict[str, Any]) -> list:
    edits: list[list[Any]] = []
    for page in facts["dir_pages"][:2]:
        off0 = page * PS + 8
        pages0 = data[off0 + 1 : off0 + 17]
        edits += [["put", off0 + 30 + 1, pages0.hex()], ["reseal", "page", page]]
    return edits


def _dir_header(facts: dict[str, Any], hexval: str) -> list:
    edits: list[list[Any]] = []
    for page in facts["dir_pages"][:2]:
        edits += [["put", page * PS, hexval], ["reseal", "page", page]]
    return edits


# --------------------------------------------------------------------------
# The worker: opens each case and classifies it
# --------------------------------------------------------------------------


def _state_json(s: State) -> dict[str, Any]:
    return {"page_count": s.page_count, "allocated": sorted(s.allocated),
            "system": sorted(s.system), "protected": [list(x) for x in s.protected]}


def _state_from(d: dict[str, Any]) -> State:
    return State(d["page_count"], frozenset(d["allocated"]), frozenset(d["system"]),
                 tuple(tuple(x) for x in d["protected"]))


def _alloc_part(st: State) -> tuple:
    return (st.allocated, st.system)


def classify(path: Path, history: list[State]) -> tuple[str, str]:
    """Open PATH and say how its state relates to the file's history.

    latest / latest+warning: the newest state; previous: an earlier state of
    the history, with a RecoveryWarning; mixed: the allocation state of one
    history state and the protected pages of another (a directory page read
    from its older copy), with a RecoveryWarning; silent-rollback / silent-mixed:
    the same without a warning; unknown: a state the file never had;
    inconsistent: counts that disagree with the page sets; corrupt:<class>: a
    CorruptFileError; error: any other exception.
    """
    from support.workloads import count_problem

    from mappedpages import CorruptFileError, Pager, RecoveryWarning

    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        try:
            p = Pager.open(path)
        except CorruptFileError as exc:
            return f"corrupt:{type(exc).__name__}", ""
        except Exception as exc:  # noqa: BLE001
            return "error", f"{type(exc).__name__}: {exc}"
    warned = any(issubclass(w.category, RecoveryWarning) for w in rec)
    try:
        st = state_of(p)
        problem = count_problem(p, st)
    except Exception as exc:  # noqa: BLE001
        p.close()
        return "error", f"opened, then {type(exc).__name__}: {exc}"
    p.close()
    w = "with" if warned else "without"
    if problem:
        return "inconsistent", f"{w} a RecoveryWarning: {problem}"
    latest = len(history) - 1
    matches = [j for j, h in enumerate(history) if h.matches(st)]
    if latest in matches:
        return ("latest+warning" if warned else "latest"), ""
    if matches:
        kind = "previous" if warned else "silent-rollback"
        return kind, f"state {matches[-1]} of {latest}"
    alloc = [j for j, h in enumerate(history)
             if _alloc_part(h) == _alloc_part(st) and st.page_count >= h.needed_pages()]
    prot = [j for j, h in enumerate(history) if h.protected == st.protected]
    if alloc and prot:
        kind = "mixed" if warned else "silent-mixed"
        return kind, (f"allocation of state {alloc[-1]}, protected pages of state "
                      f"{prot[-1]} (latest {latest})")
    return "unknown", f"{w} a RecoveryWarning: {st.describe()}; latest: " \
        f"{history[latest].describe()}"


def worker_main() -> None:
    job = json.load(sys.stdin)
    base = bytes.fromhex(job["base"])
    history = [_state_from(d) for d in job["history"]]
    workdir = Path(job["workdir"])
    path = workdir / f"case-{os.getpid()}.mpp"
    with open(job["out"], "a", buffering=1) as out:
        for i, edits in job["cases"]:
            data = apply_edits(base, edits)
            with open(path, "wb") as fh:
                fh.write(data)
            kind, detail = classify(path, history)
            out.write(json.dumps([i, kind, detail]) + "\n")


# --------------------------------------------------------------------------
# The parent: batches, timeouts, crashes
# --------------------------------------------------------------------------

# Random damage (bit flips, truncation) must be caught: these are the only
# acceptable outcomes besides a CorruptFileError.
GOOD = {"latest", "latest+warning", "previous", "mixed"}
# Hostile values come with their CRCs resealed, so the file is damaged only in
# meaning. An impossible value ("invalid") must be refused or reported: any
# consistent state with a RecoveryWarning is accepted, a different state
# without one is not. A value that makes another well-formed file ("valid")
# may open as whatever state that file describes, as long as it is consistent.
GOOD_INVALID = GOOD | {"unknown+warning"}
GOOD_VALID = GOOD_INVALID | {"silent-rollback", "silent-mixed", "unknown"}


def run_cases(cases: list[tuple[str, list]], base: bytes, history: list[State],
              workers: int | None = None, timeout: float = BATCH_TIMEOUT) -> dict[int, tuple]:
    """Run every case in worker processes; return index -> (kind, detail)."""
    workers = workers or max(1, min(4, os.cpu_count() or 1))
    results: dict[int, tuple] = {}
    workdir = Path(tempfile.mkdtemp(prefix="mp-hostile-", dir=_scratch()))
    todo = list(range(len(cases)))
    slices = [todo[k::workers] for k in range(workers)]
    slices = [s for s in slices if s]
    env = dict(os.environ)
    while slices:
        procs = []
        for n, idx in enumerate(slices):
            out = workdir / f"out-{n}-{len(results)}.jsonl"
            out.write_text("")
            job = {"base": base.hex(), "history": [_state_json(h) for h in history],
                   "workdir": str(workdir), "out": str(out),
                   "cases": [[i, cases[i][1]] for i in idx]}
            errfile = open(workdir / f"err-{n}-{len(results)}.txt", "w+")  # noqa: SIM115
            proc = subprocess.Popen([sys.executable, __file__, "--worker"],
                                    stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                    stderr=errfile, env=env, text=True)
            procs.append((proc, idx, out, json.dumps(job), errfile))
        for proc, _idx, _out, payload, _err in procs:
            assert proc.stdin is not None
            proc.stdin.write(payload)
            proc.stdin.close()
        next_slices = []
        start = time.monotonic()
        for proc, idx, out, _payload, errfile in procs:
            left = max(1.0, timeout - (time.monotonic() - start))
            hung = False
            try:
                proc.wait(timeout=left)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                hung = True
            errfile.seek(0)
            err = errfile.read()
            errfile.close()
            done = set()
            for line in out.read_text().splitlines():
                i, kind, detail = json.loads(line)
                results[i] = (kind, detail)
                done.add(i)
            rest = [i for i in idx if i not in done]
            if rest:
                culprit = rest[0]
                if hung:
                    results[culprit] = ("hang", f"no answer within {timeout:.0f} s (batch)")
                else:
                    tail = (err or "").strip().splitlines()[-3:]
                    results[culprit] = ("crash", f"worker exit {proc.returncode}: "
                                        + " | ".join(tail))
                if rest[1:]:
                    next_slices.append(rest[1:])
        slices = next_slices
    shutil.rmtree(workdir, ignore_errors=True)
    return results


def _scratch() -> str | None:
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


def _accepted(kind: str, detail: str, name: str) -> bool:
    if kind.startswith("corrupt:"):
        return True
    if kind == "unknown" and detail.startswith("with a RecoveryWarning"):
        kind = "unknown+warning"
    if name.startswith("valid:"):
        return kind in GOOD_VALID
    if name.startswith("invalid:"):
        return kind in GOOD_INVALID
    return kind in GOOD


def failures(cases: list[tuple[str, list]], results: dict[int, tuple]) -> list[str]:
    bad = []
    for i, (name, _edits) in enumerate(cases):
        kind, detail = results.get(i, ("missing", "no result"))
        if not _accepted(kind, detail, name):
            bad.append(f"{name}: {kind} {detail}")
    return bad


def tally(results: dict[int, tuple]) -> Counter:
    c: Counter = Counter()
    for kind, _ in results.values():
        c["corrupt" if kind.startswith("corrupt:") else kind] += 1
    return c


# --------------------------------------------------------------------------
# pytest
# --------------------------------------------------------------------------

_BASE: dict[str, Any] = {}


def base_file() -> tuple[bytes, list[State], dict[str, Any]]:
    if not _BASE:
        d = Path(tempfile.mkdtemp(prefix="mp-base-", dir=_scratch()))
        try:
            _BASE["v"] = build_base(d / "base.mpp")
        finally:
            shutil.rmtree(d, ignore_errors=True)
    return _BASE["v"]


def _check(cases: list[tuple[str, list]]) -> Counter:
    data, history, _facts = base_file()
    results = run_cases(cases, data, history)
    bad = failures(cases, results)
    assert not bad, f"{len(bad)} of {len(cases)} cases failed:\n" + "\n".join(bad[:15])
    return tally(results)


def test_base_file_has_what_the_cases_need():
    data, history, facts = base_file()
    assert len(facts["dir_pages"]) == 2
    assert len(history[-1].protected) == 3
    assert len(data) == 32 * PS


def test_every_bit_flip_of_pages_0_to_2_and_directory_pages():
    data, _history, facts = base_file()
    counts = _check(bitflip_cases(data, facts))
    assert counts["latest"] + counts["latest+warning"] > 0


def test_every_truncation_at_512_bytes():
    data, _history, _facts = base_file()
    _check(truncation_cases(data))


def test_hostile_values():
    data, _history, facts = base_file()
    _check(hostile_cases(data, facts))


def test_worker_crash_is_reported_with_its_case():
    """A case that kills the worker is named, and the cases after it still run."""
    data, history, facts = base_file()
    cases = hostile_cases(data, facts)[:3]
    cases.insert(1, ("kill the worker", [["put", 0, "4d505047"], ["crash"]]))
    results = run_cases(cases, data, history, workers=1)
    assert results[1][0] == "crash", results[1]
    assert all(i in results for i in range(len(cases)))


def test_generation_at_maximum_refuses_writes(tmp_path):
    from mappedpages import FileFull, Pager

    data, _history, _facts = base_file()
    active = _active_meta(data)
    edited = apply_edits(data, [["put", (1 + active) * PS + 8, _u64(U64)],
                                ["reseal", "meta", active]])
    path = tmp_path / "g.mpp"
    path.write_bytes(edited)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p = Pager.open(path)
    try:
        import pytest

        with pytest.raises(FileFull):
            p.alloc()
    finally:
        p.close()


if __name__ == "__main__":
    if sys.argv[1:] == ["--worker"]:
        worker_main()
    elif sys.argv[1:2] == ["--report"]:
        data, history, facts = base_file()
        groups = {
            "bit flips (pages 0-2 and both directory pages)": bitflip_cases(data, facts),
            "truncations at every 512 bytes": truncation_cases(data),
            "hostile values": hostile_cases(data, facts),
        }
        for name, cases in groups.items():
            t0 = time.monotonic()
            results = run_cases(cases, data, history)
            counts = tally(results)
            bad = failures(cases, results)
            print(f"{name}: {len(cases)} cases in {time.monotonic() - t0:.1f} s: "
                  + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
            for line in bad[:40]:
                print("   FAIL", line)
            if name.startswith("bit flips"):
                per_page: dict[str, Counter] = {}
                for i, (cname, _e) in enumerate(cases):
                    page = " ".join(cname.split()[1:3])
                    kind = results[i][0]
                    kind = "corrupt" if kind.startswith("corrupt:") else kind
                    per_page.setdefault(page, Counter())[kind] += 1
                for page, c in per_page.items():
                    print(f"   {page}: " + ", ".join(f"{k} {v}" for k, v in sorted(c.items())))
            if name == "hostile values" and "-v" in sys.argv:
                for i, (cname, _e) in enumerate(cases):
                    print(f"   {cname}: {results[i][0]} {results[i][1][:150]}")
    else:
        print("usage: test_hostile.py --report | --worker", file=sys.stderr)
        sys.exit(2)
