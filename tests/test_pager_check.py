"""pager_check (csrc/check.c): a broken invariant fails the commit with MP_EINTERNAL.

A small C program is built against csrc/ with MAPPEDPAGES_CHECK defined; it breaks
one invariant at a time in memory, as a bug would, and expects the next commit to
return MP_EINTERNAL and to poison the pager, never to abort.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def build(tmp_path: Path, source: str, *defines: str) -> Path:
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        pytest.fail("no C compiler to build the C-level harness with")
    exe = tmp_path / "harness"
    sources = sorted(str(p) for p in (ROOT / "csrc").glob("*.c"))
    cmd = [cc, "-std=c11", "-O1", "-g", "-Wall", "-Wextra", *defines, f"-I{ROOT / 'csrc'}"]
    subprocess.run(
        [*cmd, *sources, str(ROOT / "tests" / "csrc" / source), "-o", str(exe)],
        check=True,
        capture_output=True,
    )
    return exe


def test_broken_invariants_fail_the_commit(tmp_path: Path) -> None:
    exe = build(tmp_path, "check_harness.c", "-DMAPPEDPAGES_CHECK")
    proc = subprocess.run([str(exe), str(tmp_path / "f.mpp")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count(" 20 then 9") == 6, proc.stdout  # MP_EINTERNAL, MP_EUNAVAILABLE


def test_flag_combinations_outside_every_named_state_fail_the_check(tmp_path: Path) -> None:
    exe = build(tmp_path, "check_harness.c", "-DMAPPEDPAGES_CHECK")
    proc = subprocess.run([str(exe), str(tmp_path / "f.mpp")], capture_output=True, text=True)
    assert "meta_unwritten in compat: 20 then 9" in proc.stdout, proc.stdout
    assert "pending in compat: 20 then 9" in proc.stdout, proc.stdout


def test_pager_state_names_each_stage_of_a_pagers_life(tmp_path: Path) -> None:
    exe = build(tmp_path, "check_harness.c", "-DMAPPEDPAGES_CHECK")
    proc = subprocess.run([str(exe), str(tmp_path / "f.mpp")], capture_output=True, text=True)
    assert "states: ok" in proc.stdout, proc.stdout


def test_without_check_builds_nothing_is_checked(tmp_path: Path) -> None:
    exe = build(tmp_path, "check_harness.c")
    proc = subprocess.run([str(exe), str(tmp_path / "f.mpp")], capture_output=True, text=True)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert " 20 then" not in proc.stdout
