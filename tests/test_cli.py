"""Tests of the command line: ``python -m mappedpages info|check|map|demo|bench``.

Every command runs in a child process, from a folder outside the checkout (so
the installed package is what runs), and is judged by its exit status, stdout
and stderr. Bad input must give one line on stderr and never a traceback.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import struct
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest
from support.edit import read_at
from support.format_v02 import read_image
from support.geometry import layout
from support.rust_fixtures import copy_fixture, load_manifest

from mappedpages import Pager, ReadOnlyPager
from mappedpages import _cli as cli
from mappedpages import _inspect as inspection

SVG_NS = "{http://www.w3.org/2000/svg}"


def run(*args, cwd, env=None, timeout=120):
    r = subprocess.run(
        [sys.executable, "-m", "mappedpages", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=timeout,
    )
    assert "Traceback" not in r.stderr, r.stderr
    return r


def one_line_error(r, status=2):
    assert r.returncode == status, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("mappedpages: ")
    return lines[0]


def make_file(path, page_size=4096):
    """A file with every kind of page: regular, freed, protected, a directory."""
    with Pager.create(path, page_size=page_size) as p:
        ids = p.alloc_bulk(40)
        prot = [p.alloc_protected() for _ in range(3)]
        with p.write_protected(prot[1]) as w:
            w.page[:5] = b"hello"
        p.free_bulk(ids[5:15])
        p.free(ids[30])
        p.sync()
    return path


# ---------------------------------------------------------------- demo, usage


def test_demo(tmp_path):
    r = run("demo", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "verified: every surviving page holds its data" in r.stdout
    r = run("demo", "--page-size", "1024", cwd=tmp_path)
    assert r.returncode == 0 and "verified" in r.stdout


def test_no_command_and_unknown_command(tmp_path):
    r = run(cwd=tmp_path)
    assert r.returncode == 2 and "usage" in r.stderr
    r = run("frobnicate", cwd=tmp_path)
    assert r.returncode == 2 and "invalid choice" in r.stderr
    r = run("--help", cwd=tmp_path)
    assert r.returncode == 0
    for command in ("info", "check", "map", "demo", "bench"):
        assert command in r.stdout


def test_console_script_entry_point_is_main():
    from mappedpages.__main__ import main

    assert main is cli.main


def test_version(tmp_path):
    import mappedpages

    r = run("--version", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"mappedpages {mappedpages.__version__}\n"
    assert r.stderr == ""


# ---------------------------------------------------------------- info


def test_info_text_and_json(tmp_path):
    path = make_file(tmp_path / "f.mpp")
    r = run("info", path, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    for word in ("format", "0.2.0.0", "page size", "4096 bytes", "metadata A", "metadata B",
                 "in use", "directory", "protected", "free runs", "fragmentation"):
        assert word in out, word
    r = run("info", "--json", path, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    with ReadOnlyPager.open(path) as p:
        assert data["page_size"] == p.page_size
        assert data["page_count"] == p.page_count
        assert data["free_count"] == p.free_page_count
        assert data["counts"]["allocated"] == len(list(p.allocated_pages()))
        assert sorted(int(k) for k in data["protected_pages"]) == list(
            p.allocated_protected_pages()
        )
        report = p._open_report
    img = read_image(path)
    assert data["format_version"] == "0.2.0.0"
    assert sum(data["counts"].values()) == data["page_count"]
    assert data["counts"]["free"] == data["free_count"]
    assert data["counts"]["reserved"] == 1 and data["counts"]["metadata"] == 2
    assert data["counts"]["protected backing"] == 6
    assert data["counts"]["directory"] == 2 * len(data["directory_blocks"]) == 2
    for copy, meta in zip("AB", img.metas):
        assert data["metadata"][copy]["generation"] == meta.generation
        assert data["metadata"][copy]["valid"] is True
    assert data["metadata"][report["chosen_copy"]]["in_use"] is True
    assert data["page0_selects"] == "AB"[img.selector]
    # Free space: ids 8..17 and 33 were freed; the file's tail is free too.
    run_ = data["largest_free_run"]
    assert run_["length"] >= 10
    assert 0.0 <= data["fragmentation"] < 1.0
    assert data["free_runs"] >= 3


@pytest.mark.parametrize(
    "name",
    ["f1_regular_4096", "f2_regular_1024", "f3_protected_4096", "f4_regular_65536",
     "f5_subpages_4096_512", "f6_empty_4096"],
)
def test_info_on_rust_fixtures(tmp_path, name):
    path = copy_fixture(name, tmp_path)
    expected = load_manifest(name)["expected"]
    r = run("info", "--json", path, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    if "page_count" in expected:
        assert data["page_count"] == expected["page_count"]
    if "free_page_count" in expected:
        assert data["free_count"] == expected["free_page_count"]
    if "iter_allocated_protected_pages" in expected:
        assert sorted(int(k) for k in data["protected_pages"]) == expected[
            "iter_allocated_protected_pages"
        ]
    if "iter_allocated_pages" in expected:
        assert data["counts"]["allocated"] == len(expected["iter_allocated_pages"])


def test_info_while_a_writer_holds_the_file(tmp_path):
    path = make_file(tmp_path / "f.mpp")
    with Pager.open(path) as p:
        p.alloc()
        r = run("info", path, cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        r = run("check", path, cwd=tmp_path)
        assert r.returncode == 0, r.stdout


def test_info_reports_recovery(tmp_path):
    path = copy_fixture("e1_active_meta_bitflip_4096", tmp_path)
    r = run("info", path, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "DAMAGED" in r.stdout
    assert "recovered on open" in r.stdout


# ---------------------------------------------------------------- check

# Exit status of `check` on each fixture: 0 clean, 1 problems, 2 cannot be read.
CHECK_STATUS = {
    "e1_active_meta_bitflip_4096": 1,
    "e2_sb_checksum_mismatch_4096": 1,
    "e3_both_meta_corrupt_4096": 1,
    "e4_bad_magic_4096": 2,
    "e5_minor_version_3_4096": 2,
    "e6_patch_build_changed_4096": 0,
    "e7_bad_selector_4096": 1,
    "e8_page_size_log2_13_4096": 1,
    "e9_page0_dircrc_bad_no_dirs_4096": 0,
    "e10_truncated_3_pages_4096": 1,
    "e11_page0_dircrc_bad_4096": 1,
    "e12_active_dir_page_corrupt_4096": 1,
    "e13_both_dir_pages_corrupt_4096": 1,
    "e14_protected_data_modified_4096": 1,
    "f1_regular_4096": 0,
    "f2_regular_1024": 0,
    "f3_protected_4096": 0,
    "f4_regular_65536": 0,
    "f5_subpages_4096_512": 0,
    "f6_empty_4096": 0,
}


@pytest.mark.parametrize("name", sorted(CHECK_STATUS))
def test_check_fixture_status(tmp_path, name):
    path = copy_fixture(name, tmp_path)
    before = path.read_bytes()
    r = run("check", path, cwd=tmp_path)
    status = CHECK_STATUS[name]
    assert r.returncode == status, (r.stdout, r.stderr)
    if status == 0:
        assert "ok: no problems found" in r.stdout
        assert r.stderr == ""
    elif status == 1:
        assert "problem: " in r.stdout
        assert "problem(s) found" in r.stdout
        assert r.stderr == ""
    else:
        one_line_error(r, 2)
    assert path.read_bytes() == before, "check without --repair changed the file"


def test_check_names_the_damage(tmp_path):
    cases = {
        "e1_active_meta_bitflip_4096": ["metadata copy A", "CRC", "page 0 names metadata copy A"],
        "e2_sb_checksum_mismatch_4096": ["meta_checksum"],
        "e3_both_meta_corrupt_4096": ["both metadata copies"],
        "e7_bad_selector_4096": ["selector is 2"],
        "e10_truncated_3_pages_4096": ["truncated"],
        "e11_page0_dircrc_bad_4096": ["directory index"],
        "e12_active_dir_page_corrupt_4096": ["directory page", "dropped"],
        "e13_both_dir_pages_corrupt_4096": ["both copies of a protected-page directory page"],
        "e14_protected_data_modified_4096": ["protected page 0", "CRC"],
        "e4_bad_magic_4096": ["not a mappedpages file"],
        "e5_minor_version_3_4096": ["format version 0.3"],
    }
    for name, words in cases.items():
        path = copy_fixture(name, tmp_path)
        r = run("check", path, cwd=tmp_path)
        text = r.stdout + r.stderr
        for word in words:
            assert word in text, (name, word, text)


def test_check_clean_library_file(tmp_path):
    path = make_file(tmp_path / "f.mpp", page_size=1024)
    r = run("check", path, cwd=tmp_path)
    assert r.returncode == 0, r.stdout
    assert "3 with a matching CRC" in r.stdout


def test_check_protected_content_changed(tmp_path):
    path = make_file(tmp_path / "f.mpp")
    with ReadOnlyPager.open(path) as p:
        pid = list(p.allocated_protected_pages())[1]
        ps = p.page_size
        data = bytes(p.protected_page(pid))
    raw = path.read_bytes()
    page = next(i for i in range(3, len(raw) // ps) if raw[i * ps : (i + 1) * ps] == data)
    with open(path, "r+b") as fh:
        fh.seek(page * ps + 77)
        fh.write(b"\x99")
    r = run("check", path, cwd=tmp_path)
    assert r.returncode == 1
    assert f"protected page {pid}" in r.stdout
    r = run("check", "--repair", path, cwd=tmp_path)
    assert r.returncode == 1
    assert "nothing here that a writer's open repairs" in r.stdout


def _stale_selector_file(tmp_path):
    path = make_file(tmp_path / "stale.mpp")
    img = read_image(path)
    # Point page 0 at the older copy: what a crash between the two flushes leaves.
    older = 1 - img.selector
    with open(path, "r+b") as fh:
        fh.seek(12)
        fh.write(bytes([older]))
    return path, older


def test_check_and_repair_stale_selector(tmp_path):
    path, older = _stale_selector_file(tmp_path)
    r = run("check", path, cwd=tmp_path)
    assert r.returncode == 1
    assert f"page 0 names metadata copy {'AB'[older]}" in r.stdout
    assert "check --repair" in r.stdout
    r = run("check", "--repair", path, cwd=tmp_path)
    assert r.returncode == 0, r.stdout
    assert "repaired: page 0 rewritten" in r.stdout
    assert r.stdout.rstrip().endswith("ok: no problems found")
    assert read_image(path).selector == 1 - older
    r = run("check", path, cwd=tmp_path)
    assert r.returncode == 0


@pytest.mark.parametrize(
    "name, after",
    [
        ("e2_sb_checksum_mismatch_4096", 0),
        ("e7_bad_selector_4096", 0),
        ("e12_active_dir_page_corrupt_4096", 0),
        # Page 0 is rewritten to name B; the damaged copy A waits for the next commit.
        ("e1_active_meta_bitflip_4096", 1),
    ],
)
def test_repair_fixtures(tmp_path, name, after):
    path = copy_fixture(name, tmp_path)
    r = run("check", "--repair", path, cwd=tmp_path)
    assert r.returncode == after, r.stdout
    assert "repaired: " in r.stdout
    assert "after repair:" in r.stdout
    img = read_image(path)
    assert img.selector in (0, 1)
    assert img.meta_checksum == 0x2144DF1C
    assert img.dir_crc_ok
    if name.startswith("e1_"):
        assert img.selector == 1
        assert "next commit by a writer overwrites it" in r.stdout


@pytest.mark.parametrize(
    "name",
    ["e3_both_meta_corrupt_4096", "e13_both_dir_pages_corrupt_4096",
     "e14_protected_data_modified_4096", "f3_protected_4096"],
)
def test_repair_leaves_other_files_alone(tmp_path, name):
    path = copy_fixture(name, tmp_path)
    before = path.read_bytes()
    r = run("check", "--repair", path, cwd=tmp_path)
    assert r.returncode == CHECK_STATUS[name]
    assert path.read_bytes() == before


def test_repair_refused_while_another_writer_holds_the_file(tmp_path):
    path, _ = _stale_selector_file(tmp_path)
    # Another process holds the writer lock (the library's lock is flock).
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import fcntl, os, sys\n"
         f"fd = os.open({str(path)!r}, os.O_RDONLY)\n"
         "fcntl.flock(fd, fcntl.LOCK_EX)\n"
         "print('locked', flush=True)\n"
         "sys.stdin.readline()\n"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=tmp_path,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        before = path.read_bytes()
        r = run("check", "--repair", path, cwd=tmp_path)
        assert r.returncode == 1
        assert "another writer has the file open" in r.stderr
        assert path.read_bytes() == before
    finally:
        assert holder.stdin is not None
        holder.stdin.write("\n")
        holder.stdin.close()
        holder.wait(timeout=30)


def test_repair_clean_file_changes_nothing(tmp_path):
    path = make_file(tmp_path / "f.mpp")
    before = path.read_bytes()
    r = run("check", "--repair", path, cwd=tmp_path)
    assert r.returncode == 0
    assert path.read_bytes() == before


# ---------------------------------------------------------------- map


def _parse_svg(path):
    root = ET.parse(path).getroot()
    assert root.tag == f"{SVG_NS}svg"
    pages = root.find(f"{SVG_NS}g[@id='pages']")
    legend = root.find(f"{SVG_NS}g[@id='legend']")
    assert pages is not None and legend is not None
    cells = pages.findall(f".//{SVG_NS}rect")
    legend_text = [t.text for t in legend.findall(f"{SVG_NS}text")]
    return root, cells, legend_text


def test_map_svg_small_file(tmp_path):
    path = make_file(tmp_path / "f.mpp")
    out = tmp_path / "out.svg"
    r = run("map", path, "--svg", out, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "wrote" in r.stdout
    root, cells, legend = _parse_svg(out)
    with ReadOnlyPager.open(path) as p:
        count = p.page_count
        free = p.free_page_count
        allocated = len(list(p.allocated_pages()))
    assert len(cells) == count  # one square per page
    assert f"allocated: {allocated} pages" in legend
    assert f"free: {free} pages" in legend
    assert "reserved: 1 page" in legend
    assert "metadata: 2 pages" in legend
    assert "directory: 2 pages" in legend
    assert "protected backing: 6 pages" in legend
    colours = {g.get("fill") for g in root.iter(f"{SVG_NS}g") if g.get("fill")}
    assert len(colours) == 6  # every kind appears
    titles = [t.text for t in root.iter(f"{SVG_NS}title")]
    assert any(t and t.startswith("page 0: reserved") for t in titles)


def test_map_svg_large_file_uses_runs(tmp_path):
    path = tmp_path / "big.mpp"
    with Pager.create(path, page_size=1024) as p:
        ids = p.alloc_bulk(7000)
        p.alloc_protected()
        p.free_bulk(ids[100:3000])
        count = p.page_count
    assert count > 4096
    out = tmp_path / "big.svg"
    r = run("map", path, "--svg", out, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    _, cells, legend = _parse_svg(out)
    assert 0 < len(cells) <= 4096
    assert len(cells) == -(-count // 2)
    assert "directory: 2 pages" in legend
    out2 = tmp_path / "small.svg"
    r = run("map", path, "--svg", out2, "--cells", "100", cwd=tmp_path)
    assert r.returncode == 0
    _, cells, _ = _parse_svg(out2)
    assert len(cells) <= 100
    # The directory pages stay visible even in runs of 80 pages.
    assert ET.parse(out2).getroot().find(f".//{SVG_NS}g[@fill='#f59e0b']") is not None


def test_map_svg_escapes_the_file_name(tmp_path):
    path = make_file(tmp_path / "a&b<c>.mpp")
    out = tmp_path / "x.svg"
    r = run("map", path, "--svg", out, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    root, _, _ = _parse_svg(out)
    assert "a&b<c>.mpp" in root.find(f"{SVG_NS}title").text


def test_map_terminal(tmp_path):
    path = make_file(tmp_path / "f.mpp")
    env = dict(os.environ, PYTHONIOENCODING="utf-8")
    r = run("map", path, "--color", "never", cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr
    assert "\x1b[" not in r.stdout
    for glyph in cli._GLYPHS:
        assert glyph in r.stdout
    with ReadOnlyPager.open(path) as p:
        count = p.page_count
    body = r.stdout.splitlines()[1:-1]
    cells = "".join(line.rsplit(" ", 1)[1] for line in body)
    assert len(cells) == count
    assert cells[0] == cli._GLYPHS[cli.RESERVED]
    assert cells[1:3] == cli._GLYPHS[cli.METADATA] * 2
    r = run("map", path, "--color", "always", cwd=tmp_path, env=env)
    assert "\x1b[" in r.stdout
    r = run("map", path, "--ascii", "--width", "16", cwd=tmp_path)
    assert r.returncode == 0
    assert r.stdout.isascii()
    assert "\x1b[" not in r.stdout  # not a terminal: no colour by default
    assert max(len(line) for line in r.stdout.splitlines()[1:-1]) <= 16 + 4


def test_map_terminal_falls_back_to_ascii(tmp_path):
    path = make_file(tmp_path / "f.mpp")
    env = dict(os.environ, PYTHONIOENCODING="ascii")
    r = run("map", path, cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.isascii()
    assert "#" in r.stdout and "." in r.stdout


def test_map_reports_recovery_on_stderr(tmp_path):
    path = copy_fixture("e12_active_dir_page_corrupt_4096", tmp_path)
    r = run("map", path, "--ascii", cwd=tmp_path)
    assert r.returncode == 0
    assert "recovered on open" in r.stderr


def make_alternating_file(path, n=4093):
    """A 1 KiB-page file whose regular pages (3 to the end) are allocated every other page."""
    with Pager.create(path, page_size=1024) as p:
        ids = p.alloc_bulk(n)
        p.free_bulk(ids[1::2])
        count = p.page_count
    assert ids[0] == 3 and count == 4096
    return path, count


def _cells(stdout):
    return [line.rsplit(" ", 1)[1] for line in stdout.splitlines()[1:-1]]


def test_map_every_other_page_is_uniformly_half_full(tmp_path):
    path, count = make_alternating_file(tmp_path / "alt.mpp")
    env = dict(os.environ, PYTHONIOENCODING="utf-8")
    # Runs of 16 pages: every run past the first holds 8 allocated pages. The
    # majority rule drew them all full or, with an odd run length, in stripes.
    r = run("map", path, "--width", "32", "--cells", count // 16, "--color", "never",
            cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr
    assert "run of 16 pages" in r.stdout.splitlines()[0]
    cells = "".join(_cells(r.stdout))
    assert len(cells) == count // 16
    assert cells[0] == cli._GLYPHS[cli.RESERVED]  # the layout pages stay visible
    assert set(cells[1:]) == {"▄"}  # half full, no stripes
    legend = r.stdout.splitlines()[-1]
    assert "runs by pages in use: ░ none, ▁▂▃▄▅▆▇ partly, █ all" in legend
    # Odd runs (2 or 3 pages): 1 of 2 is half, 1 or 2 of 3 are a third and two thirds.
    r = run("map", path, "--ascii", "--width", "64", "--cells", count // 2, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert set("".join(_cells(r.stdout))[2:]) == {"5"}
    assert "runs by pages in use: . none, 123456789 tenths, # all" in r.stdout.splitlines()[-1]
    # Runs of 41 pages hold 20 or 21 allocated: both half, not alternately full and empty.
    r = run("map", path, "--ascii", "--width", "64", "--cells", 100, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    cells = "".join(_cells(r.stdout))
    assert cells[0] == "R" and set(cells[1:]) == {"5"}, cells


def test_map_half_full_run_is_neither_full_nor_empty(tmp_path):
    path = tmp_path / "half.mpp"
    with Pager.create(path, page_size=1024) as p:
        ids = p.alloc_bulk(4093)
        # Pages 16-31 half allocated (the first half), 32-47 a single page,
        # 48-63 all but one, 64-79 none, 80-95 all.
        p.free_bulk([i for i in range(24, 80) if i not in (40, *range(48, 63))] + [ids[-1]])
        assert p.page_count == 4096
    r = run("map", path, "--ascii", "--width", "16", "--cells", 256, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    cells = "".join(_cells(r.stdout))
    assert cells[1:6] == "51" + "9" + ".#", cells
    env = dict(os.environ, PYTHONIOENCODING="utf-8")
    r = run("map", path, "--width", "16", "--cells", 256, "--color", "never",
            cwd=tmp_path, env=env)
    cells = "".join(_cells(r.stdout))
    assert cells[1:6] == "▄▁▇░█", cells
    out = tmp_path / "half.svg"
    r = run("map", path, "--svg", out, "--cells", 256, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    root, squares, legend = _parse_svg(out)
    assert len(squares) == 256
    fills = {
        g.find(f"{SVG_NS}title").text: g.get("fill")
        for g in root.find(f"{SVG_NS}g[@id='pages']").findall(f"{SVG_NS}g")
    }
    half = fills["pages 16-31: 8 of 16 pages in use (allocated)"]
    full = cli._SVG_COLOURS[cli.ALLOCATED]
    empty = cli._SVG_COLOURS[cli.FREE]
    assert half == cli._mix(empty, full, 0.5)
    assert half not in (full, empty)
    assert fills["pages 64-79: 0 of 16 pages in use"] == empty
    full_from_80 = [t for t in fills if t.startswith("pages 80-")]  # one group to the end
    assert len(full_from_80) == 1 and fills[full_from_80[0]] == full
    assert any("shaded by how many of its pages are in use" in t for t in legend)


def test_fill_level_never_rounds_a_partial_run_to_an_end():
    assert cli.fill_level(0, 100, 8) == 0
    assert cli.fill_level(1, 1000, 8) == 1
    assert cli.fill_level(999, 1000, 8) == 7
    assert cli.fill_level(1000, 1000, 8) == 8
    assert cli.fill_level(50, 100, 8) == 4
    assert cli.fill_level(50, 100, 10) == 5


def test_map_svg_empty_name_is_an_error(tmp_path):
    path = make_file(tmp_path / "f.mpp")
    r = run("map", path, "--svg", "", cwd=tmp_path)
    assert r.returncode == 2
    assert r.stdout == ""  # not the terminal map
    assert "argument --svg" in r.stderr and "file name" in r.stderr
    assert sorted(os.listdir(tmp_path)) == ["f.mpp", "f.mpp-readers"]  # the reader table


# ---------------------------------------------------------------- bad input


def _bad_inputs(tmp_path):
    (tmp_path / "empty").write_bytes(b"")
    (tmp_path / "short").write_bytes(b"MPPG\x00")
    (tmp_path / "random").write_bytes(os.urandom(20000))
    (tmp_path / "adir").mkdir()
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    return {
        "missing": "no such file",
        "empty": "empty file",
        "short": "shorter than a mappedpages superblock",
        "random": "not a mappedpages file",
        "adir": "is a directory",
        "fifo": "not a regular file",
    }


@pytest.mark.parametrize("command", [["info"], ["info", "--json"], ["check"], ["map"],
                                     ["check", "--repair"]])
def test_bad_input_one_line_no_traceback(tmp_path, command):
    for name, words in _bad_inputs(tmp_path).items():
        r = run(*command, tmp_path / name, cwd=tmp_path, timeout=30)
        line = one_line_error(r, 2)
        assert words in line, (name, line)
        assert r.stdout == ""


def test_bad_output_path(tmp_path):
    path = make_file(tmp_path / "f.mpp")
    r = run("map", path, "--svg", tmp_path / "nowhere" / "x.svg", cwd=tmp_path)
    assert "cannot write" in one_line_error(r, 2)
    r = run("map", path, "--svg", tmp_path, cwd=tmp_path)
    assert "cannot write" in one_line_error(r, 2)


def test_bad_numbers(tmp_path):
    path = make_file(tmp_path / "f.mpp")
    one_line_error(run("map", path, "--width", "0", cwd=tmp_path), 2)
    one_line_error(run("map", path, "--cells", "-1", cwd=tmp_path), 2)


def test_damaged_file_for_info_and_map(tmp_path):
    path = copy_fixture("e3_both_meta_corrupt_4096", tmp_path)
    for command in ("info", "map"):
        line = one_line_error(run(command, path, cwd=tmp_path), 1)
        assert "damaged" in line and "check" in line


def test_permission_denied(tmp_path, monkeypatch, capsys):
    path = make_file(tmp_path / "f.mpp")
    if os.geteuid() != 0:
        os.chmod(path, 0)
        try:
            line = one_line_error(run("info", path, cwd=tmp_path), 2)
        finally:
            os.chmod(path, 0o644)
        assert "permission denied" in line
        return
    # root reads any file: make the open fail as it would for anyone else.
    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(inspection, "open", refuse, raising=False)
    assert cli.main(["check", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"mappedpages: {path}: permission denied"]
    monkeypatch.undo()
    monkeypatch.setattr(cli.ReadOnlyPager, "open", classmethod(lambda cls, p, **kw: refuse()))
    assert cli.main(["info", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"mappedpages: {path}: permission denied"]


# ---------------------------------------------------------------- bench


def test_bench_when_the_suite_is_missing(monkeypatch, tmp_path, capsys):
    # An installed wheel has no benchmarks/ beside the package: one clear line, status 2.
    monkeypatch.setattr(cli, "BENCH_SUITE", tmp_path / "benchmarks" / "suite.py")
    assert cli.main(["bench"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not available" in err[0] and "benchmarks/suite.py" in err[0]


def test_bench_runs_the_suite(monkeypatch, tmp_path):
    suite = tmp_path / "suite.py"
    suite.write_text(
        "SEEN = []\n"
        "def main(argv):\n"
        "    SEEN.append(argv)\n"
        "    return 3 if argv == ['--fail'] else 0\n"
    )
    monkeypatch.setattr(cli, "BENCH_SUITE", suite)
    assert cli.main(["bench", "--quick", "x"]) == 0
    assert sys.modules["_mappedpages_bench_suite"].SEEN == [["--quick", "x"]]
    assert cli.main(["bench", "--fail"]) == 3


def test_bench_suite_that_fails_to_import(monkeypatch, tmp_path, capsys):
    suite = tmp_path / "suite.py"
    suite.write_text("import mappedpages_no_such_module\n")
    monkeypatch.setattr(cli, "BENCH_SUITE", suite)
    assert cli.main(["bench"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot be loaded" in err[0]


def test_bench_lives_in_the_checkout():
    # The suite is no part of the installed package.
    assert cli.BENCH_SUITE.parent.name == "benchmarks"
    assert importlib.util.find_spec("mappedpages._bench") is None


def test_bench_subprocess(tmp_path):
    if not cli.BENCH_SUITE.is_file():
        one_line_error(run("bench", cwd=tmp_path), 2)
        return
    # The suite is in the checkout: its options, --help included, are its own.
    r = run("bench", "--help", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "usage: mappedpages bench" in r.stdout


# ---------------------------------------------------------------- helpers


def test_superblock_reader_matches_the_file(tmp_path):
    path = make_file(tmp_path / "f.mpp", page_size=2048)
    sb = cli.read_superblock(str(path))
    assert sb.version == (0, 2, 0, 0)
    assert sb.page_size_log2 == 11
    assert sb.file_size == path.stat().st_size
    assert sb.selector == read_image(path).selector
    assert sb.meta_checksum == struct.unpack("<I", read_at(path, 16, 4))[0]


def test_main_in_process_output(tmp_path, capsys):
    path = make_file(tmp_path / "f.mpp")
    assert cli.main(["check", str(path)]) == 0
    assert "ok: no problems found" in capsys.readouterr().out
    shutil.copy(path, tmp_path / "g.mpp")
    assert cli.main(["info", "--json", str(tmp_path / "g.mpp")]) == 0
    assert json.loads(capsys.readouterr().out)["page_size"] == 4096


# ---------------------------------------------------------------- the extended layout (0.3)

CHUNK_1K = layout(1024).chunk_pages  # pages per free-map chunk at 1 KiB: v0.2's cap


def make_extended_file(path, n=9000):
    """A 1 KiB-page file grown past v0.2's cap: in the extended layout (minor 3, 'EXT')."""
    with Pager.create(path, page_size=1024) as p:
        ids = p.alloc_bulk(n)
        prot = [p.alloc_protected() for _ in range(2)]
        with p.write_protected(prot[0]) as w:
            w.page[:5] = b"hello"
        p.free_bulk(ids[100:200])
        p.sync()
        assert p.format_version == "0.3"
        assert p.page_count > CHUNK_1K
    return path


def _ext_chunks(page_count):
    return (page_count - 1) // CHUNK_1K + 1


def test_info_extended_file(tmp_path):
    path = make_extended_file(tmp_path / "ext.mpp")
    assert read_at(path, 5, 1) == b"\x03" and read_at(path, 13, 3) == b"EXT"
    r = run("info", path, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    for words in (
        "extended layout 0.3 (past v0.2's cap; the Rust crate refuses it)",
        "version bytes 0.3.0.0",
        "2 free map, 2 directory index",
        "free map",
        f"2 chunks of {CHUNK_1K} pages",
        f"chunk 1 on pages {CHUNK_1K} and {CHUNK_1K + 1}",
        f"index page 0 on pages {CHUNK_1K + 2} and {CHUNK_1K + 3}",
        "not kept current in the extended layout",
        "the address range",
    ):
        assert words in out, (words, out)
    assert "in this layout" not in out
    assert "conflict" not in out
    r = run("info", "--json", path, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    with ReadOnlyPager.open(path) as p:
        assert data["page_count"] == p.page_count
        assert data["free_count"] == p.free_page_count
        assert data["max_pages"] == p.max_pages
        assert data["counts"]["allocated"] == len(list(p.allocated_pages()))
        assert p.format_version == "0.3"
    assert data["format_version"] == "0.3.0.0"
    assert data["format_layout"] == "0.3"
    assert data["extended"] is True
    assert data["chunk_pages"] == CHUNK_1K
    assert data["chunks"] == _ext_chunks(data["page_count"]) == 2
    assert data["layout_pages"] == 3 + 4 == 7
    assert data["counts"]["free map"] == 2
    assert data["counts"]["directory index"] == 2
    # Metadata: copies A and B, and the root pages the protected write's
    # one-flush commit took (its record lives there).
    assert data["root_pages"] is not None
    assert data["counts"]["reserved"] == 1 and data["counts"]["metadata"] == 2 + 2
    assert data["counts"]["protected backing"] == 4
    # Every page is counted once, and the free pages add up to the metadata's count.
    assert sum(data["counts"].values()) == data["page_count"]
    assert data["counts"]["free"] == data["free_count"]
    assert data["free_map_pages"] == [[CHUNK_1K, CHUNK_1K + 1]]
    assert data["directory_index_pages"] == [[CHUNK_1K + 2, CHUNK_1K + 3]]
    assert data["page0_selector_kept"] is False
    assert data["conflicts"] == [] and data["recovered_on_open"] == []


def test_info_extended_file_with_three_chunks(tmp_path):
    path = make_extended_file(tmp_path / "ext3.mpp", n=2 * CHUNK_1K + 100)
    r = run("info", "--json", path, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    chunks = _ext_chunks(data["page_count"])
    assert chunks >= 3 and data["chunks"] == chunks
    assert data["layout_pages"] == 3 + 4 * (chunks - 1)
    assert data["counts"]["free map"] == data["counts"]["directory index"] == 2 * (chunks - 1)
    assert data["free_map_pages"] == [[i * CHUNK_1K, i * CHUNK_1K + 1] for i in range(1, chunks)]
    assert sum(data["counts"].values()) == data["page_count"]
    assert data["counts"]["free"] == data["free_count"]
    r = run("check", path, cwd=tmp_path)
    assert r.returncode == 0, r.stdout


def test_info_v02_file_names_its_layout(tmp_path):
    path = make_file(tmp_path / "f.mpp", page_size=1024)
    r = run("info", path, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "mappedpages v0.2 layout (the Rust crate's); version bytes 0.2.0.0" in r.stdout
    assert f"the v0.2 layout holds at most {CHUNK_1K} pages" in r.stdout
    assert "directory index" not in r.stdout  # no such page in a v0.2 file
    data = json.loads(run("info", "--json", path, cwd=tmp_path).stdout)
    assert data["format_layout"] == "0.2" and data["extended"] is False
    assert data["chunk_pages"] == CHUNK_1K and data["chunks"] == 1
    assert data["layout_pages"] == 3
    assert data["counts"]["free map"] == data["counts"]["directory index"] == 0
    assert data["free_map_pages"] == [] and data["directory_index_pages"] == []
    assert data["page0_selector_kept"] is True


def test_check_extended_file(tmp_path):
    path = make_extended_file(tmp_path / "ext.mpp")
    before = path.read_bytes()
    r = run("check", path, cwd=tmp_path)
    assert r.returncode == 0, r.stdout
    assert r.stderr == ""
    assert "format version 0.3.0.0 (extended layout)" in r.stdout
    assert f"free map: 2 chunks of {CHUNK_1K} pages" in r.stdout
    assert "2 with a matching CRC" in r.stdout
    assert "ok: no problems found" in r.stdout
    assert "problem" not in r.stdout.replace("no problems", "")
    r = run("check", "--repair", path, cwd=tmp_path)
    assert r.returncode == 0, r.stdout
    assert path.read_bytes() == before


def test_read_layout_classifies_the_layout_pages(tmp_path):
    path = make_extended_file(tmp_path / "ext.mpp")
    with ReadOnlyPager.open(path) as p:
        layout = cli.read_layout(p)
        allocated = set(p.allocated_pages())
    assert layout.conflicts == []
    assert layout.extended and layout.chunks == 2 and layout.format_minor == 3
    assert layout.chunk_layout_pages(1) == (CHUNK_1K, CHUNK_1K + 1, CHUNK_1K + 2, CHUNK_1K + 3)
    kinds = layout.kinds
    assert kinds[CHUNK_1K : CHUNK_1K + 4] == bytes([cli.FREEMAP] * 2 + [cli.DIRINDEX] * 2)
    assert not allocated & set(range(CHUNK_1K, CHUNK_1K + 4))
    assert layout.count(cli.FREE) == layout.free_count


def test_map_extended_file(tmp_path):
    path = make_extended_file(tmp_path / "ext.mpp")
    with ReadOnlyPager.open(path) as p:
        count = p.page_count
    # One cell per page: the layout pages sit at the start of chunk 1.
    r = run("map", path, "--ascii", "--width", "64", "--cells", count, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert "extended layout, 2 chunks" in lines[0]
    cells = "".join(line.rsplit(" ", 1)[1] for line in lines[1:-1])
    assert len(cells) == count
    assert cells[CHUNK_1K : CHUNK_1K + 4] == "FFII"
    assert cells.count("F") == 2 and cells.count("I") == 2
    assert "F free map 2" in lines[-1] and "I directory index 2" in lines[-1]
    # Runs of pages: the free-map pages stay visible.
    r = run("map", path, "--ascii", "--width", "32", "--cells", "256", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "F" in "".join(line.rsplit(" ", 1)[1] for line in r.stdout.splitlines()[1:-1])
    out = tmp_path / "ext.svg"
    r = run("map", path, "--svg", out, "--cells", count, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    root, cells_svg, legend = _parse_svg(out)
    assert len(cells_svg) == count
    assert "free map: 2 pages" in legend
    assert "directory index: 2 pages" in legend
    titles = [t.text for t in root.iter(f"{SVG_NS}title")]
    assert f"pages {CHUNK_1K}-{CHUNK_1K + 1}: free map" in titles
    assert f"pages {CHUNK_1K + 2}-{CHUNK_1K + 3}: directory index" in titles
    colours = {g.get("fill") for g in root.iter(f"{SVG_NS}g") if g.get("fill")}
    assert cli._SVG_COLOURS[cli.FREEMAP] in colours
    assert cli._SVG_COLOURS[cli.DIRINDEX] in colours
    assert len(colours) == len(cli.KIND_NAMES)  # every kind appears
    # Default SVG (runs of pages): still parses, free map still shown.
    r = run("map", path, "--svg", out, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    root, cells_svg, _ = _parse_svg(out)
    assert 0 < len(cells_svg) <= 4096
    assert root.find(f".//{SVG_NS}g[@fill='{cli._SVG_COLOURS[cli.FREEMAP]}']") is not None


def _mark_minor_3(path, mark):
    with open(path, "r+b") as fh:
        fh.seek(5)
        fh.write(b"\x03")
        fh.seek(13)
        fh.write(mark)


@pytest.mark.parametrize("command", [["info"], ["info", "--json"], ["check"], ["map"]])
def test_minor_3_without_the_mark_is_refused(tmp_path, command):
    path = make_file(tmp_path / "m3.mpp", page_size=1024)
    _mark_minor_3(path, b"\0\0\0")
    before = path.read_bytes()
    line = one_line_error(run(*command, path, cwd=tmp_path), 2)
    assert "format version 0.3" in line
    assert "not a version this library reads" in line
    assert "'EXT'" in line
    assert path.read_bytes() == before


def test_minor_3_with_the_mark_within_the_cap(tmp_path):
    # What a crash in the middle of the upgrade leaves: page 0 says 0.3 and 'EXT',
    # the state is still a v0.2 one. Read exactly like v0.2.
    path = make_file(tmp_path / "small3.mpp", page_size=1024)
    _mark_minor_3(path, b"EXT")
    sb = cli.read_superblock(str(path))
    assert sb.extended and sb.version[1] == 3
    r = run("info", path, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "extended layout 0.3, still within v0.2's cap" in r.stdout
    data = json.loads(run("info", "--json", path, cwd=tmp_path).stdout)
    assert data["format_layout"] == "0.3" and data["extended"] is False
    assert data["counts"]["free map"] == 0 and data["chunks"] == 1
    assert data["counts"]["free"] == data["free_count"]
    r = run("check", path, cwd=tmp_path)
    assert r.returncode == 0, r.stdout


def test_superblock_reader_on_an_extended_file(tmp_path):
    path = make_extended_file(tmp_path / "ext.mpp")
    sb = cli.read_superblock(str(path))
    assert sb.version[:2] == (0, 3)
    assert sb.mark == b"EXT" and sb.extended
    assert sb.page_size_log2 == 10
    assert not cli.read_superblock(str(make_file(tmp_path / "f.mpp"))).extended
