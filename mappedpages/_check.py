"""``check`` and ``check --repair``: what is wrong with a file, and a writer's open to mend it.

Built on ``_inspect`` (the file as the library reads it): ``check_file``
gathers every problem a reader's open reports or ``read_layout`` finds,
``salvage_preview`` says what a salvaging open would discard, and
``repair_file`` opens the file as a writer (which rewrites page 0 and commits
the directory repairs) and says what that changed. Nothing here prints.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

from mappedpages._errors import MappedPageError, RecoveryWarning
from mappedpages._inspect import (
    _CRC_RESIDUE,
    _MAX_LOG2,
    _MIN_LOG2,
    _REPAIRABLE_FLAGS,
    _RESERVED,
    EXIT_PROBLEMS,
    CliError,
    Damaged,
    Superblock,
    _display,
    _layout_name,
    open_reader,
    read_layout,
    read_superblock,
)
from mappedpages._pager import Pager
from mappedpages._types import ProtectedPageId


@dataclass
class CheckResult:
    """The problems ``check`` found, and whether a writer's open would repair any."""

    problems: list[str]
    repairable: bool
    summary: list[str]
    notes: list[str] = field(default_factory=list)
    # What a salvaging open would discard, when only salvage opens the file.
    salvage: list[str] = field(default_factory=list)


def check_file(path: str) -> CheckResult:
    """Validate a file as far as the library can; raise CliError(2) if it cannot be read.

    A file that the library refuses to open (damaged metadata, superblock,
    directory) gives one problem; otherwise every recovery open made, page 0
    naming a copy other than the one in use, protected pages whose content
    fails its CRC, and pages claimed twice or named past the end.
    """
    sb = read_superblock(path)
    log2 = sb.page_size_log2
    size = f"page size {1 << log2}" if _MIN_LOG2 <= log2 <= _MAX_LOG2 else "page size unknown"
    summary = [f"format version {sb.version_text}, {size} (as page 0 says)"]
    try:
        reader, found = open_reader(path, sb)
    except Damaged as exc:
        discards = salvage_preview(path, sb) if exc.salvageable else []
        return CheckResult([exc.detail], bool(discards), summary, salvage=discards)
    problems = list(found)
    try:
        report = reader._open_report
        layout = read_layout(reader, sb.extended_always)
        flags = set(report.get("flags", ()))
        chosen = report.get("chosen_copy", "A")
        gens = report.get("generation", {})
        other = "B" if chosen == "A" else "A"
        other_valid = report.get("problem", {}).get(other) is None
        if "selector_stale" in flags:
            detail = (
                "; the Rust crate would read the older state (normal after a crash between "
                "the two flushes of a commit, or while a writer in 'fast' durability mode "
                "has the file open)"
                if other_valid
                else ""
            )
            problems.append(
                f"page 0 names metadata copy {other}, not the copy in use "
                f"({chosen}, generation {gens.get(chosen)}){detail}"
            )
        if "meta_checksum_mismatch" in flags:
            problems.append(
                f"page 0's meta_checksum is {sb.meta_checksum:#010x}, not {_CRC_RESIDUE:#010x} "
                "(the value every valid metadata copy gives); the Rust crate would not "
                "accept the copy page 0 names"
            )
        bad_crc = []
        for pid, (a, b) in layout.protected.items():
            if not reader.verify_protected(ProtectedPageId(pid)):
                bad_crc.append(pid)
                problems.append(
                    f"protected page {pid} (backing pages {a} and {b}): its committed content "
                    "does not match the CRC recorded at its last commit"
                )
        problems.extend(layout.conflicts)
        repairable = bool(flags & _REPAIRABLE_FLAGS)
        notes = []
        if f"meta_{other.lower()}_damaged" in flags:
            notes.append(
                f"metadata copy {other} is the inactive copy: the next commit by a writer "
                "overwrites it (until then there is no older state to fall back to)"
            )
        summary = [
            f"format version {sb.version_text} "
            f"({_layout_name(layout.format_minor, layout.extended, layout.always)}), page size "
            f"{layout.page_size}, {layout.page_count} pages, {layout.free_count} free",
            f"metadata: copy A generation {gens.get('A')}, copy B generation {gens.get('B')}; "
            f"copy {chosen} in use",
            f"directory: {len(layout.dir_blocks)} block(s); protected pages: "
            f"{len(layout.protected)}"
            + (
                f", {len(layout.protected) - len(bad_crc)} with a matching CRC"
                if layout.protected
                else ""
            ),
        ]
        if layout.extended and layout.chunks > 1:
            past = layout.chunks - 1
            summary.insert(
                2,
                f"free map: {layout.chunks} chunks of {layout.chunk_pages} pages; chunk 0 in "
                f"the metadata copies, {past} more with {layout.layout_pages - _RESERVED} free-map "
                "and directory-index pages",
            )
    finally:
        reader.close()
    return CheckResult(problems, repairable, summary, notes)


def salvage_discards(report: dict[str, Any]) -> list[str]:
    """What a salvaging open discarded, from its report, one line each."""
    done = []
    flags = set(report.get("flags", ()))
    if "cut_rolled_back" in flags:
        chosen = report.get("chosen_copy", "A")
        gen = report.get("generation", {}).get(chosen)
        done.append(
            f"generation {report['cut_generation']} (the newest commit, counting "
            f"{report['cut_pages']} pages; the file is {report['file_bytes']} bytes): every "
            f"allocation and free it made; the file is rolled back to metadata copy {chosen} "
            f"at generation {gen}"
        )
    if "salvage_dropped" in flags:
        done.append(
            f"{report['salvaged_blocks']} protected-page directory block(s) with no copy inside "
            "the file, and every protected page they held"
        )
    return done


def salvage_preview(path: str, sb: Superblock) -> list[str]:
    """What ``check --repair`` would discard: a salvaging reader's report (nothing written)."""
    try:
        reader, _ = open_reader(path, sb, salvage=True)
    except CliError:
        return []
    try:
        return salvage_discards(reader._open_report)
    finally:
        reader.close()



def repair_file(path: str, salvage: bool = False) -> list[str]:
    """Open ``path`` as a writer, which repairs page 0 and the directory; say what it did.

    With ``salvage``, the open may discard acknowledged state it cannot keep;
    each thing discarded is a line starting with ``discarded:``.
    """
    with warnings.catch_warnings():
        # What open found was reported by the check before; here only what it changed counts.
        warnings.simplefilter("ignore", RecoveryWarning)
        try:
            pager = Pager.open(path, salvage=salvage)
        except OSError as exc:
            if isinstance(exc, BlockingIOError):
                raise CliError(
                    EXIT_PROBLEMS,
                    f"{_display(path)}: cannot repair: another writer has the file open",
                ) from None
            raise CliError(
                EXIT_PROBLEMS, f"{_display(path)}: cannot repair: {exc.strerror or exc}"
            ) from None
        except MappedPageError as exc:
            raise CliError(EXIT_PROBLEMS, f"{_display(path)}: cannot repair: {exc}") from None
    try:
        report = pager._open_report
    finally:
        pager.close()
    flags = set(report.get("flags", ()))
    done = [f"discarded: {line}" for line in salvage_discards(report)]
    if report.get("kept_protected"):
        done.append(
            f"{report['kept_protected']} protected page(s) newer than the metadata copy in "
            "use kept: their pages marked allocated again"
        )
    if report.get("dir_fallbacks"):
        done.append(
            f"{report['dir_fallbacks']} damaged directory page(s) rewritten from their good copy"
        )
    if report.get("dropped_entries"):
        done.append(
            f"{report['dropped_entries']} directory entr(y/ies) that did not match the file "
            "removed"
        )
    if report.get("dropped_blocks"):
        done.append(f"{report['dropped_blocks']} unfinished directory block(s) removed")
    if "page0_rewritten" in flags:
        chosen = report.get("chosen_copy", "A")
        gen = report.get("generation", {}).get(chosen)
        done.append(
            f"page 0 rewritten: it names metadata copy {chosen} (generation {gen}), "
            "with a sealed directory index"
        )
    return done

