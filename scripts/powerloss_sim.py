#!/usr/bin/env python3
"""Exhaustive power-loss simulation of mappedpages (the suite runs a sample of it).

For each durability mode, page size and workload, the workload runs on a pager
whose durability barriers are observed through the C core's I/O hooks; at
every barrier (just before and just after it) and after every operation
returns, every file a power loss could leave is built and opened with
Pager.open: the durable image plus each subset of the pages dirtied since it
(all subsets up to --exhaustive-pages dirty pages, a random sample above),
each page written whole or torn at a 512-byte sector boundary, with the old or
the new file size. The model is tests/support/powerloss.py (run this from the
repository root, as a module, so that it imports the tests.support package).

Reported per run: crash points, images (and distinct images), images with a
torn sector, acknowledged commits lost, states the workload never had,
unopenable images (and how many of them have a torn sector).

Also:
  --skip-sweep  re-runs a short workload once per msync with that msync
                turned into a no-op (mp_io_hooks.skip_msync_at), and says
                whether the harness noticed: the proof that it can fail;
  --garble      measures how many files open once the first 512-byte sector
                of page 0 (the superblock's) is garbage.

Usage:
  python -m scripts.powerloss_sim                       # everything, default sizes
  python -m scripts.powerloss_sim --modes compat --page-sizes 1024 --workloads standard
  python -m scripts.powerloss_sim --json out.json
Exit status 1 when an acknowledged commit is lost, a state is unknown, or an
image cannot be opened.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from mappedpages import CorruptFileError, Pager

try:
    from tests.support.geometry import layout
    from tests.support.powerloss import Image, ImageChecker, check_recording, record_workload
    from tests.support.workloads import (
        WORKLOADS,
        Op,
        _store,
        random_workload,
        short_workload,
        standard_workload,
    )
except ImportError:
    sys.exit(
        "powerloss_sim: run it from the repository root as a module, "
        "`python -m scripts.powerloss_sim` (the model is the tests.support package)"
    )


def near_cap_workload(page_size: int) -> list[Op]:
    """Grow near v0.2's page cap, commit there, then cross it and commit more.

    Crossing the cap is the upgrade to the extended layout; the commits after
    it (protected and regular) run in that layout.
    """
    cap = layout(page_size).v02_max_pages
    ops = [
        Op("alloc_bulk", f"alloc_bulk to near the v0.2 cap ({cap} pages)",
             _store("fill", lambda p: p.alloc_bulk(cap - 3 - 40))),
    ]
    cross = [
        Op("alloc_bulk", "alloc_bulk(60): across the cap, the upgrade",
             _store("cross", lambda p: p.alloc_bulk(60))),
        Op("free_bulk", "free_bulk in both chunks",
             lambda p, c: p.free_bulk([c["fill"][5], c["cross"][-1]])),
    ]
    return ops + short_workload() + cross + short_workload()


def workload(name: str, page_size: int) -> list[Op]:
    """The named workload's operations."""
    if name == "near_cap":
        return near_cap_workload(page_size)
    if name.startswith("random:"):
        return random_workload(int(name.split(":", 1)[1]))
    return WORKLOADS[name]()


def scratch() -> str | None:
    """A memory file system for the images, when there is one."""
    return "/dev/shm" if os.access("/dev/shm", os.W_OK) else None


def run_one(mode: str, page_size: int, wl: str, exhaustive_pages: int, samples: int,
            seed: int) -> dict[str, Any]:
    """Record one workload and judge every crash image of it."""
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="mp-sim-", dir=scratch()) as tmp:
        rec = record_workload(Path(tmp) / "work", workload(wl, page_size), page_size,
                                mode=mode)
        checker = ImageChecker(Path(tmp) / "img", reopen=True)
        # 1024-byte pages: every sector combination (2 sectors: 4 ways per page).
        # 4096: first-k-sectors-new tears (9 ways per page); a point whose
        # combinations exceed 4096 is sampled (--samples images) instead.
        both = page_size <= 1024
        cap = 1 << 16 if page_size <= 1024 else 1 << 12
        tally = check_recording(rec, checker, exhaustive_pages, samples, seed,
                                  both_ways=both, max_exhaustive=cap)
    return {
        "mode": mode, "page_size": page_size, "workload": wl,
        "ops": len(rec.ops), "barriers": {k: v for k, v in rec.barrier_counts.items()
                                          if k in ("msync", "fsync")},
        "points": tally.points, "images": tally.images, "distinct": tally.distinct,
        "torn": tally.torn, "ok": tally.ok, "warned": tally.warned, "lost": tally.lost,
        "unknown": tally.unknown, "unopenable": tally.unopenable,
        "unopenable_torn": tally.unopenable_torn, "seconds": round(time.monotonic() - t0, 1),
        "failures": [f"{v.category}: {v.image.describe()} -- {v.detail}"
                     for v in tally.failures[:8]],
    }


def skip_sweep(page_size: int = 4096, mode: str = "compat") -> dict[str, Any]:
    """Turn each msync of the short workload into a no-op in turn; see if the harness notices."""
    ops = short_workload()
    out: dict[str, Any] = {"page_size": page_size, "mode": mode, "runs": []}
    with tempfile.TemporaryDirectory(prefix="mp-skip-", dir=scratch()) as tmp:
        clean = record_workload(Path(tmp) / "clean", ops, page_size, mode=mode)
        total = clean.barrier_counts["msync"]
        ranges = [pt.label.split("before msync ")[1] for pt in clean.points
                  if "before msync" in pt.label]
        for n in range(1, total + 1):
            op = next(i + 1 for i, (a, b) in enumerate(clean.op_msyncs) if a <= n <= b)
            rec = record_workload(Path(tmp) / f"s{n}", ops, page_size, mode=mode,
                                    skip_msync_at=n)
            tally = check_recording(rec, ImageChecker(Path(tmp) / f"i{n}"), 4, 16, n,
                                      both_ways=False, max_exhaustive=1 << 10)
            out["runs"].append({"msync": n, "op": op, "op_label": ops[op - 1].label,
                                "range": ranges[n - 1] if n <= len(ranges) else "?",
                                "lost": tally.lost, "unknown": tally.unknown,
                                "unopenable": tally.unopenable, "caught": tally.bad > 0})
    return out


def garble(page_size: int, trials: int = 8) -> dict[str, Any]:
    """Garbage in page 0's first sector, at the end of every operation of the workload."""
    rnd = random.Random(1)
    counts = {"images": 0, "opened": 0, "opened_right_state": 0, "corrupt": 0, "other": 0}
    by_class: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="mp-garble-", dir=scratch()) as tmp:
        rec = record_workload(Path(tmp) / "work", standard_workload(), page_size)
        checker = ImageChecker(Path(tmp) / "img")
        path = Path(tmp) / "g.mpp"
        for pt in rec.points:
            if not pt.label.endswith(": returned"):
                continue
            pages = list(pt.durable)
            for i, data in pt.dirty.items():
                while len(pages) <= i:
                    pages.append(bytes(page_size))
                pages[i] = data
            fills = [bytes(512), b"\xff" * 512] + [rnd.randbytes(512) for _ in range(trials)]
            for fill in fills:
                pages0 = fill + pages[0][512:]
                data = (pages0 + b"".join(pages[1:]))[: pt.current_size]
                counts["images"] += 1
                path.write_bytes(data)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    try:
                        p = Pager.open(path)
                    except CorruptFileError as exc:
                        counts["corrupt"] += 1
                        by_class[type(exc).__name__] = by_class.get(type(exc).__name__, 0) + 1
                        continue
                    except Exception:  # noqa: BLE001
                        counts["other"] += 1
                        continue
                p.close()
                counts["opened"] += 1
                img = Image(pt, data, ((0, "garbled"),), pt.current_size)
                if checker.judge(img, rec.states).category == "ok":
                    counts["opened_right_state"] += 1
    counts["errors"] = by_class  # type: ignore[assignment]
    counts["page_size"] = page_size
    return counts


def table(results: list[dict[str, Any]]) -> str:
    """The runs as a Markdown table."""
    head = ("| mode | page size | workload | crash points | images (distinct) | torn-sector "
            "images | acknowledged commits lost | unknown states | unopenable (torn) | s |\n"
            "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    rows = [head]
    for r in results:
        rows.append(
            f"| {r['mode']} | {r['page_size']} | {r['workload']} | {r['points']} | "
            f"{r['images']} ({r['distinct']}) | {r['torn']} | {r['lost']} | {r['unknown']} | "
            f"{r['unopenable']} ({r['unopenable_torn']}) | {r['seconds']} |")
    return "\n".join(rows)


def main() -> int:
    """Run what the command line asks; exit 1 on any finding."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--modes", default="compat,fast,none")
    ap.add_argument("--page-sizes", default="1024,4096")
    ap.add_argument("--workloads",
                    default="standard,near_cap," + ",".join(f"random:{i}" for i in range(1, 7)),
                    help="standard, short, near_cap (1024-byte pages only), random:SEED")
    ap.add_argument("--exhaustive-pages", type=int, default=4)
    ap.add_argument("--samples", type=int, default=256,
                    help="random images per point above the exhaustive limit")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--skip-sweep", action="store_true")
    ap.add_argument("--garble", action="store_true")
    ap.add_argument("--only-extras", action="store_true",
                    help="run only --skip-sweep/--garble, not the simulation")
    ap.add_argument("--json", help="write every figure to this file")
    args = ap.parse_args()

    results: list[dict[str, Any]] = []
    jobs = []
    if not args.only_extras:
        for mode in args.modes.split(","):
            for ps in (int(x) for x in args.page_sizes.split(",")):
                for wl in args.workloads.split(","):
                    if wl == "near_cap" and ps > 1024:
                        continue  # 127 MiB files at 4096: the 1024 run covers the regime
                    jobs.append((mode, ps, wl, args.exhaustive_pages, args.samples, args.seed))
    with ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        futures = [pool.submit(run_one, *j) for j in jobs]
        sweep = pool.submit(skip_sweep) if args.skip_sweep else None
        garbles = [pool.submit(garble, ps) for ps in (1024, 4096)] if args.garble else []
        for f in futures:
            r = f.result()
            results.append(r)
            print(f"{r['mode']:6} {r['page_size']:5} {r['workload']:9} {r['points']:4} points "
                  f"{r['images']:8} images ({r['torn']} torn): lost {r['lost']}, unknown "
                  f"{r['unknown']}, unopenable {r['unopenable']} ({r['unopenable_torn']} torn) "
                  f"[{r['seconds']} s]", flush=True)
            for line in r["failures"][:3]:
                print("    " + line[:400])
        report: dict[str, Any] = {"runs": results}
        print()
        print(table(results))
        if sweep is not None:
            s = sweep.result()
            report["skip_sweep"] = s
            caught = sum(r["caught"] for r in s["runs"])
            print(f"\nskipped-flush sweep ({s['mode']}, {s['page_size']}-byte pages, short "
                  f"workload): {caught} of {len(s['runs'])} single-msync omissions caught")
            for r in s["runs"]:
                print(f"  msync {r['msync']:3} {r['range']:>16} (op {r['op']}: {r['op_label']}): "
                      f"{'caught' if r['caught'] else 'not caught'} (lost {r['lost']}, "
                      f"unknown {r['unknown']}, unopenable {r['unopenable']})")
        for g in garbles:
            gr = g.result()
            report.setdefault("garble", []).append(gr)
            print(f"\ngarbled first sector of page 0 ({gr['page_size']}-byte pages): "
                  f"{gr['images']} images, {gr['opened']} opened ({gr['opened_right_state']} "
                  f"with the right state), {gr['corrupt']} refused {gr['errors']}, "
                  f"{gr['other']} other errors")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    bad = sum(r.get("lost", 0) + r.get("unknown", 0) + r.get("unopenable", 0) for r in results)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
