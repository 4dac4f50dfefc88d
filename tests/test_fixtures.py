"""The files written by the Rust crate mappedpages 0.2.0 (tests/fixtures/rust-v0.2).

Every fixture is copied to a temporary folder before it is opened: the shared
folder is read-only, and a writer may repair page 0 of a damaged file.
"""

from __future__ import annotations

import warnings

import pytest
from support.format_v02 import check_valid_v02, crc32, pattern, read_image
from support.pagers import force_close
from support.rust_fixtures import copy_fixture, load_manifest, require_fixtures_dir

import mappedpages
from mappedpages import Pager

F_FILES = [
    "f1_regular_4096",
    "f2_regular_1024",
    "f3_protected_4096",
    "f4_regular_65536",
    "f5_subpages_4096_512",
    "f6_empty_4096",
]

# e* files whose outcome is that of the crate's manifest, unchanged.
E_AS_MANIFEST = [
    "e1_active_meta_bitflip_4096",
    "e3_both_meta_corrupt_4096",
    "e4_bad_magic_4096",
    "e5_minor_version_3_4096",
    "e6_patch_build_changed_4096",
    "e8_page_size_log2_13_4096",
    "e9_page0_dircrc_bad_no_dirs_4096",
    "e10_truncated_3_pages_4096",
    "e11_page0_dircrc_bad_4096",
    "e13_both_dir_pages_corrupt_4096",
]
# e* files where this library is specified to do better than the crate: the
# newest valid metadata copy wins, so the state is that of f1.
E_AS_F1 = ["e2_sb_checksum_mismatch_4096", "e7_bad_selector_4096"]
# e12 and e14 are protected-page cases, tested with the protected pages.

# which e* files must warn on open (a damaged copy discarded, or a bad selector)
E_WARNS = {"e1_active_meta_bitflip_4096", "e7_bad_selector_4096"}
# which must open without any warning
E_SILENT = {"e6_patch_build_changed_4096", "e9_page0_dircrc_bad_no_dirs_4096"}

ERRORS = {
    "CorruptSuperblock": mappedpages.CorruptSuperblock,
    "CorruptMetadata": mappedpages.CorruptMetadata,
    "CorruptDirectoryIndex": mappedpages.CorruptDirectoryIndex,
    "CorruptProtectedDirectory": mappedpages.CorruptProtectedDirectory,
    "InvalidPageSize": mappedpages.InvalidPageSize,
}


def test_fixture_folder_present():
    d = require_fixtures_dir()
    for name in F_FILES + E_AS_MANIFEST + E_AS_F1:
        assert (d / f"{name}.mpp").is_file(), name
        assert (d / f"{name}.json").is_file(), name


def _open_quiet(path, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return Pager.open(path, **kw)


def assert_expected_state(p, expected):
    assert p.page_size == expected["page_size"]
    assert p.page_count == expected["page_count"]
    assert p.free_page_count == expected["free_page_count"]
    assert list(p.allocated_pages()) == expected["iter_allocated_pages"]
    for rec in expected.get("regular_page_contents", []):
        v = p.page(rec["page_id"])
        data = bytes(v)
        v.release()
        assert len(data) == expected["page_size"]
        assert data[:16].hex() == rec["first_16_bytes_hex"], rec["page_id"]
        assert crc32(data) == rec["crc32"], rec["page_id"]


# --------------------------------------------------------------------------
# f* files
# --------------------------------------------------------------------------


@pytest.mark.parametrize("name", F_FILES)
@pytest.mark.parametrize("explicit_size", [False, True])
def test_f_open_matches_manifest(tmp_path, name, explicit_size):
    m = load_manifest(name)
    exp = m["expected"]
    path = copy_fixture(name, tmp_path)
    kw = {"page_size": exp["page_size"]} if explicit_size else {}
    p = _open_quiet(path, **kw)
    try:
        assert_expected_state(p, exp)
    finally:
        force_close(p)


@pytest.mark.parametrize("name", F_FILES)
def test_f_open_close_leaves_file_unchanged(tmp_path, name):
    path = copy_fixture(name, tmp_path)
    before = path.read_bytes()
    _open_quiet(path).close()
    assert path.read_bytes() == before


@pytest.mark.parametrize("name", F_FILES)
def test_f_wrong_page_size(tmp_path, name):
    m = load_manifest(name)
    path = copy_fixture(name, tmp_path)
    before = path.read_bytes()
    tried = m["expected"]["open_with_wrong_page_size"]["page_size_tried"]
    assert m["expected"]["open_with_wrong_page_size"]["result"] == "InvalidPageSize"
    with pytest.raises(mappedpages.InvalidPageSize):
        Pager.open(path, page_size=tried)
    assert path.read_bytes() == before


def test_f1_freed_pages_still_readable(tmp_path):
    """Freed pages are not zeroed: page() of a free page shows the old bytes."""
    m = load_manifest("f1_regular_4096")
    path = copy_fixture("f1_regular_4096", tmp_path)
    with _open_quiet(path) as p:
        for pid, held in zip(m["freed_ids"], m["freed_pages_still_hold_pattern"]):
            assert pid not in set(p.allocated_pages())
            v = p.page(pid)
            data = bytes(v)
            v.release()
            assert held == 1
            assert data == pattern(pid, 4096)


def test_f3_protected_pages_not_listed(tmp_path):
    path = copy_fixture("f3_protected_4096", tmp_path)
    img = read_image(path)
    # directory pages 6, 7 and the backing pages of live protected ids
    assert img.system_pages == {6, 7, 8, 9, 10, 11, 14, 15, 16, 17}
    with _open_quiet(path) as p:
        listed = set(p.allocated_pages())
        assert not listed & img.system_pages
        # reusing a page never hands out a system page
        got = p.alloc_bulk(5)
        assert not set(got) & img.system_pages
        assert got == [4, 19, 20, 21, 22]


@pytest.mark.parametrize("name", ["f3_protected_4096", "f4_regular_65536"])
def test_system_pages_cannot_be_freed(tmp_path, name):
    """Directory pages and protected backing pages are not regular pages:
    free() of one is refused (the crate lets it alias) and nothing changes."""
    path = copy_fixture(name, tmp_path)
    img = read_image(path)
    assert img.system_pages
    before = path.read_bytes()
    with _open_quiet(path) as p:
        state = (p.page_count, p.free_page_count, list(p.allocated_pages()))
        for pid in sorted(img.system_pages):
            with pytest.raises(mappedpages.ReservedPage):
                p.free(pid)
            with pytest.raises(mappedpages.ReservedPage):
                p.free_bulk([state[2][0], pid])
        assert (p.page_count, p.free_page_count, list(p.allocated_pages())) == state
    assert path.read_bytes() == before


@pytest.mark.parametrize("name", F_FILES)
def test_f_modify_keeps_valid_v02(tmp_path, name):
    m = load_manifest(name)
    exp = m["expected"]
    ps = exp["page_size"]
    path = copy_fixture(name, tmp_path)
    img = read_image(path)
    sel = img.newest()
    free_ids = [i for i in range(3, sel.total_pages) if i not in sel.bits]
    live = list(exp["iter_allocated_pages"])
    contents = {rec["page_id"]: rec["crc32"] for rec in exp.get("regular_page_contents", [])}

    p = _open_quiet(path)
    try:
        # alloc hands out the lowest free page (or the first page of the growth)
        a = p.alloc()
        assert a == (free_ids[0] if free_ids else sel.total_pages)
        assert a not in img.system_pages
        v = p.page(a)
        v[:] = pattern(a, ps, salt=5)
        v.release()
        live.append(a)
        contents[a] = crc32(pattern(a, ps, salt=5))
        # free the lowest previously allocated page, if any
        if exp["iter_allocated_pages"]:
            victim = exp["iter_allocated_pages"][0]
            p.free(victim)
            live.remove(victim)
            contents.pop(victim)
        more = p.alloc_bulk(3)
        assert not set(more) & img.system_pages
        assert not set(more) & set(live)
        live.extend(more)
        p.free_bulk(more[:2])
        for x in more[:2]:
            live.remove(x)
        assert list(p.allocated_pages()) == sorted(live)
        count = p.page_count
        free = p.free_page_count
    finally:
        force_close(p)

    after = check_valid_v02(path, allocated=sorted(live))
    assert after.newest().generation > sel.generation
    assert after.system_pages == img.system_pages
    assert after.dir_count == img.dir_count
    with _open_quiet(path) as p:
        assert list(p.allocated_pages()) == sorted(live)
        assert p.page_count == count
        assert p.free_page_count == free
        for pid, c in contents.items():
            v = p.page(pid)
            assert crc32(bytes(v)) == c, pid
            v.release()


def test_f6_is_a_fresh_file(tmp_path):
    path = copy_fixture("f6_empty_4096", tmp_path)
    fresh = tmp_path / "fresh.mpp"
    Pager.create(fresh).close()
    assert fresh.read_bytes() == path.read_bytes()


def test_f2_replay_gives_same_allocation(tmp_path):
    """Replaying f2's operation history with this library gives the same state."""
    m = load_manifest("f2_regular_1024")
    path = tmp_path / "replay.mpp"
    with Pager.create(path, page_size=1024) as p:
        ids = [p.alloc() for _ in range(50)]
        assert ids == m["allocated_ids_all"]
        for i in ids:
            v = p.page(i)
            v[:] = pattern(i, 1024)
            v.release()
        p.free_bulk(m["freed_ids"])
        assert list(p.allocated_pages()) == m["expected"]["iter_allocated_pages"]
        assert p.page_count == m["expected"]["page_count"]
        assert p.free_page_count == m["expected"]["free_page_count"]
    # the data pages and the bitmap match the crate's file byte for byte
    ours = path.read_bytes()
    theirs = (require_fixtures_dir() / "f2_regular_1024.mpp").read_bytes()
    assert len(ours) == len(theirs)
    for pid in range(3, 64):
        assert ours[pid * 1024 : (pid + 1) * 1024] == theirs[pid * 1024 : (pid + 1) * 1024], pid
    a, b = read_image(path), read_image(require_fixtures_dir() / "f2_regular_1024.mpp")
    assert a.newest().bits == b.newest().bits
    assert a.newest().total_pages == b.newest().total_pages
    assert a.newest().free_count == b.newest().free_count


# --------------------------------------------------------------------------
# e* files
# --------------------------------------------------------------------------


@pytest.mark.parametrize("name", E_AS_MANIFEST)
def test_e_as_manifest(tmp_path, name):
    m = load_manifest(name)
    exp = m["expected"]
    path = copy_fixture(name, tmp_path)
    result = exp["open_result"]
    if result.startswith("Err("):
        exc = ERRORS[result[4:-1]]
        before = path.read_bytes()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with pytest.raises(exc):
                Pager.open(path, page_size=4096)
        assert path.read_bytes() == before, "a failed open must not change the file"
        return
    assert result == "Ok"
    exp = dict(exp)
    exp.setdefault("page_size", 4096)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        p = Pager.open(path)
    try:
        assert_expected_state(p, exp)
    finally:
        force_close(p)
    recovery = [w for w in rec if issubclass(w.category, mappedpages.RecoveryWarning)]
    if name in E_WARNS:
        assert recovery, "expected a RecoveryWarning"
    if name in E_SILENT:
        assert rec == [], [str(w.message) for w in rec]


def test_e1_falls_back_to_previous_state(tmp_path):
    path = copy_fixture("e1_active_meta_bitflip_4096", tmp_path)
    f1 = load_manifest("f1_regular_4096")["expected"]
    with pytest.warns(mappedpages.RecoveryWarning):
        p = Pager.open(path)
    try:
        assert 41 in set(p.allocated_pages())
        assert p.free_page_count == 20
        assert list(p.allocated_pages()) == sorted(f1["iter_allocated_pages"] + [41])
    finally:
        force_close(p)


def test_e8_open_without_page_size(tmp_path):
    """page_size_log2 13 is a valid size, but pages of 8192 make no sense of the file."""
    path = copy_fixture("e8_page_size_log2_13_4096", tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises((mappedpages.CorruptFileError, mappedpages.InvalidPageSize)):
            Pager.open(path)


@pytest.mark.parametrize("name", E_AS_F1)
def test_e_newest_copy_wins(tmp_path, name):
    f1 = load_manifest("f1_regular_4096")["expected"]
    path = copy_fixture(name, tmp_path)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        p = Pager.open(path, page_size=4096)
    try:
        assert_expected_state(p, f1)
        assert p.free_page_count == 21
        assert 41 not in set(p.allocated_pages())
    finally:
        force_close(p)
    if name in E_WARNS:
        assert any(issubclass(w.category, mappedpages.RecoveryWarning) for w in rec)


@pytest.mark.parametrize(
    "name,newest",
    [
        ("e1_active_meta_bitflip_4096", 1),  # A is damaged, B (gen 59) is the newest valid
        ("e2_sb_checksum_mismatch_4096", 0),  # A (gen 60)
        ("e7_bad_selector_4096", 0),  # selector 2; A (gen 60)
        ("e6_patch_build_changed_4096", 0),
        ("e9_page0_dircrc_bad_no_dirs_4096", 0),
    ],
)
def test_e_writer_repairs_page0(tmp_path, name, newest):
    path = copy_fixture(name, tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        Pager.open(path).close()
    img = read_image(path)
    assert img.selector == newest
    assert img.metas[newest].crc_ok
    # reopening the repaired file: no warning about the selector any more
    if name in ("e7_bad_selector_4096", "e2_sb_checksum_mismatch_4096"):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            Pager.open(path).close()


@pytest.mark.parametrize(
    "name",
    [
        "e1_active_meta_bitflip_4096",
        "e2_sb_checksum_mismatch_4096",
        "e6_patch_build_changed_4096",
        "e7_bad_selector_4096",
        "e9_page0_dircrc_bad_no_dirs_4096",
    ],
)
def test_e_modify_then_valid(tmp_path, name):
    path = copy_fixture(name, tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p = Pager.open(path)
    try:
        before = list(p.allocated_pages())
        a = p.alloc()
        p.free(before[-1])
        live = sorted(set(before) - {before[-1]} | {a})
        assert list(p.allocated_pages()) == live
    finally:
        force_close(p)
    check_valid_v02(path, allocated=live)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with Pager.open(path) as q:
            assert list(q.allocated_pages()) == live
