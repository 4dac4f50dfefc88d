"""The shape of the code: limits the project keeps, checked on every run.

Python: no module of the installed package is over 600 lines (tooling lives
beside the package, in benchmarks/ and scripts/, and a module that grows past
the limit is split by concept), and the layout's arithmetic lives in C only:
Python asks the core's exports (``mp_layout_get`` and friends) for the chunk
geometry and page placement instead of spelling out ``(page_size - 28) * 8``.
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
