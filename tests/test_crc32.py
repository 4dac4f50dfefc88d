"""The format's CRC-32 (csrc/crc32.c) is zlib's, bit for bit, on both of its paths.

A small C program built from crc32.c prints the CRC of slices of random bytes (every
length to 300 and some past a page, at 16 offsets, whole and in two updates); each must
equal ``zlib.crc32``. It is built twice: as the library is (on x86-64 with carry-less
multiplication, runs of 64 bytes and more are folded with PCLMULQDQ) and with the
x86-64 path compiled out (the tables alone).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import zlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def build(tmp_path: Path, name: str, *flags: str) -> Path:
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        pytest.fail("no C compiler to build the CRC harness with")
    exe = tmp_path / name
    subprocess.run(
        [cc, "-std=c11", "-O2", "-Wall", "-Wextra", "-Werror", *flags, f"-I{ROOT / 'csrc'}",
         str(ROOT / "csrc" / "crc32.c"), str(ROOT / "tests" / "csrc" / "crc_harness.c"),
         "-o", str(exe)],
        check=True,
        capture_output=True,
    )
    return exe


def run_and_compare(exe: Path, data_path: Path, data: bytes) -> int:
    out = subprocess.run([str(exe), str(data_path)], capture_output=True, text=True, check=True)
    lines = out.stdout.splitlines()
    clmul = int(lines[0].split()[1])
    checked = 0
    for line in lines[1:]:
        off, n, whole, split = line.split()
        want = zlib.crc32(data[int(off) : int(off) + int(n)])
        assert int(whole, 16) == want, line
        assert int(split, 16) == want, line
        checked += 1
    assert checked == 16 * 308
    return clmul


def test_crc32_is_zlibs_as_built(tmp_path: Path) -> None:
    data = os.urandom(16384)
    (tmp_path / "data").write_bytes(data)
    clmul = run_and_compare(build(tmp_path, "crc"), tmp_path / "data", data)
    if os.uname().machine == "x86_64" and " pclmulqdq" in Path("/proc/cpuinfo").read_text():
        assert clmul == 1  # the folding path is the one that ran


def test_crc32_tables_alone_are_zlibs(tmp_path: Path) -> None:
    data = os.urandom(16384)
    (tmp_path / "data").write_bytes(data)
    assert run_and_compare(build(tmp_path, "crc-tables", "-DMP_CRC_TABLES_ONLY"), tmp_path / "data",
                           data) == 0
