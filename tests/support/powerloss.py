"""The power-loss model over the I/O hooks: crash points, crash images, verdicts.

The model. A shared mapping's dirty pages may reach the disk at any moment, in
any order, so only barriers order anything: after a successful msync of a
range, those bytes are durable; after an fsync, the whole file and its size
are. The recorder keeps a model of the durable file. At each barrier (just
before applying it and just after) and after each operation returns, the
dirty set is every page whose current content differs from the durable model.
A crash image is the durable model plus any subset of the dirty pages, each
written whole or torn at a 512-byte sector boundary, with the old or the new
file size. Sector writes are taken as atomic; msync is not taken to make the
file size durable (POSIX does not promise it).

What the model does not see: states a page passes through between two
barriers (a writeback racing with the stores of one in-place rewrite), since
the hooks observe barriers, not stores.

Used by tests/test_powerloss.py and scripts/powerloss_sim.py.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import random
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from mappedpages import CorruptFileError, Pager, RecoveryWarning
from mappedpages._core import lib

from .iohooks import SECTOR, IoHooks, acknowledges, close_quietly, create_pager
from .workloads import Op, State, count_problem, state_of

# --------------------------------------------------------------------------
# The power-loss model
# --------------------------------------------------------------------------


@dataclass
class CrashPoint:
    """A moment at which the power may fail, with what the disk may then hold."""

    index: int
    op: int  # the operation in flight (or just returned); 0 = before the first
    label: str
    durable: tuple[bytes, ...]  # the durable model, one entry per page
    durable_size: int
    dirty: dict[int, bytes]  # page -> current content, where it differs from durable
    current_size: int
    floor: int  # the oldest state an image may show (the last acknowledged)
    ceil: int  # the newest (the operation in flight)


class CrashRecorder:
    """Follows the barriers of one pager and records crash points."""

    def __init__(self, path: Any, page_size: int, mode: str = "compat") -> None:
        self.path = os.fspath(path)
        self.page_size = page_size
        self.mode = mode
        self.fd = -1
        self.durable: list[bytes] = []
        self.durable_size = 0
        self.points: list[CrashPoint] = []
        self.op = 0
        self.op_label = "start"
        self.floor = 0
        self.active = False
        self.barrier_count = 0

    # -- file access
    def _read_current(self) -> tuple[list[bytes], int]:
        size = os.fstat(self.fd).st_size
        data = os.pread(self.fd, size, 0)
        ps = self.page_size
        return [data[i : i + ps] for i in range(0, size, ps)], size

    def start(self) -> None:
        """Begin after create: the created file is durable (create ends with fsync)."""
        self.fd = os.open(self.path, os.O_RDONLY)
        self.durable, self.durable_size = self._read_current()
        self.active = True
        self.point("before the first operation")

    def stop(self) -> None:
        self.active = False
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    # -- points
    def point(self, label: str, current: tuple[list[bytes], int] | None = None,
              floor: int | None = None) -> None:
        pages, size = current if current is not None else self._read_current()
        zero = bytes(self.page_size)
        n = max(len(pages), len(self.durable))
        dirty = {}
        for i in range(n):
            cur = pages[i] if i < len(pages) else zero
            old = self.durable[i] if i < len(self.durable) else zero
            if cur != old:
                dirty[i] = cur
        self.points.append(
            CrashPoint(
                index=len(self.points),
                op=self.op,
                label=f"op {self.op} ({self.op_label}): {label}",
                durable=tuple(self.durable),
                durable_size=self.durable_size,
                dirty=dirty,
                current_size=size,
                floor=self.floor if floor is None else floor,
                ceil=self.op,
            )
        )

    def on_barrier(self, kind: int, offset: int, length: int) -> None:
        if not self.active:
            return
        self.barrier_count += 1
        current = self._read_current()
        pages, size = current
        if kind == lib.MP_IO_FSYNC:
            what = "fsync"
        else:
            what = f"msync [{offset}, {offset + length})"
        self.point(f"before {what}", current)
        ps = self.page_size
        if kind == lib.MP_IO_FSYNC:
            self.durable = list(pages)
            self.durable_size = size
        else:
            first = offset // ps
            last = min((offset + length + ps - 1) // ps, len(pages))
            while len(self.durable) < last:
                self.durable.append(bytes(ps))
            for i in range(first, last):
                self.durable[i] = pages[i]
        self.point(f"after {what}", current)

    def begin(self, op_index: int, label: str) -> None:
        self.op = op_index
        self.op_label = label

    def end(self, op_index: int, name: str) -> None:
        if acknowledges(name, self.mode):
            self.floor = op_index
        self.point("returned")


def page_variants(old: bytes, new: bytes, sector: int = SECTOR,
                  both_ways: bool = True) -> list[tuple[str, bytes]]:
    """Ways a page may reach the disk, other than not at all: whole, or torn.

    Torn at each sector boundary: the first k sectors new and the rest old,
    and (both_ways) the first k old and the rest new.
    """
    out = [("new", new)]
    seen = {old, new}
    n = len(new) // sector
    for k in range(1, n):
        cut = k * sector
        cands = [(f"torn:first {k} sectors new", new[:cut] + old[cut:])]
        if both_ways:
            cands.append((f"torn:first {k} sectors old", old[:cut] + new[cut:]))
        for tag, data in cands:
            if data not in seen:
                seen.add(data)
                out.append((tag, data))
    return out


@dataclass
class Image:
    point: CrashPoint
    data: bytes
    choice: tuple[tuple[int, str], ...]  # (page, variant tag), pages written
    size: int

    @property
    def torn(self) -> bool:
        return any(tag.startswith("torn") for _, tag in self.choice)

    def describe(self) -> str:
        written = ", ".join(f"page {i} {tag}" for i, tag in self.choice) or "no dirty page"
        return (
            f"{self.point.label}; durable model + [{written}]; size {self.size} "
            f"(durable {self.point.durable_size}, current {self.point.current_size})"
        )


def _assemble(point: CrashPoint, choice: dict[int, bytes], size: int, page_size: int) -> bytes:
    n = max(len(point.durable), (point.current_size + page_size - 1) // page_size,
            max(choice, default=-1) + 1)
    zero = bytes(page_size)
    pages = [point.durable[i] if i < len(point.durable) else zero for i in range(n)]
    for i, data in choice.items():
        pages[i] = data
    return b"".join(pages)[:size]


def crash_images(
    point: CrashPoint,
    page_size: int,
    exhaustive_pages: int = 4,
    samples: int = 64,
    rnd: random.Random | None = None,
    sector: int = SECTOR,
    both_ways: bool = True,
    max_exhaustive: int = 1 << 16,
) -> Iterator[Image]:
    """Every candidate image at a point (or a sample when too many pages are dirty).

    Exhaustive when at most ``exhaustive_pages`` pages are dirty and the
    product of choices is at most ``max_exhaustive``; otherwise the image
    with no dirty page written, the one with all written whole, and
    ``samples`` random choices.
    """
    rnd = rnd or random.Random(point.index)
    zero = bytes(page_size)
    pages = sorted(point.dirty)
    options = []
    for i in pages:
        old = point.durable[i] if i < len(point.durable) else zero
        options.append([("old", old)] + page_variants(old, point.dirty[i], sector, both_ways))
    sizes = sorted({point.durable_size, point.current_size})
    total = len(sizes)
    for o in options:
        total *= len(o)
    if len(pages) <= exhaustive_pages and total <= max_exhaustive:
        combos: Iterable[tuple[int, ...]] = itertools.product(
            *[range(len(o)) for o in options]
        )
        for combo in combos:
            for size in sizes:
                yield _image(point, pages, options, combo, size, page_size)
        return
    picks = [tuple(0 for _ in options), tuple(1 for _ in options)]
    for _ in range(samples):
        picks.append(tuple(rnd.randrange(len(o)) for o in options))
    for combo in picks:
        for size in sizes:
            yield _image(point, pages, options, combo, size, page_size)


def all_but_one_images(point: CrashPoint, page_size: int, sector: int = SECTOR) -> Iterator[Image]:
    """The images where every dirty page reached the disk whole but one, which
    did not (or was torn at its middle sector): the crash a one-flush commit must
    survive (its commit point reached the disk, one of the pages it vouches for
    did not), whatever sampling ``crash_images`` does for many dirty pages."""
    zero = bytes(page_size)
    pages = sorted(point.dirty)
    options = []
    for i in pages:
        old = point.durable[i] if i < len(point.durable) else zero
        options.append([("old", old)] + page_variants(old, point.dirty[i], sector, False))
    for j in range(len(pages)):
        for missing in {0, min(len(options[j]) - 1, 1 + len(options[j]) // 2)}:
            combo = tuple(missing if k == j else 1 for k in range(len(pages)))
            yield _image(point, pages, options, combo, point.current_size, page_size)


def _image(point: CrashPoint, pages: list[int], options: list[list[tuple[str, bytes]]],
           combo: tuple[int, ...], size: int, page_size: int) -> Image:
    choice = {}
    tags = []
    for n, (i, k) in enumerate(zip(pages, combo)):
        if k:
            tag, data = options[n][k]
            choice[i] = data
            tags.append((i, tag))
    return Image(point, _assemble(point, choice, size, page_size), tuple(tags), size)


# --------------------------------------------------------------------------
# Opening images and judging them
# --------------------------------------------------------------------------


@dataclass
class Outcome:
    """What opening an image gave."""

    kind: str  # "ok", "corrupt" (a CorruptFileError), "error" (anything else)
    state: State | None = None
    warned: bool = False
    detail: str = ""


@dataclass
class Verdict:
    image: Image
    outcome: Outcome
    category: str  # "ok", "lost", "unknown", "unopenable"
    detail: str = ""


@dataclass
class Tally:
    images: int = 0
    distinct: int = 0
    torn: int = 0
    ok: int = 0
    lost: int = 0
    unknown: int = 0
    unopenable: int = 0
    unopenable_torn: int = 0
    warned: int = 0
    points: int = 0
    failures: list[Verdict] = field(default_factory=list)
    keep_failures: int = 20

    def add(self, v: Verdict) -> None:
        self.images += 1
        if v.image.torn:
            self.torn += 1
        if v.outcome.warned:
            self.warned += 1
        if v.category == "ok":
            self.ok += 1
            return
        if v.category == "lost":
            self.lost += 1
        elif v.category == "unknown":
            self.unknown += 1
        elif v.category == "unopenable":
            self.unopenable += 1
            if v.image.torn:
                self.unopenable_torn += 1
        if len(self.failures) < self.keep_failures:
            self.failures.append(v)

    def merge(self, other: Tally) -> None:
        for name in ("images", "distinct", "torn", "ok", "lost", "unknown", "unopenable",
                     "unopenable_torn", "warned", "points"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        room = self.keep_failures - len(self.failures)
        self.failures += other.failures[: max(room, 0)]

    @property
    def bad(self) -> int:
        return self.lost + self.unknown + self.unopenable

    def summary(self) -> str:
        return (
            f"{self.points} crash points, {self.images} images ({self.distinct} distinct), "
            f"{self.torn} with a torn sector; {self.ok} ok ({self.warned} with a "
            f"RecoveryWarning); acknowledged commits lost: {self.lost}; unknown state: "
            f"{self.unknown}; unopenable: {self.unopenable} ({self.unopenable_torn} torn)"
        )

    def failure_report(self, limit: int = 5) -> str:
        lines = []
        for v in self.failures[:limit]:
            lines.append(f"- {v.category}: {v.image.describe()}\n    {v.detail}")
        return "\n".join(lines)


class ImageChecker:
    """Opens crash images with Pager.open and judges them against the workload's states."""

    def __init__(self, workdir: Any, reopen: bool = False) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.path = self.workdir / "image.mpp"
        self.cache: dict[bytes, Outcome] = {}
        self.reopen = reopen

    def open_image(self, data: bytes) -> Outcome:
        key = hashlib.blake2b(data, digest_size=20).digest()
        hit = self.cache.get(key)
        if hit is not None:
            return hit
        out = self._open(data)
        self.cache[key] = out
        return out

    def _open_once(self) -> Outcome:
        with warnings.catch_warnings(record=True) as rec:
            warnings.simplefilter("always")
            try:
                p = Pager.open(self.path)
            except CorruptFileError as exc:
                return Outcome("corrupt", detail=f"{type(exc).__name__}: {exc}")
            except Exception as exc:  # noqa: BLE001 - every other failure is a finding
                return Outcome("error", detail=f"{type(exc).__name__}: {exc}")
        warned = any(issubclass(w.category, RecoveryWarning) for w in rec)
        try:
            st = state_of(p)
            problem = count_problem(p, st)
        except Exception as exc:  # noqa: BLE001
            close_quietly(p)
            return Outcome("error", detail=f"opened, then {type(exc).__name__}: {exc}")
        close_quietly(p)
        if problem:
            return Outcome("error", st, warned, f"opened with inconsistent counts: {problem}")
        return Outcome("ok", st, warned)

    def _open(self, data: bytes) -> Outcome:
        with open(self.path, "wb") as fh:
            fh.write(data)
        first = self._open_once()
        if first.kind != "ok" or not self.reopen:
            return first
        # A writer's open may repair the file; what it leaves must open the same.
        second = self._open_once()
        if second.kind != "ok" or second.state is None or first.state is None or \
                second.state.key() != first.state.key():
            return Outcome("error", first.state, first.warned,
                           f"reopening after recovery gave {second.kind} "
                           f"{second.state.describe() if second.state else second.detail}")
        return first

    def judge(self, image: Image, states: list[State]) -> Verdict:
        out = self.open_image(image.data)
        pt = image.point
        if out.kind != "ok" or out.state is None:
            return Verdict(image, out, "unopenable", out.detail)
        got = out.state
        for j in range(pt.floor, pt.ceil + 1):
            if states[j].matches(got):
                return Verdict(image, out, "ok")
        older = [j for j in range(pt.floor) if states[j].matches(got)]
        if older:
            return Verdict(
                image, out, "lost",
                f"shows the state after op {older[-1]}, but op {pt.floor} was acknowledged: "
                f"got {got.describe()}; expected {states[pt.floor].describe()}",
            )
        return Verdict(
            image, out, "unknown",
            f"matches no state of the workload: got {got.describe()}; allowed: "
            + " | ".join(states[j].describe() for j in range(pt.floor, pt.ceil + 1)),
        )


# --------------------------------------------------------------------------
# Running a workload under the model
# --------------------------------------------------------------------------


@dataclass
class Recording:
    path: Path
    page_size: int
    mode: str
    ops: list[Op]
    states: list[State]
    points: list[CrashPoint]
    barrier_counts: dict[str, int]
    op_msyncs: list[tuple[int, int]]  # per op: (first msync number, last msync number)


def record_workload(
    workdir: Any,
    ops: list[Op],
    page_size: int = 1024,
    mode: str = "compat",
    skip_msync_at: int = 0,
    layout: str = "0.2",
) -> Recording:
    """Run ``ops`` on a new file, recording crash points and the state after each op."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "work.mpp"
    if path.exists():
        path.unlink()
    rec = CrashRecorder(path, page_size, mode)
    hooks = IoHooks(rec.on_barrier)
    p = create_pager(path, page_size, hooks, durability=mode, layout=layout)
    if skip_msync_at:
        hooks.table.skip_msync_at = skip_msync_at
    ctx: dict[str, Any] = {}
    states = [state_of(p)]
    op_msyncs = []
    try:
        rec.start()
        for i, op in enumerate(ops, 1):
            rec.begin(i, op.label)
            first = hooks.calls(lib.MP_IO_MSYNC) + 1
            op.fn(p, ctx)
            hooks.check_errors()
            op_msyncs.append((first, hooks.calls(lib.MP_IO_MSYNC)))
            states.append(state_of(p))
            rec.end(i, op.name)
    finally:
        rec.stop()
        counts = hooks.counts()
        close_quietly(p)
    return Recording(path, page_size, mode, ops, states, rec.points, counts, op_msyncs)


def check_recording(
    rec: Recording,
    checker: ImageChecker,
    exhaustive_pages: int = 4,
    samples: int = 64,
    seed: int = 0,
    both_ways: bool = True,
    max_exhaustive: int = 1 << 16,
    max_points: int | None = None,
    on_point: Callable[[CrashPoint, Tally], None] | None = None,
) -> Tally:
    """Build and judge the crash images of every recorded point."""
    tally = Tally()
    rnd = random.Random(seed)
    points = rec.points
    if max_points is not None and len(points) > max_points:
        points = sorted(rnd.sample(points, max_points), key=lambda pt: pt.index)
    before = len(checker.cache)
    for pt in points:
        tally.points += 1
        for img in crash_images(pt, rec.page_size, exhaustive_pages, samples, rnd,
                                both_ways=both_ways, max_exhaustive=max_exhaustive):
            tally.add(checker.judge(img, rec.states))
        if on_point is not None:
            on_point(pt, tally)
    tally.distinct = len(checker.cache) - before
    return tally
