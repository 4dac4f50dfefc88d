"""Power-loss simulation, sampled (the exhaustive run is scripts/powerloss_sim.py).

A workload runs on a pager whose barriers are observed through the C core's
I/O hooks (tests/iohooks.py). At every barrier, just before and just after it,
and after every operation returns, the files a power loss could leave are
built: the durable image plus subsets of the pages dirtied since, each written
whole or torn at a 512-byte sector, with the old or new file size. Each image
is opened with Pager.open and must show the state of the last acknowledged
commit or of the one in flight: never less, never anything else, and it must
open.
"""

from __future__ import annotations

import itertools
import random
import warnings

import pytest
from support.geometry import layout
from support.iohooks import DURABILITY_MODES
from support.powerloss import (
    CrashPoint,
    Image,
    ImageChecker,
    all_but_one_images,
    check_recording,
    crash_images,
    record_workload,
)
from support.workloads import (
    Op,
    _store,
    _write_protected,
    engine_workload,
    random_workload,
    short_workload,
    standard_workload,
)

from mappedpages import CorruptFileError, Pager

# Page sizes: 1024 lets every sector combination of up to 4 dirty pages be
# tried; 4096 is the common size (each pager page its own OS page).
CASES = [(1024, dict(samples=24, both_ways=True, max_exhaustive=1 << 12)),
         (4096, dict(samples=8, both_ways=False, max_exhaustive=256))]


_TALLIES: dict = {}


def _tally(tmp_path_factory, mode: str, page_size: int, layout: str = "0.2"):
    """Record the standard workload in MODE and check its crash images (once per session).

    With layout="0.3" the file is extended from its creation: its commits are
    one flush each (none in "none"), so the workload passes fewer barriers.
    """
    key = (mode, page_size, layout)
    if key not in _TALLIES:
        opts = dict(CASES)[page_size]
        tmp = tmp_path_factory.mktemp(f"powerloss-{mode}-{page_size}-{layout}")
        rec = record_workload(tmp / "work", standard_workload(), page_size, mode=mode,
                              layout=layout)
        assert len(rec.points) > (50 if layout == "0.2" else 30), \
            "the workload should pass through many barriers"
        checker = ImageChecker(tmp / "img", reopen=True)
        _TALLIES[key] = check_recording(rec, checker, seed=page_size, **opts)
    return _TALLIES[key]


@pytest.mark.parametrize("layout", ["0.2", "0.3"])
@pytest.mark.parametrize("mode", DURABILITY_MODES)
@pytest.mark.parametrize("page_size", [1024, 4096])
def test_crash_never_loses_an_acknowledged_commit(tmp_path_factory, mode, page_size, layout):
    """Every image shows the last acknowledged state or the one in flight."""
    tally = _tally(tmp_path_factory, mode, page_size, layout)
    assert tally.images > 300 and tally.torn > 100, tally.summary()
    whole = [v for v in tally.failures if v.category != "unopenable" or not v.image.torn]
    assert tally.lost == 0 and tally.unknown == 0 and \
        tally.unopenable == tally.unopenable_torn, (
            f"{tally.summary()}\n"
            + "\n".join(f"- {v.category}: {v.image.describe()}\n    {v.detail}"
                        for v in whole[:5]))


@pytest.mark.parametrize("layout", ["0.2", "0.3"])
@pytest.mark.parametrize("mode", DURABILITY_MODES)
@pytest.mark.parametrize("page_size", [1024, 4096])
def test_torn_sector_never_makes_the_file_unopenable(tmp_path_factory, mode, page_size, layout):
    """A write torn at a sector boundary must leave a file that opens.

    In the v0.2 layout page 0 is rewritten in place and holds the only copy of
    the protected-page directory index: a torn page 0 (its first sector new,
    its CRC in the last sector old, or the reverse) fails the index CRC, and
    open raises CorruptDirectoryIndex. A file created with layout="0.3" keeps
    its directory index in the sealed index pages 6/7 from the start.
    """
    tally = _tally(tmp_path_factory, mode, page_size, layout)
    torn = [v for v in tally.failures if v.category == "unopenable" and v.image.torn]
    assert tally.unopenable_torn == 0, (
        f"{tally.unopenable_torn} of {tally.torn} images with a torn sector cannot be "
        f"opened ({tally.summary()}):\n"
        + "\n".join(f"- {v.image.describe()}\n    {v.detail}" for v in torn[:5]))


@pytest.mark.parametrize("layout", ["0.2", "0.3"])
@pytest.mark.parametrize("mode", DURABILITY_MODES)
@pytest.mark.parametrize("seed", [2, 3])
def test_random_workload_crashes(tmp_path, mode, seed, layout):
    """A seeded random mix of every operation (scripts/powerloss_sim.py runs more)."""
    rec = record_workload(tmp_path / "work", random_workload(seed), 1024, mode=mode,
                          layout=layout)
    tally = check_recording(rec, ImageChecker(tmp_path / "img", reopen=True),
                            exhaustive_pages=2, samples=8, seed=seed, max_exhaustive=64)
    assert tally.bad == 0, f"{tally.summary()}\n{tally.failure_report(3)}"


def _write_id_into_protected(p, ctx) -> None:
    with p.write_protected(ctx["pid"]) as w:
        w.page[:8] = ctx["x"].to_bytes(8, "little")


@pytest.mark.parametrize("layout", ["0.2", "0.3"])
@pytest.mark.parametrize("mode", DURABILITY_MODES)
@pytest.mark.parametrize("page_size", [1024, 4096])
def test_protected_commit_never_outlives_an_earlier_alloc(tmp_path, mode, page_size, layout):
    """The pattern of every structure built on the pager: allocate a page, then
    record its id in a protected (root) page. No crash may keep the record and
    lose the allocation: the id would then name a free page."""
    ops = [
        Op("alloc_protected", "alloc_protected",
           lambda p, c: c.update(pid=p.alloc_protected())),
        Op("sync", "sync", lambda p, c: p.sync()),
        Op("alloc", "alloc", lambda p, c: c.update(x=p.alloc())),
        Op("protected_commit", "write the new id into the protected page",
           _write_id_into_protected),
    ]
    rec = record_workload(tmp_path / "work", ops, page_size, mode=mode, layout=layout)
    checker = ImageChecker(tmp_path / "img")
    bad = []
    for pt in rec.points:
        for img in crash_images(pt, page_size, exhaustive_pages=0, samples=0):
            v = checker.judge(img, rec.states)
            if v.category != "ok":
                bad.append(f"{img.describe()}\n    {v.category}: {v.detail}")
    assert not bad, (
        f"{len(bad)} durable image(s) keep the protected write but not the alloc before it "
        f"(durability={mode!r}):\n" + "\n".join(bad[:2]))


@pytest.mark.parametrize("layout", ["0.2", "0.3"])
@pytest.mark.parametrize("mode", DURABILITY_MODES)
@pytest.mark.parametrize("page_size", [1024, 4096])
def test_alloc_protected_that_grows_the_file(tmp_path, mode, page_size, layout):
    """alloc_protected on a full file: the file grows and the new entry's backing
    pages are past the durable page count until the metadata commit. A power loss
    between the directory commit (page 0) and that metadata commit must leave a
    file that opens (the entry dropped as an unfinished alloc), not one that
    raises CorruptProtectedDirectory. (A layout="0.3" file starts at 8 pages,
    so its growths are 8 -> 16 and on.)"""
    ops = [
        Op("alloc_protected", "alloc_protected (new block, grows 4 -> 8)",
           lambda p, c: p.alloc_protected()),
        Op("alloc", "alloc (the last free page)", lambda p, c: p.alloc()),
        Op("alloc_protected", "alloc_protected (same block, grows 8 -> 16)",
           lambda p, c: p.alloc_protected()),
    ]
    rec = record_workload(tmp_path / "work", ops, page_size, mode=mode, layout=layout)
    checker = ImageChecker(tmp_path / "img")
    bad = []
    for pt in rec.points:
        for img in crash_images(pt, page_size, exhaustive_pages=0, samples=0):
            v = checker.judge(img, rec.states)
            if v.category != "ok":
                bad.append(f"{img.describe()}\n    {v.category}: {v.detail}")
    assert not bad, f"{len(bad)} durable image(s) fail:\n" + "\n".join(bad[:2])


def test_harness_notices_a_skipped_flush(tmp_path):
    """The same harness must fail when the commit order is broken on purpose.

    With 4096-byte pages each pager page is its own OS page, so skipping the
    first flush of the first alloc (the new metadata copy) is not covered by a
    neighbouring flush: the durable file then lacks an acknowledged commit.
    """
    ops = short_workload()
    clean = record_workload(tmp_path / "clean", ops, 4096)
    first_msync_of_alloc = clean.op_msyncs[0][0]
    assert clean.op_msyncs[0][1] >= first_msync_of_alloc, "alloc made no msync"
    broken = record_workload(tmp_path / "broken", ops, 4096, skip_msync_at=first_msync_of_alloc)
    checker = ImageChecker(tmp_path / "img")
    tally = check_recording(broken, checker, samples=4, both_ways=False, max_exhaustive=64)
    assert tally.lost > 0, (
        "skipping the flush of the metadata copy went unnoticed by the harness: "
        + tally.summary()
    )
    # And the same recording without the skip loses nothing.
    tally = check_recording(clean, ImageChecker(tmp_path / "img2"), samples=4,
                            both_ways=False, max_exhaustive=64)
    assert tally.lost == 0 and tally.unknown == 0, tally.failure_report()


def _final_points(rec) -> list[CrashPoint]:
    return [pt for pt in rec.points if pt.label.endswith(": returned")]


def _image_with_page0(pt: CrashPoint, page0: bytes, page_size: int) -> Image:
    pages = list(pt.durable)
    for i, data in pt.dirty.items():
        while len(pages) <= i:
            pages.append(bytes(page_size))
        pages[i] = data
    pages[0] = page0
    data = b"".join(pages)[: pt.current_size]
    return Image(pt, data, ((0, "edited"),), pt.current_size)


@pytest.mark.parametrize("page_size", [1024, 4096])
def test_garbled_first_sector_of_page0(tmp_path, page_size):
    """Garbage in the superblock's sector: refused as corrupt, or the right state.

    (The measurement of how often such a file can be opened is in
    scripts/powerloss_sim.py --garble and RELIABILITY.md.)
    """
    rec = record_workload(tmp_path / "work", short_workload(), page_size)
    path = tmp_path / "g.mpp"
    rnd = random.Random(7)
    outcomes = {"opened": 0, "corrupt": 0}
    checker = ImageChecker(tmp_path / "img")
    for pt in _final_points(rec)[-3:]:
        current = pt.dirty.get(0, pt.durable[0])
        for fill in (bytes(512), b"\xff" * 512, rnd.randbytes(512)):
            img = _image_with_page0(pt, fill + current[512:], page_size)
            path.write_bytes(img.data)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    p = Pager.open(path)
                except CorruptFileError:
                    outcomes["corrupt"] += 1
                    continue
            p.close()
            v = checker.judge(img, rec.states)
            assert v.category == "ok", v.detail
            outcomes["opened"] += 1
    assert sum(outcomes.values()) == 9


@pytest.mark.parametrize("mode", DURABILITY_MODES)
def test_upgrade_to_extended_layout_survives_power_loss(tmp_path, mode):
    """The commit that moves a full v0.2 file to the extended layout (page 0's
    mark, the new chunk's free-map and index pages, then the metadata copy),
    and commits after it in the new layout: every crash image opens and shows
    an acknowledged state or the one in flight."""
    page_size = 1024
    cap = layout(page_size).v02_max_pages
    ops = [
        Op("alloc_protected", "alloc_protected (v0.2)",
           _store("p0", lambda p: p.alloc_protected())),
        Op("alloc_bulk", "alloc_bulk to 2 short of the cap",
           _store("fill", lambda p: p.alloc_bulk(cap - 3 - 4 - 2))),
        Op("alloc_bulk", "alloc_bulk(10): the upgrade", _store("up", lambda p: p.alloc_bulk(10))),
        Op("protected_commit", "protected write (extended)", _write_protected("p0", 5)),
        Op("free_bulk", "free_bulk across chunks",
           lambda p, c: p.free_bulk([c["fill"][0], c["up"][-1]])),
        Op("alloc_protected", "alloc_protected (extended)",
           _store("p1", lambda p: p.alloc_protected())),
        Op("free_protected", "free_protected (extended)", lambda p, c: p.free_protected(c["p0"])),
    ]
    rec = record_workload(tmp_path / "work", ops, page_size, mode=mode)
    checker = ImageChecker(tmp_path / "img")
    bad = []
    images = 0
    for pt in rec.points:
        for img in crash_images(pt, page_size, exhaustive_pages=2, samples=4):
            images += 1
            v = checker.judge(img, rec.states)
            if v.category != "ok" and not (v.category == "unopenable" and img.torn):
                bad.append(f"{img.describe()}\n    {v.category}: {v.detail}")
    assert images > 50
    assert not bad, f"{len(bad)} image(s) fail:\n" + "\n".join(bad[:3])


def _and_protected_write(txn):
    """TXN (an engine_workload transaction) in a block that also writes the
    protected page ctx["pid"]; every second one first allocates a new protected
    page, frees the old one and sets root 3. The inner block joins this one."""

    def fn(p, ctx) -> None:
        with p.transaction():
            txn(p, ctx)
            n = ctx["engine_n"]
            if n % 2 == 0:
                old = ctx["pid"]
                ctx["pid"] = p.alloc_protected()
                p.free_protected(old)
                p.set_root(3, 1000 + n)
            with p.write_protected(ctx["pid"]) as w:
                w.page[:] = random.Random(n).randbytes(p.page_size)

    return fn


def _with_protected_writes(ops: list[Op]) -> list[Op]:
    out = [Op("alloc_protected", "alloc_protected", _store("pid", lambda p: p.alloc_protected()))]
    for op in ops:
        if op.name == "txn":
            op = Op("txn", f"{op.label} with protected writes", _and_protected_write(op.fn))
        out.append(op)
    return out


@pytest.mark.parametrize(("layout", "protected"), [("0.2", False), ("0.3", False), ("0.3", True)],
                         ids=["0.2", "0.3", "0.3-protected"])
@pytest.mark.parametrize("mode", DURABILITY_MODES)
def test_engine_transactions_survive_power_loss(tmp_path, mode, layout, protected):
    """Copy-on-write transactions with data pages written through ``tx.page``
    and roots naming them (support.workloads.engine_workload), in every mode and layout:
    every crash image opens and shows an acknowledged transaction or the one in
    flight, whole: its roots, its allocations, and the content of every page
    its roots name (State.data). No image shows a root whose page does not
    hold the committed content, and none loses an acknowledged transaction.
    With ``protected``, each transaction also writes a protected page (and every
    second one allocates one and frees another): the protected contents are
    part of the state each image must show whole. (Run in a layout="0.3" file,
    whose directory commits with the metadata copy; a v0.2 directory's page 0 is
    a second commit point, FORMAT.md "Directory commits".)"""
    page_size = 1024
    ops = engine_workload(seed=15)
    if protected:
        ops = _with_protected_writes(ops)
    rec = record_workload(tmp_path / "work", ops, page_size, mode=mode, layout=layout)
    assert rec.states[-1].roots[1] == 10
    if protected:
        assert rec.states[-1].roots[3] == 1010 and len(rec.states[-1].protected) == 1
    checker = ImageChecker(tmp_path / "img")
    bad = []
    images = 0
    for pt in rec.points:
        # With protected writes, also every image with all pages but one on disk:
        # a one-flush commit's point reached the disk, a page it vouches for did not.
        for img in itertools.chain(crash_images(pt, page_size, exhaustive_pages=3, samples=12),
                                   all_but_one_images(pt, page_size) if protected else ()):
            images += 1
            v = checker.judge(img, rec.states)
            if v.category != "ok":
                bad.append(f"{img.describe()}\n    {v.category}: {v.detail}")
    assert images > 100
    assert not bad, f"{len(bad)} of {images} image(s) fail:\n" + "\n".join(bad[:3])


@pytest.mark.parametrize("layout", ["0.2", "0.3"])
def test_none_mode_makes_transactions_data_durable_before_their_state(tmp_path, layout):
    """In "none" mode the deferred state is made durable by more than sync():
    a protected-page allocation (a directory commit) writes it first. The data
    pages the transactions since the last sync() wrote must reach the disk
    before that state names them: no image may show a root whose page lacks
    the committed content."""
    ops = engine_workload(seed=16, n_txns=6)
    ops.insert(6, Op("alloc_protected", "alloc_protected after unsynced transactions",
                     lambda p, c: p.alloc_protected()))
    rec = record_workload(tmp_path / "work", ops, 1024, mode="none", layout=layout)
    checker = ImageChecker(tmp_path / "img")
    bad = []
    for pt in rec.points:
        for img in crash_images(pt, 1024, exhaustive_pages=3, samples=12):
            v = checker.judge(img, rec.states)
            if v.category != "ok":
                bad.append(f"{img.describe()}\n    {v.category}: {v.detail}")
    assert not bad, f"{len(bad)} image(s) fail:\n" + "\n".join(bad[:3])
