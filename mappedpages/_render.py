"""``map``: a picture of a file, one cell per page or per run of pages.

Renders a ``Layout`` (from ``_inspect``) as block characters for the terminal
(``render_text``) or as an SVG document (``render_svg``). A cell that stands
for a run of regular pages shows how full the run is (``fill_level``), never
its majority kind; a run holding one of the pager's own pages shows that page.
"""

from __future__ import annotations

import math
import os
from typing import TextIO, TypeVar

from mappedpages._inspect import (
    ALLOCATED,
    DIRECTORY,
    DIRINDEX,
    FREE,
    FREEMAP,
    KIND_NAMES,
    METADATA,
    PROTECTED,
    RESERVED,
    Layout,
    _display,
)

# The extended layout's pages take the colours of their v0.2 relatives, lighter:
# a free-map page is a chunk's metadata bitmap, a directory-index page the
# directory's list of blocks.
_SVG_COLOURS = (
    "#4b5563", "#8b5cf6", "#c4b5fd", "#fcd34d", "#f59e0b", "#10b981", "#3b82f6", "#e5e7eb"
)
_ANSI_COLOURS = ("90", "35", "95", "93", "33", "32", "34", "37")
_GLYPHS = ("▚", "▞", "▜", "▙", "▒", "▓", "█", "░")
_ASCII_GLYPHS = ("R", "M", "F", "I", "D", "P", "#", ".")
# A cell that stands for a run of regular pages shows how full the run is: the
# share of its pages in use (allocated or protected backing), from the free
# glyph (none) to the allocated glyph (all). Partly full runs never round to
# either end, so a half-full run looks neither full nor empty, and a run is
# drawn from its own count, not from its majority kind (which turned an
# every-other-page pattern into false stripes).
_FILL_GLYPHS = "░▁▂▃▄▅▆▇█"
_ASCII_FILL_GLYPHS = ".123456789#"  # tenths in use, as digits


def cells_of(layout: Layout, max_cells: int) -> tuple[list[int], int]:
    """Cut the pages into at most ``max_cells`` runs; return each run's kind and the run length.

    A run that holds one of the pager's few pages of its own (reserved,
    metadata, directory, and an extended file's free-map and directory-index
    pages) shows it, so that none disappears in a large file; any other run
    shows the kind of its pages in use (allocated or protected backing,
    whichever it has more of), and free only when none is in use: how many are
    in use is the cell's fill (``cell_fill``). A run that holds a chunk's four
    layout pages shows them as free map.
    """
    n = layout.page_count
    per = max(1, math.ceil(n / max(1, max_cells)))
    kinds = layout.kinds
    if per == 1:
        return list(kinds), 1
    out = []
    for start in range(0, n, per):
        chunk = bytes(kinds[start : start + per])
        rare = next(
            (k for k in (DIRECTORY, FREEMAP, DIRINDEX, RESERVED, METADATA) if k in chunk), None
        )
        if rare is not None:
            out.append(rare)
        elif ALLOCATED in chunk or PROTECTED in chunk:
            out.append(max((ALLOCATED, PROTECTED), key=chunk.count))
        else:
            out.append(FREE)
    return out, per


def cell_fill(layout: Layout, per: int) -> list[tuple[int, int]]:
    """Each run of ``per`` pages (as ``cells_of`` cuts them): (pages in use, pages in the run).

    In use means allocated or protected backing: what a run of regular pages
    is made of besides free pages.
    """
    kinds = layout.kinds
    out = []
    for start in range(0, layout.page_count, per):
        chunk = bytes(kinds[start : start + per])
        out.append((chunk.count(ALLOCATED) + chunk.count(PROTECTED), len(chunk)))
    return out


def fill_level(used: int, total: int, steps: int) -> int:
    """``used`` of ``total`` pages as a level from 0 (none in use) to ``steps`` (all).

    Only an empty run is level 0 and only a full one level ``steps``: a run
    partly in use rounds to a level in between, never to either end.
    """
    if used <= 0 or total <= 0:
        return 0
    if used >= total:
        return steps
    return min(steps - 1, max(1, round(used * steps / total)))


def _shows_fill(kind: int, per: int) -> bool:
    """A cell shows its fill when it stands for a run of regular pages only."""
    return per > 1 and kind in (ALLOCATED, PROTECTED, FREE)


def _map_title(layout: Layout, unit: str) -> str:
    """The line under a map's file name: pages, free pages, layout, what a cell is."""
    extended = (
        f"extended layout, {layout.chunks} chunks of {layout.chunk_pages} pages; "
        if layout.extended
        else ""
    )
    return (
        f"{layout.page_count} pages of {layout.page_size} bytes, {layout.free_count} free; "
        f"{extended}one {unit}"
    )


_Cell = TypeVar("_Cell")


def _rows(cells: list[_Cell], columns: int) -> list[list[_Cell]]:
    return [cells[i : i + columns] for i in range(0, len(cells), columns)]


_FILL_LEGEND = "a run is shaded by how many of its pages are in use: none to all"


def _mix(low: str, high: str, share: float) -> str:
    """The colour ``share`` of the way from ``low`` to ``high`` (both ``#rrggbb``)."""
    a = [int(low[i : i + 2], 16) for i in (1, 3, 5)]
    b = [int(high[i : i + 2], 16) for i in (1, 3, 5)]
    return "#" + "".join(f"{round(x + (y - x) * share):02x}" for x, y in zip(a, b))


def _xml(text: str) -> str:
    return (
        text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")
    )


def render_svg(path: str, layout: Layout, max_cells: int = 4096, columns: int = 64) -> str:
    """The file as an SVG picture: one square per page or run of pages, a legend and counts.

    Squares of one kind next to each other in a row share a tooltip naming
    their pages. A square for a run of regular pages is shaded from the free
    colour to its kind's colour by how many of its pages are in use, and its
    tooltip gives the count. Written by hand: no dependency beyond the
    standard library.
    """
    kinds, per = cells_of(layout, max_cells)
    steps = len(_FILL_GLYPHS) - 1
    fills = cell_fill(layout, per)
    cells: list[tuple[int, int | None]] = [
        (kind, fill_level(*fills[i], steps) if _shows_fill(kind, per) else None)
        for i, kind in enumerate(kinds)
    ]
    columns = max(1, min(columns, len(cells)))
    pitch, size = 12, 10
    label_w = 7 * len(str(layout.page_count)) + 10
    left, top = 16 + label_w, 64
    rows = _rows(cells, columns)
    legend_top = top + len(rows) * pitch + 24
    shown = _display(path)
    name = _xml(shown)
    unit = "page" if per == 1 else f"run of {per} pages"
    subtitle = _map_title(layout, f"square per {unit}")
    width = max(left + columns * pitch + 16, 16 + 9 * len(shown) + 16, 16 + 7 * len(subtitle))
    if per > 1:
        width = max(width, 16 + 10 * (steps + 1) + 8 + 7 * len(_FILL_LEGEND))
    height = legend_top + 20 * (len(KIND_NAMES) + (per > 1)) + 16
    parts = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="Helvetica, Arial, sans-serif" '
        'font-size="12">',
        f"<title>mappedpages map of {name}</title>",
        f'<rect x="0" y="0" width="{width}" height="{height}" fill="#ffffff"/>',
        f'<text x="16" y="24" font-size="15" font-weight="bold">{name}</text>',
        f'<text x="16" y="44" fill="#374151">{_xml(subtitle)}</text>',
        '<g id="pages">',
    ]
    for r, row in enumerate(rows):
        y = top + r * pitch
        parts.append(
            f'<text x="{left - 6}" y="{y + size - 1}" text-anchor="end" font-size="9" '
            f'fill="#6b7280">{r * columns * per}</text>'
        )
        c = 0
        while c < len(row):
            kind, level = row[c]
            end = c
            while end < len(row) and row[end] == (kind, level):
                end += 1
            lo = (r * columns + c) * per
            hi = min((r * columns + end) * per, layout.page_count) - 1
            span = f"page {lo}" if lo == hi else f"pages {lo}-{hi}"
            if level is None:
                colour, what = _SVG_COLOURS[kind], KIND_NAMES[kind]
            else:
                used = layout.kinds.count(ALLOCATED, lo, hi + 1)
                used += layout.kinds.count(PROTECTED, lo, hi + 1)
                colour = _mix(_SVG_COLOURS[FREE], _SVG_COLOURS[kind], level / steps)
                what = f"{used} of {hi + 1 - lo} pages in use"
                if used:
                    what += f" ({KIND_NAMES[kind]})"
            squares = "".join(
                f'<rect x="{left + i * pitch}" y="{y}" width="{size}" height="{size}"/>'
                for i in range(c, end)
            )
            parts.append(f'<g fill="{colour}"><title>{span}: {what}</title>{squares}</g>')
            c = end
    parts.append("</g>")
    parts.append('<g id="legend">')
    for k, label in enumerate(KIND_NAMES):
        y = legend_top + 20 * k
        n = layout.count(k)
        parts.append(
            f'<rect x="16" y="{y}" width="14" height="14" fill="{_SVG_COLOURS[k]}" '
            'stroke="#9ca3af" stroke-width="0.5"/>'
        )
        parts.append(f'<text x="38" y="{y + 11}">{_xml(label)}: {n} page{"" if n == 1 else "s"}'
                     "</text>")
    if per > 1:
        # One swatch per fill level, from free (none in use) to allocated (all).
        y = legend_top + 20 * len(KIND_NAMES)
        for level in range(steps + 1):
            colour = _mix(_SVG_COLOURS[FREE], _SVG_COLOURS[ALLOCATED], level / steps)
            parts.append(
                f'<rect x="{16 + 10 * level}" y="{y}" width="10" height="14" fill="{colour}"/>'
            )
        parts.append(
            f'<text x="{16 + 10 * (steps + 1) + 8}" y="{y + 11}">{_xml(_FILL_LEGEND)}</text>'
        )
    parts.append("</g>")
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def _use_colour(mode: str, stream: TextIO) -> bool:
    if mode == "always":
        return True
    if mode == "never" or os.environ.get("NO_COLOR"):
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty()) and os.environ.get("TERM", "") not in ("", "dumb")


def _glyphs(stream: TextIO, ascii_only: bool) -> tuple[str, ...]:
    if ascii_only:
        return _ASCII_GLYPHS
    try:
        ("".join(_GLYPHS) + _FILL_GLYPHS).encode(getattr(stream, "encoding", None) or "ascii")
    except (UnicodeEncodeError, LookupError):
        return _ASCII_GLYPHS
    return _GLYPHS


def render_text(
    path: str,
    layout: Layout,
    *,
    columns: int = 64,
    max_cells: int = 2048,
    colour: bool = False,
    glyphs: tuple[str, ...] = _GLYPHS,
) -> str:
    """The file as lines of block characters, one per page or run of pages, with a legend.

    A cell for a run of regular pages shows how full the run is (``fill_level``):
    with block characters a bar from ``░`` (none in use) through ``▁``-``▇`` to
    ``█`` (all); with ASCII letters ``.``, a digit for tenths in use, ``#``.
    """
    kinds, per = cells_of(layout, max_cells)
    fill = _ASCII_FILL_GLYPHS if glyphs == _ASCII_GLYPHS else _FILL_GLYPHS
    steps = len(fill) - 1
    fills = cell_fill(layout, per)
    cells = [
        (kind, fill[fill_level(*fills[i], steps)] if _shows_fill(kind, per) else glyphs[kind])
        for i, kind in enumerate(kinds)
    ]
    columns = max(1, min(columns, len(cells)))

    def paint(kind: int, text: str) -> str:
        return f"\x1b[{_ANSI_COLOURS[kind]}m{text}\x1b[0m" if colour else text

    unit = "page" if per == 1 else f"run of {per} pages"
    lines = [f"{_display(path)}: {_map_title(layout, f'cell per {unit}')}"]
    label = len(str(layout.page_count))
    for r, row in enumerate(_rows(cells, columns)):
        text = []
        c = 0
        while c < len(row):
            end = c
            while end < len(row) and row[end][0] == row[c][0]:
                end += 1
            text.append(paint(row[c][0], "".join(g for _, g in row[c:end])))
            c = end
        lines.append(f"{r * columns * per:>{label}} " + "".join(text))
    legend = [
        f"{paint(k, glyphs[k])} {name} {layout.count(k)}" for k, name in enumerate(KIND_NAMES)
    ]
    if per > 1:
        how = "tenths" if fill == _ASCII_FILL_GLYPHS else "partly"
        legend.append(
            f"| runs by pages in use: {fill[0]} none, {fill[1:-1]} {how}, {fill[-1]} all"
        )
    lines.append("  ".join(legend))
    return "\n".join(lines) + "\n"

