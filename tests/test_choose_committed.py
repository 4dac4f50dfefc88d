"""Choosing the committed state on open (csrc/recover.c), exhaustively.

mp_choose_committed is the pure decision open, refresh and rollback make over what
they read of both metadata copies and page 0. It is run here over every
combination of valid, damaged, stale (older) and past-end copies, page 0's
selector and checksum, salvage, in both layouts, against the rules FORMAT.md and
RELIABILITY.md state: generations decide, page 0's selector only between equals;
a valid commit past the end of the file stops open unless salvage can roll back
to a valid older copy; the layout decides whether page 0 is kept current.
"""

from __future__ import annotations

import itertools

from mappedpages._core import ffi, lib

CHUNK = 8160  # any chunk size: the decision only compares page counts with it
PROBLEMS = [
    lib.MP_META_OK,
    lib.MP_META_BAD_CRC,
    lib.MP_META_BAD_TOTAL,
    lib.MP_META_BITS_PAST_END,
    lib.MP_META_BAD_FREE_MAP,
    lib.MP_META_PAST_END,
]
GENERATIONS = [(5, 5), (5, 6), (6, 5)]
TOTALS = [100, CHUNK + 100]  # v0.2 layout, extended layout
DAMAGED = (lib.MP_REC_META_A_DAMAGED, lib.MP_REC_META_B_DAMAGED)
PAGE0 = lib.MP_REC_SELECTOR_INVALID | lib.MP_REC_SELECTOR_STALE | lib.MP_REC_META_CHECKSUM


def expected(problem, gen, total, selector, checksum_ok, salvage):  # type: ignore[no-untyped-def]
    ok = [p == lib.MP_META_OK for p in problem]
    past = [p == lib.MP_META_PAST_END for p in problem]
    # A copy past the end counts when no valid copy is newer than it.
    cuts = [c for c in (0, 1) if past[c] and not (ok[1 - c] and gen[1 - c] > gen[c])]
    cut = max(cuts, key=lambda c: (gen[c], -c)) if cuts else -1
    if cut >= 0 and not (salvage and ok[1 - cut]):
        return lib.MP_EFILE_TRUNCATED, None
    if not any(ok):
        return lib.MP_ECORRUPT_METADATA, None
    if ok[0] and ok[1]:
        chosen = (
            int(gen[1] > gen[0]) if gen[0] != gen[1] else (selector if selector <= 1 else 0)
        )
    else:
        chosen = 0 if ok[0] else 1
    flags = sum(DAMAGED[c] for c in (0, 1) if not ok[c])
    if cut >= 0:
        flags |= lib.MP_REC_CUT_ROLLED_BACK
    if total[chosen] <= CHUNK:
        if selector > 1:
            flags |= lib.MP_REC_SELECTOR_INVALID
        elif selector != chosen:
            flags |= lib.MP_REC_SELECTOR_STALE
        if not checksum_ok:
            flags |= lib.MP_REC_META_CHECKSUM
    fallback = 1 - chosen if ok[1 - chosen] else -1
    return lib.MP_OK, (chosen, fallback, cut, flags, int(bool(flags & PAGE0)))


def choose(problem, gen, total, selector, checksum_ok, salvage):  # type: ignore[no-untyped-def]
    inp = ffi.new("mp_choice_in *")
    for c in (0, 1):
        inp.problem[c] = problem[c]
        inp.generation[c] = gen[c]
        inp.total_pages[c] = total[c]
    inp.selector = selector
    inp.meta_checksum_ok = checksum_ok
    inp.chunk_pages = CHUNK
    inp.salvage = salvage
    out = ffi.new("mp_choice *")
    out.chosen = 77
    rc = lib.mp_choose_committed(inp, out)
    if rc != lib.MP_OK:
        assert out.chosen == 77, "an error wrote the choice"
        return rc, None
    return rc, (out.chosen, out.fallback, out.cut, out.flags, out.page0_stale)


def test_every_combination() -> None:
    cases = 0
    for problem in itertools.product(PROBLEMS, repeat=2):
        for gen, total, selector, checksum_ok, salvage in itertools.product(
            GENERATIONS, itertools.product(TOTALS, repeat=2), (0, 1, 2, 255), (0, 1), (0, 1)
        ):
            args = (problem, gen, total, selector, checksum_ok, salvage)
            assert choose(*args) == expected(*args), args
            cases += 1
    assert cases == 36 * 3 * 4 * 4 * 2 * 2


def test_the_selector_decides_only_between_equals() -> None:
    for gen in GENERATIONS:
        results = {
            choose((lib.MP_META_OK, lib.MP_META_OK), gen, (100, 100), sel, 1, 0)[1][0]  # type: ignore[index]
            for sel in (0, 1)
        }
        assert len(results) == (2 if gen[0] == gen[1] else 1), gen


def test_a_cut_file_needs_salvage_and_a_valid_older_copy() -> None:
    args = ((lib.MP_META_OK, lib.MP_META_PAST_END), (5, 6), (100, 100), 1, 1)
    assert choose(*args, 0)[0] == lib.MP_EFILE_TRUNCATED
    rc, got = choose(*args, 1)
    assert rc == lib.MP_OK and got is not None
    assert got[0] == 0 and got[2] == 1 and got[3] & lib.MP_REC_CUT_ROLLED_BACK


def test_refuses_bad_arguments() -> None:
    out = ffi.new("mp_choice *")
    assert lib.mp_choose_committed(ffi.NULL, out) == lib.MP_EINVALID_ARGUMENT
    inp = ffi.new("mp_choice_in *")
    assert lib.mp_choose_committed(inp, out) == lib.MP_EINVALID_ARGUMENT  # chunk_pages 0
