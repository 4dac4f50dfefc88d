"""The benchmark suite's table (benchmarks/suite.py): the Markdown form the README
takes its table from, and the rows of issue 18's open and sub-page figures, each
beside its target. Run on small sizes: the figures themselves are the suite's."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

SUITE = Path(__file__).resolve().parent.parent / "benchmarks" / "suite.py"


@pytest.fixture(scope="module")
def suite() -> ModuleType:
    sys.path.insert(0, str(SUITE.parent))
    try:
        spec = importlib.util.spec_from_file_location("bench_suite_under_test", SUITE)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(SUITE.parent))


def test_markdown_table_is_the_readme_table(suite: ModuleType, tmp_path: Path) -> None:
    report = suite.Report(load="load average 1.00, 2.00, 3.00 at the start, 1, 1, 1 at the end")
    report.section("durable commits")
    report.add(suite.Row("'compat' durable alloc/free", "5,000 commits/s", "2 x msync: 1|2",
                         "-", "<= 1.03x floor", "1.010x yes"))
    report.notes.append("a note")
    text = suite.render_markdown(report, tmp_path)
    lines = text.splitlines()
    assert lines[0].startswith("Measured on ") and "load average 1.00" in lines[0]
    assert lines[2] == ("| measure | mappedpages | floor (same run) | pure-Python mmap | "
                        "target | met |")
    assert lines[3] == "|---|---|---|---|---|---|"
    assert lines[4] == "| **durable commits** | | | | | |"
    assert lines[5] == ("| 'compat' durable alloc/free | 5,000 commits/s | 2 x msync: 1\\|2 | - | "
                        "<= 1.03x floor | 1.010x yes |")
    assert lines[-1] == "a note"


def test_commit_targets_are_issue_18s(suite: ModuleType) -> None:
    assert suite.COMMIT_TARGET == {"compat": 1.03, "fast": 1.05}


def test_open_rows_stand_beside_their_target(suite: ModuleType, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(suite, "OPEN_PAGES", 1 << 16)
    report = suite.Report()
    suite.bench_open(tmp_path, suite.Settings.quick(), report)
    warm = report.rows[0]
    assert "Pager / ReadOnlyPager" in warm.measure and warm.target == "<= 250 ms"
    assert warm.met in ("yes", "NO") and warm.value.endswith(" ms")
    assert "dropped from the page cache" in report.rows[1].measure
    assert list(tmp_path.iterdir()) == []  # the file and its reader table are gone


def test_subpage_rows_stand_beside_the_pure_python_allocator(suite: ModuleType,
                                                             tmp_path: Path) -> None:
    report = suite.Report()
    suite.bench_subpage(tmp_path, suite.Settings(calls=200, passes=1), report)
    assert [r.target for r in report.rows] == [">= 1.5x pure Python"] * 2
    assert all("int masks" in r.baseline for r in report.rows)
