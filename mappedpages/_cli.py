"""The ``mappedpages`` command line (``python -m mappedpages``, or the ``mappedpages`` script).

Commands:

``info FILE``
    Format version and layout (the Rust crate's v0.2, or this library's
    extended layout 0.3), page size, page count, free count, both metadata
    copies (generation, valid or not, which one is in use), the free-map
    chunks of an extended file, directory blocks, protected pages, the largest
    free run and fragmentation. ``--json`` prints the same as one JSON object.
``check FILE``
    Opens the file as a reader and reports every problem the library finds:
    metadata copies, page 0, directory pages, protected pages whose content no
    longer matches its recorded CRC, pages claimed twice or named past the end.
    Exit status 0 when clean, 1 when problems were found, 2 when the file
    cannot be read at all (missing, not a pager file, no permission).
    ``--repair`` then opens the file as a writer, which rewrites page 0 to
    name the state in use and commits the directory repairs open made, and
    nothing more. A file that open refuses because keeping it would need
    acknowledged state it no longer has (a file cut shorter than its newest
    commit, a directory block with no copy inside the file) is opened with
    ``salvage=True`` instead, and every thing that discards is printed.
``map FILE``
    One cell per page (or per run of pages in a large file), coloured by what
    the page is: reserved, metadata, free map and directory index (the
    extended layout's pages), directory, protected backing, allocated or free.
    A cell for a run of regular pages shows how full the run is (how many of
    its pages are allocated or protected backing), not its majority kind.
    In the terminal with block characters (and colour when the terminal has
    it), or as an SVG picture with ``--svg OUT.svg`` (OUT must not be empty).
``--version``
    Prints ``mappedpages`` and the library's version, and exits 0.
``demo``
    Creates a pager file in a temporary directory, allocates, writes, frees,
    reopens and verifies.
``bench``
    Runs the benchmark suite, ``benchmarks/suite.py`` of a source checkout (an
    installed wheel has no ``benchmarks/`` and says so).
``backup SRC DST`` and ``compact FILE``
    A consistent, sparse copy of a live file; trim and hole punching of a file
    no writer holds (mappedpages/_cli_space.py).

This module is the argument parsing and the rendering of text; what a file
holds comes from ``_inspect`` (built on the library's own API and layout
functions), ``check`` and ``--repair`` from ``_check``, the pictures from
``_render``. FORMAT.md describes both layouts.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
import zlib
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, TextIO

from mappedpages import __version__, _cli_space
from mappedpages._check import CheckResult, check_file, repair_file
from mappedpages._errors import MappedPageError
from mappedpages._inspect import (
    ALLOCATED,
    DIRECTORY,
    DIRINDEX,
    EXIT_OK,
    EXIT_PROBLEMS,
    EXIT_UNREADABLE,
    FREE,
    FREEMAP,
    KIND_NAMES,
    METADATA,
    PROTECTED,
    RESERVED,
    CliError,
    Layout,
    Superblock,
    _display,
    info_data,
    open_reader,
    read_layout,
    read_superblock,
)
from mappedpages._pager import Pager
from mappedpages._readers import reader_table_rows
from mappedpages._readonly import ReadOnlyPager
from mappedpages._render import (
    _GLYPHS,
    _SVG_COLOURS,
    _glyphs,
    _mix,
    _use_colour,
    cells_of,
    fill_level,
    render_svg,
    render_text,
)

# The names the command's tests and callers reach through this module.
__all__ = [
    "ALLOCATED", "DIRECTORY", "DIRINDEX", "FREE", "FREEMAP", "KIND_NAMES", "METADATA",
    "PROTECTED", "RESERVED", "CheckResult", "CliError", "Layout", "ReadOnlyPager",
    "Superblock", "_GLYPHS", "_SVG_COLOURS", "_mix", "build_parser", "cells_of",
    "check_file", "demo", "fill_level", "info_data", "main", "read_layout",
    "read_superblock", "render_svg", "render_text", "repair_file",
]

PROG = "mappedpages"
_MAX_LISTED = 8  # chunks named one by one in `info`


# ---------------------------------------------------------------- info


def _size_text(n_bytes: int) -> str:
    """A byte count in the largest binary unit it fills: ``16.0 TiB``."""
    for shift, unit in ((40, "TiB"), (30, "GiB"), (20, "MiB"), (10, "KiB")):
        if n_bytes >= 1 << shift:
            return f"{n_bytes / (1 << shift):.1f} {unit}"
    return f"{n_bytes} bytes"


def _format_text(data: dict[str, Any]) -> str:
    """``info``'s format row: the layout, what reads it, and the version bytes."""
    version = f"version bytes {data['format_version']}"
    if data["format_layout"] != "0.3":
        return f"mappedpages v0.2 layout (the Rust crate's); {version}"
    if data["extended_from_creation"]:
        return (
            "extended layout 0.3, since its creation (at every size; the Rust crate refuses "
            f"it); {version}, mark 'EXA'"
        )
    if data["extended"]:
        return (
            f"extended layout 0.3 (past v0.2's cap; the Rust crate refuses it); "
            f"{version}, mark 'EXT'"
        )
    return (
        "extended layout 0.3, still within v0.2's cap (an upgrade cut short: its pages are "
        f"read as v0.2's; the Rust crate refuses it); {version}, mark 'EXT'"
    )


def _ids_text(ids: list[int], limit: int = 16) -> str:
    shown = ", ".join(str(i) for i in ids[:limit])
    return shown + (f", ... ({len(ids) - limit} more)" if len(ids) > limit else "")


def _print_info(data: dict[str, Any], out: TextIO) -> None:
    rows: list[tuple[str, str]] = []
    ps = data["page_size"]
    rows.append(("file", _display(data["path"])))
    rows.append(("format", _format_text(data)))
    extra = data["file_size"] - data["page_count"] * ps
    size = f"{data['file_size']} bytes"
    if extra > 0:
        size += f" ({extra} bytes past the last page: growth cut short, reused by the next)"
    rows.append(("file size", size))
    rows.append(("page size", f"{ps} bytes"))
    counts = data["counts"]
    layout_kinds = {KIND_NAMES[FREEMAP], KIND_NAMES[DIRINDEX]}
    shown = [n for n in KIND_NAMES if counts[n] or n not in layout_kinds or data["extended"]]
    rows.append(
        (
            "pages",
            f"{data['page_count']}: " + ", ".join(f"{counts[name]} {name}" for name in shown),
        )
    )
    rows.append(("free pages", str(data["free_count"])))
    chunk = data["chunk_pages"]
    capacity = (
        f"{data['max_pages']} pages ({_size_text(data['max_pages'] * ps)}): the address range "
        "a pager reserves for the file here"
    )
    if not data["extended"]:
        move = (
            "finishes its move to the extended layout"
            if data["format_layout"] == "0.3"
            else "moves to the extended layout 0.3"
        )
        capacity += (
            f"; the v0.2 layout holds at most {chunk} pages: a file that grows past that {move}"
        )
    rows.append(("capacity", capacity))
    for copy in ("A", "B"):
        m = data["metadata"][copy]
        state = "valid" if m["valid"] else f"DAMAGED: {m['problem']}"
        use = ", in use (the newest valid copy)" if m["in_use"] else ""
        rows.append((f"metadata {copy}", f"page {m['page']}, generation {m['generation']}, "
                     f"{state}{use}"))
    if data["extended"]:
        maps = data["free_map_pages"]
        listed = "; ".join(
            f"chunk {i} on pages {a} and {b}" for i, (a, b) in enumerate(maps[:_MAX_LISTED], 1)
        )
        more = f"; ... ({len(maps) - _MAX_LISTED} more)" if len(maps) > _MAX_LISTED else ""
        chunks = f"{data['chunks']} chunk{'s' if data['chunks'] != 1 else ''}"
        rows.append(
            (
                "free map",
                f"{chunks} of {chunk} pages: chunk 0's bitmap (pages 0-{chunk - 1}) in the "
                "metadata copies" + (f"; {listed}{more}" if maps else ""),
            )
        )
        index = data["directory_index_pages"]
        listed = "; ".join(
            f"index page {k} on pages {a} and {b}"
            for k, (a, b) in enumerate(index[:_MAX_LISTED])
        )
        more = f"; ... ({len(index) - _MAX_LISTED} more)" if len(index) > _MAX_LISTED else ""
        rows.append(
            (
                "directory index",
                f"{len(index)} page pair(s), "
                + (
                    "index page 0 on pages 6-7 since the file's creation, page k in chunk k + 1: "
                    if data["extended_from_creation"]
                    else "one per chunk past the first: "
                )
                + f"{listed}{more}; the index in page 0 is not read",
            )
        )
        rows.append(
            (
                "page 0 selects",
                f"copy {data['page0_selects']} (not kept current in the extended layout: "
                "the copy in use is the valid one with the newest generation)",
            )
        )
    else:
        rows.append(("free map", f"in the metadata copies (one bitmap of up to {chunk} pages)"))
        rows.append(("page 0 selects", f"copy {data['page0_selects']}"))
    where = (
        f"in the root pages {data['root_pages'][0]} and {data['root_pages'][1]}"
        if data["root_pages"]
        else "in the metadata copies" if not data["extended"] else "none kept (all 0)"
    )
    rows.append(("roots", f"{', '.join(str(r) for r in data['roots'])} ({where})"))
    blocks = data["directory_blocks"]
    if blocks:
        listed = "; ".join(f"block {i} on pages {a} and {b}" for i, (a, b) in enumerate(blocks))
        rows.append(("directory", f"{len(blocks)} block(s): {listed}"))
    else:
        rows.append(("directory", "no blocks"))
    prot = sorted(int(k) for k in data["protected_pages"])
    listed_ids = f": ids {_ids_text(prot)}" if prot else ""
    rows.append(("protected", f"{len(prot)} page(s){listed_ids}"))
    run = data["largest_free_run"]
    if run["length"]:
        last = run["first"] + run["length"] - 1
        rows.append(
            (
                "free runs",
                f"{data['free_runs']}; largest {run['length']} page(s), ids {run['first']}-{last}",
            )
        )
    else:
        rows.append(("free runs", "none (no free page)"))
    rows.append(
        (
            "fragmentation",
            f"{data['fragmentation'] * 100:.1f}% (1 - largest free run / free pages)",
        )
    )
    rows.extend(reader_table_rows(data))
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}", file=out)
    for note in data["recovered_on_open"]:
        print(f"recovered on open: {note}", file=out)
    for conflict in data["conflicts"]:
        print(f"conflict: {conflict}", file=out)


def cmd_info(args: argparse.Namespace) -> int:
    """``info FILE``: print what the file holds."""
    data = info_data(args.file)
    if args.json:
        json.dump(data, sys.stdout, indent=2)
        print()
    else:
        _print_info(data, sys.stdout)
    return EXIT_OK


def _report_check(path: str, result: CheckResult, out: TextIO) -> None:
    print(f"{_display(path)}:", file=out)
    for line in result.summary:
        print(f"  {line}", file=out)
    for problem in result.problems:
        print(f"problem: {problem}", file=out)
    for note in result.notes:
        print(f"note: {note}", file=out)
    if result.problems:
        print(f"{len(result.problems)} problem(s) found", file=out)
    else:
        print("ok: no problems found", file=out)



def cmd_check(args: argparse.Namespace) -> int:
    """``check FILE [--repair]``: report problems; exit 0 clean, 1 problems, 2 unreadable."""
    result = check_file(args.file)
    _report_check(args.file, result, sys.stdout)
    if not result.problems:
        return EXIT_OK
    if not args.repair:
        if result.salvage:
            print("run `mappedpages check --repair` to open with salvage, which discards "
                  "acknowledged state:", file=sys.stdout)
            for line in result.salvage:
                print(f"  would discard: {line}", file=sys.stdout)
        elif result.repairable:
            print("run `mappedpages check --repair` to rewrite page 0 as a writer's open "
                  "would", file=sys.stdout)
        return EXIT_PROBLEMS
    if not result.repairable:
        print("repair: nothing here that a writer's open repairs; the file is unchanged")
        return EXIT_PROBLEMS
    done = repair_file(args.file, salvage=bool(result.salvage))
    for line in done:
        if line.startswith("discarded: "):
            print(line)
        else:
            print(f"repaired: {line}")
    if not done:
        print("repair: the writer's open found nothing to change")
    after = check_file(args.file)
    print("after repair:")
    _report_check(args.file, after, sys.stdout)
    return EXIT_PROBLEMS if after.problems else EXIT_OK


# ---------------------------------------------------------------- map



def cmd_map(args: argparse.Namespace) -> int:
    """``map FILE [--svg OUT]``: picture the file in the terminal or as SVG."""
    sb = read_superblock(args.file)
    reader, notes = open_reader(args.file, sb)
    try:
        layout = read_layout(reader, sb.extended_always)
    finally:
        reader.close()
    for note in notes:
        print(f"{PROG}: recovered on open: {note}", file=sys.stderr)
    if args.svg is not None:
        svg = render_svg(args.file, layout, max_cells=args.cells or 4096)
        try:
            with open(args.svg, "w", encoding="utf-8") as fh:
                fh.write(svg)
        except OSError as exc:
            raise CliError(
                EXIT_UNREADABLE, f"{_display(args.svg)}: cannot write: {exc.strerror or exc}"
            ) from None
        cells, per = cells_of(layout, args.cells or 4096)
        print(f"wrote {_display(args.svg)}: {len(cells)} cells, {per} page(s) per cell")
        return EXIT_OK
    columns = args.width
    if columns is None:
        term = shutil.get_terminal_size((80, 24)).columns
        columns = max(8, min(64, term - len(str(layout.page_count)) - 2))
    text = render_text(
        args.file,
        layout,
        columns=columns,
        max_cells=args.cells or columns * 32,
        colour=_use_colour(args.color, sys.stdout),
        glyphs=_glyphs(sys.stdout, args.ascii),
    )
    sys.stdout.write(text)
    return EXIT_OK


# ---------------------------------------------------------------- demo


def _pattern(page_id: int, size: int) -> bytes:
    return bytes((page_id * 31 + i) % 251 for i in range(size))


def demo(directory: Path | None = None, page_size: int = 4096) -> int:
    """Run the demo in ``directory`` (a fresh temporary one by default)."""
    with tempfile.TemporaryDirectory(prefix="mappedpages-demo-") as tmp:
        path = (directory or Path(tmp)) / "demo.mpp"
        print(f"mappedpages demo: {path}")
        t0 = time.perf_counter()
        with Pager.create(path, page_size=page_size) as pager:
            print(f"created: page_size={pager.page_size} pages={pager.page_count} "
                  f"free={pager.free_page_count}")
            ids = [pager.alloc() for _ in range(50)]
            print(f"alloc x50 (one durable commit each): ids {ids[0]}..{ids[-1]}, "
                  f"file grew to {pager.page_count} pages")
            for pid in ids:
                pager.page(pid)[:] = _pattern(pid, pager.page_size)
            bulk = pager.alloc_bulk(100)
            print(f"alloc_bulk(100) in one commit: ids {bulk[0]}..{bulk[-1]}, "
                  f"pages={pager.page_count}")
            freed = ids[::5]
            for pid in freed:
                pager.free(pid)
            pager.free_bulk(bulk)
            print(f"free x{len(freed)}, free_bulk x{len(bulk)}: free={pager.free_page_count}")
            prot = pager.alloc_protected()
            with pager.write_protected(prot) as writer:
                writer.page[:12] = b"hello, world"
            print(f"protected page {prot} committed atomically")
            pager.sync()
            print("sync(): page data flushed to disk")
            expected = sorted(set(ids) - set(freed))
            checksums = {pid: zlib.crc32(pager.page(pid)) for pid in expected}
        elapsed = time.perf_counter() - t0
        with Pager.open(path) as pager:
            live = list(pager.allocated_pages())
            ok = live == expected and all(
                zlib.crc32(pager.page(pid)) == crc for pid, crc in checksums.items()
            )
            ok = ok and bytes(pager.protected_page(prot)[:12]) == b"hello, world"
            ok = ok and pager.verify_protected(prot)
            print(f"reopened: pages={pager.page_count} free={pager.free_page_count} "
                  f"allocated={len(live)} protected={list(pager.allocated_protected_pages())}")
            print(f"file size: {path.stat().st_size} bytes; work took {elapsed * 1000:.1f} ms")
        print("verified: every surviving page holds its data" if ok else "VERIFY FAILED")
        return 0 if ok else 1


def cmd_demo(args: argparse.Namespace) -> int:
    """``demo``: run the demo."""
    return demo(page_size=args.page_size)



# ---------------------------------------------------------------- bench


# The suite is benchmarks/suite.py of a source checkout, beside the package
# folder; an installed wheel has no benchmarks/, and ``bench`` says so.
BENCH_SUITE = Path(__file__).resolve().parent.parent / "benchmarks" / "suite.py"


def _load_bench_suite(path: Path) -> ModuleType | None:
    """The benchmark suite module at ``path``, or None when there is no such file."""
    if not path.is_file():
        return None
    name = "_mappedpages_bench_suite"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        return None
    module = importlib.util.module_from_spec(spec)
    # Registered before it runs: its dataclasses look their module up by name.
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def cmd_bench(args: argparse.Namespace) -> int:
    """``bench [ARGS...]``: run the checkout's ``benchmarks/suite.py`` with ``ARGS``."""
    try:
        suite = _load_bench_suite(BENCH_SUITE)
    except ImportError as exc:
        print(f"{PROG}: the benchmark suite cannot be loaded: {exc}", file=sys.stderr)
        return EXIT_UNREADABLE
    if suite is None:
        print(
            f"{PROG}: the benchmark suite is not available in this installation: it is "
            f"benchmarks/suite.py of a source checkout, and {_display(str(BENCH_SUITE))} "
            "does not exist",
            file=sys.stderr,
        )
        return EXIT_UNREADABLE
    result = suite.main(list(args.args))
    return result if isinstance(result, int) else EXIT_OK


# ---------------------------------------------------------------- main


def _svg_path(text: str) -> str:
    """``--svg OUT``: a file name, never empty (an empty one is a mistake, not the terminal map)."""
    if not text:
        raise argparse.ArgumentTypeError("needs a file name to write the SVG picture to, not ''")
    return text


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``mappedpages`` command."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Inspect, check and picture mappedpages files; run the demo.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("info", help="format, page counts, metadata copies, directory, free space")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser(
        "check",
        help="validate the file; exit 0 clean, 1 problems found, 2 cannot be read",
        description="Validate everything the library can. Exit status 0 when clean, 1 when "
        "problems were found, 2 when the file cannot be read.",
    )
    p.add_argument("file", metavar="FILE")
    p.add_argument(
        "--repair",
        action="store_true",
        help="open as a writer, which rewrites page 0 to name the state in use and commits "
        "the directory repairs open makes; a file open refuses (cut short, a directory block "
        "with no copy in the file) is opened with salvage, printing all it discards",
    )
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("map", help="a picture of the file: in the terminal, or --svg OUT.svg")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--svg", metavar="OUT", type=_svg_path, help="write an SVG picture to OUT")
    p.add_argument(
        "--color",
        "--colour",
        choices=("auto", "always", "never"),
        default="auto",
        help="colour in the terminal (default: when the output is a terminal)",
    )
    p.add_argument("--ascii", action="store_true", help="ASCII letters instead of blocks")
    p.add_argument("--width", type=int, metavar="N", help="cells per line in the terminal")
    p.add_argument(
        "--cells", type=int, metavar="N", help="at most N cells (runs of pages share a cell)"
    )
    p.set_defaults(func=cmd_map)

    p = sub.add_parser("demo", help="run a demo on a real file in a temporary directory")
    p.add_argument("--page-size", type=int, default=4096)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser(
        "bench", help="run the benchmark suite of a source checkout (`bench --help`)"
    )
    p.add_argument("args", nargs=argparse.REMAINDER, help="passed to the benchmark suite")
    p.set_defaults(func=cmd_bench)

    _cli_space.add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m mappedpages`` and the ``mappedpages`` script."""
    raw = sys.argv[1:] if argv is None else list(argv)
    if raw[:1] == ["bench"]:
        # Every argument after `bench`, options and --help included, is the suite's.
        return _run(cmd_bench, argparse.Namespace(args=raw[1:]))
    args = build_parser().parse_args(raw)
    for name in ("width", "cells"):
        value = getattr(args, name, None)
        if value is not None and value < 1:
            print(f"{PROG}: --{name} must be at least 1", file=sys.stderr)
            return EXIT_UNREADABLE
    func: Callable[[argparse.Namespace], int] = args.func
    return _run(func, args)


def _run(func: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run one command; turn every expected failure into one line on stderr."""
    try:
        status = func(args)
        sys.stdout.flush()
        return status
    except CliError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return exc.status
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader of our output went away (`mappedpages map f | head`).
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_PROBLEMS
    except OSError as exc:
        where = f"{_display(str(exc.filename))}: " if exc.filename else ""
        print(f"{PROG}: {where}{exc.strerror or exc}", file=sys.stderr)
        return EXIT_UNREADABLE
    except (MappedPageError, ValueError) as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EXIT_UNREADABLE
