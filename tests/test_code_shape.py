"""The C core stays in small pieces: no file over 700 lines, no function over 80.

Measured from the source: a function runs from the line that opens its body
at column 0 ("{") to the line that closes it ("}"), its signature included.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCES = sorted((ROOT / "csrc").glob("*.[ch]"))
MAX_FILE_LINES = 700
MAX_FUNCTION_LINES = 80
_SIGNATURE_START = re.compile(r"^[A-Za-z_][\w \t\*]*\b(\w+)\s*\(")


def functions(path: Path) -> list[tuple[str, int]]:
    """(name, length in lines) of each function defined in a C file."""
    lines = path.read_text().splitlines()
    found = []
    start = None
    name = ""
    for i, line in enumerate(lines):
        m = _SIGNATURE_START.match(line)
        if m and not line.rstrip().endswith(";") and start is None:
            start, name = i, m.group(1)
        elif line.startswith("{") and start is not None:
            body_open = start
            for j in range(i, len(lines)):
                if lines[j].startswith("}"):
                    found.append((name, j - body_open + 1))
                    break
            start = None
        elif line.rstrip().endswith(";") or line.strip() == "":
            start = None
    return found


def test_sources_found() -> None:
    assert any(p.name == "format.c" for p in SOURCES)
    assert any(n == "mp_layout_get" for n, _ in functions(ROOT / "csrc" / "format.c"))


def test_no_file_over_700_lines() -> None:
    long = {p.name: n for p in SOURCES if (n := len(p.read_text().splitlines())) > MAX_FILE_LINES}
    assert not long, long


def test_no_function_over_80_lines() -> None:
    long = {
        f"{p.name}:{name}": n
        for p in SOURCES
        for name, n in functions(p)
        if n > MAX_FUNCTION_LINES
    }
    assert not long, long
