"""The shape of the code: limits the project keeps, checked on every run.

Python: no module of the installed package is over 600 lines (tooling lives
beside the package, in benchmarks/ and scripts/, and a module that grows past
the limit is split by concept), and the layout's arithmetic lives in C only:
Python asks the core's exports (``mp_layout_get`` and friends) for the chunk
geometry and page placement instead of spelling out ``(page_size - 28) * 8``.

C: no file of the core over 700 lines and no function over 80, measured from the
source: a function runs from its signature's first line to the "}" at column 0
that closes the body opened by a "{" at column 0.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "mappedpages"
MAX_MODULE_LINES = 600

# The v0.2 bitmap's capacity spelled out by hand: (page_size - 28) * 8, or its
# byte count (page_size - 28) used as a bitmap length.
_LAYOUT_ARITHMETIC = re.compile(r"-\s*28\s*\)\s*(\*\s*8|//)")


def _python_files() -> list[Path]:
    """Every Python file of the package, the tests, the benchmarks and the scripts."""
    found: list[Path] = []
    for folder in ("mappedpages", "tests", "benchmarks", "scripts"):
        found += sorted((ROOT / folder).rglob("*.py"))
    # test_layout.py checks the core's export against FORMAT.md's formulas: a
    # second statement of the rule is its point.
    skip = {Path(__file__).resolve(), ROOT / "tests" / "test_layout.py"}
    return [p for p in found if p not in skip]


def test_python_module_sizes():
    modules = sorted(PACKAGE.glob("*.py"))
    assert len(modules) > 5, "the package's modules were not found"
    sizes = {p.name: len(p.read_text(encoding="utf-8").splitlines()) for p in modules}
    over = {name: n for name, n in sizes.items() if n > MAX_MODULE_LINES}
    assert not over, f"modules over {MAX_MODULE_LINES} lines: {over}"


def test_python_takes_the_layout_from_the_core():
    files = _python_files()
    assert any(p.name == "_inspect.py" for p in files)
    hits = [
        f"{p.relative_to(ROOT)}:{i}: {line.strip()}"
        for p in files
        for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
        if _LAYOUT_ARITHMETIC.search(line)
    ]
    assert not hits, "layout arithmetic outside the C core:\n" + "\n".join(hits)


# ---- the C core ----

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
