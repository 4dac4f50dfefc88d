"""Recovery must not discard acknowledged state on its own.

A plain open passes over a metadata copy that fails its CRC or its checks (a
torn commit looks the same as bit rot), with a RecoveryWarning. Anything else
that would discard acknowledged state happens only when asked for, with
``salvage=True`` or ``mappedpages check --repair``, which say exactly what they
discard:

- a file cut shorter than its newest commit raises ``FileTruncated`` (growth
  is durable before a commit counts it, so no crash leaves such a file), and
  the failed open changes nothing;
- after a fallback to the older metadata copy, protected pages the current
  directory still names, whose content matches their recorded CRC, are kept:
  their pages are marked allocated again;
- a directory block whose two copies both lie past the end of the file or on
  reserved pages raises ``CorruptProtectedDirectory``.
"""

from __future__ import annotations

import hashlib
import os
import struct
import subprocess
import sys
import warnings

import pytest
from support.edit import edit_meta, read_at, reseal_dir_index
from support.format_v02 import DIR_REF_SIZE, pattern, read_image
from support.pagers import force_close

import mappedpages
from mappedpages import (
    CorruptFileError,
    CorruptProtectedDirectory,
    FileTruncated,
    Pager,
    ReadOnlyPager,
    RecoveryWarning,
)


def digest(path) -> str:
    with open(path, "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()


def open_warned(path, cls=Pager, **kw):
    """Open PATH; return the pager and the RecoveryWarning messages."""
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        p = cls.open(path, **kw)
    return p, [str(w.message) for w in rec if issubclass(w.category, RecoveryWarning)]


def open_clean(path, cls=Pager):
    """Open PATH, failing on any warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return cls.open(path)


def refuses(path, exc, cls=Pager):
    """Open must raise exc and leave the file byte-for-byte unchanged."""
    before = digest(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(exc) as info:
            cls.open(path)
    assert digest(path) == before, "a refused open changed the file"
    return info.value


def newest_meta(path):
    img = read_image(path)
    return max((m for m in img.metas if m.crc_ok), key=lambda m: m.generation)


def cli(*args, cwd):
    r = subprocess.run(
        [sys.executable, "-m", "mappedpages", *map(str, args)],
        capture_output=True, text=True, cwd=cwd, timeout=120,
    )
    assert "Traceback" not in r.stderr, r.stderr
    return r


# ------------------------------------------------------------- a cut file


@pytest.fixture
def cut(tmp_path):
    """alloc_bulk(5000) in one commit that grows the file, then one byte cut off."""
    path = tmp_path / "cut.mpp"
    with Pager.create(path, page_size=4096) as p:
        ids = p.alloc_bulk(5000)
        v = p.page(3)
        v[:] = pattern(3, 4096)
        v.release()
        assert ids[0] == 3
    full = os.path.getsize(path)
    os.truncate(path, full - 1)
    return path


def test_file_truncated_is_exported():
    assert "FileTruncated" in mappedpages.__all__
    assert issubclass(FileTruncated, CorruptFileError)
    assert FileTruncated.__doc__


@pytest.mark.parametrize("cls", [Pager, ReadOnlyPager])
def test_cut_file_raises_file_truncated(cut, cls):
    size = os.path.getsize(cut)
    committed = newest_meta(cut).total_pages * 4096
    assert committed == size + 1
    exc = refuses(cut, FileTruncated, cls)
    text = str(exc)
    assert f"{size} bytes" in text and f"{committed} bytes" in text, text
    assert "salvage=True" in text


def test_cut_file_salvage_rolls_back_and_says_what(cut):
    newest = newest_meta(cut)
    p, msgs = open_warned(cut, salvage=True)
    try:
        assert p.page_count == 4
        assert list(p.allocated_pages()) == []
    finally:
        force_close(p)
    said = "\n".join(msgs)
    assert "salvage" in said and "rolled back" in said, said
    assert f"generation {newest.generation}" in said, said
    assert f"{newest.total_pages} pages" in said, said
    # the rollback is durable: a plain open accepts the file now
    with open_clean(cut) as p:
        assert p.page_count == 4
        assert p.alloc() == 3


def test_salvage_is_keyword_only_and_a_bool(cut):
    with pytest.raises(TypeError):
        Pager.open(cut, None, 0.0)  # type: ignore[misc]
    with pytest.raises(TypeError):
        Pager.open(cut, salvage="yes")  # type: ignore[arg-type]


def test_reader_salvage_changes_nothing(cut):
    before = digest(cut)
    r, msgs = open_warned(cut, ReadOnlyPager, salvage=True)
    try:
        assert r.page_count == 4
        assert msgs
    finally:
        force_close(r)
    assert digest(cut) == before
    refuses(cut, FileTruncated)


def test_torn_newest_copy_past_the_end_still_falls_back(cut):
    """A copy that fails its CRC is damaged, wherever it reaches: the fallback."""
    newest = newest_meta(cut)
    off = (1 + newest.index) * 4096 + 100
    with open(cut, "r+b") as fh:
        fh.seek(off)
        b = fh.read(1)
        fh.seek(off)
        fh.write(bytes([b[0] ^ 0xFF]))
    p, msgs = open_warned(cut)
    try:
        assert msgs
        assert p.page_count == 4
    finally:
        force_close(p)


def test_older_copy_past_the_end_loses_nothing(tmp_path):
    """Only the older commit reaches past the end: the newest state fits, and
    passing over the older copy discards nothing acknowledged."""
    path = tmp_path / "older.mpp"
    with Pager.create(path, page_size=1024) as p:
        ids = p.alloc_bulk(20)  # grows the file to 32 pages
        p.free_bulk(ids[10:])
        keep = ids[:10]
    newest = newest_meta(path)
    assert newest.total_pages == 32 and max(newest.bits) < 16
    # This library never shrinks a count; the newest copy is made to count 16
    # pages by hand (resealed), and the file cut to them.
    edit_meta(path, newest.index, total_pages=16, free_count=16 - len(newest.bits))
    os.truncate(path, 16 * 1024)
    p, msgs = open_warned(path)
    try:
        assert p.page_count == 16
        assert list(p.allocated_pages()) == keep
    finally:
        force_close(p)
    assert any("past the end" in m for m in msgs), msgs


def test_cut_extended_file_raises(tmp_path):
    path = tmp_path / "ext.mpp"
    with Pager.create(path, page_size=1024) as p:
        p.alloc_bulk(9000)  # past the v0.2 cap: the extended layout
        assert p.format_version == "0.3"
    os.truncate(path, os.path.getsize(path) - 1024)
    refuses(path, FileTruncated)
    refuses(path, FileTruncated, ReadOnlyPager)


def test_check_names_the_cut_and_repair_salvages(cut, tmp_path):
    size = os.path.getsize(cut)
    before = digest(cut)
    r = cli("check", cut, cwd=tmp_path)
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert f"{size} bytes" in r.stdout and f"{size + 1} bytes" in r.stdout, r.stdout
    assert "both metadata copies are damaged" not in r.stdout
    assert "would discard: generation 1" in r.stdout, r.stdout
    assert digest(cut) == before, "check without --repair changed the file"
    r = cli("check", "--repair", cut, cwd=tmp_path)
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert "discarded: generation 1" in r.stdout, r.stdout
    with open_clean(cut) as p:
        assert p.page_count == 4


def test_both_copies_past_the_end(tmp_path):
    """No copy fits: nothing to roll back to, with or without salvage; check
    names the cut instead of "both metadata copies are damaged"."""
    path = tmp_path / "both.mpp"
    with Pager.create(path, page_size=1024) as p:
        p.alloc_bulk(20)  # grows the file to 32 pages
        p.alloc()  # a second commit: both copies count 32 pages
    img = read_image(path)
    assert [m.total_pages for m in img.metas] == [32, 32]
    os.truncate(path, 20 * 1024)
    exc = refuses(path, FileTruncated)
    assert "20480 bytes" in str(exc) and "32768 bytes" in str(exc), str(exc)
    before = digest(path)
    with pytest.raises(FileTruncated):
        Pager.open(path, salvage=True)
    assert digest(path) == before
    r = cli("check", path, cwd=tmp_path)
    assert r.returncode == 1
    assert "the file was cut" in r.stdout and "both metadata copies" not in r.stdout, r.stdout
    assert "--repair" not in r.stdout, r.stdout
    r = cli("check", "--repair", path, cwd=tmp_path)
    assert r.returncode == 1
    assert digest(path) == before


# ------------------------------------------------------ protected pages


def protected_file(tmp_path):
    """A 1 KiB file with one protected page written twice ("one", then "two")."""
    path = tmp_path / "prot.mpp"
    with Pager.create(path, page_size=1024) as p:
        pid = p.alloc_protected()
        for text in (b"one", b"two"):
            with p.write_protected(pid) as w:
                w.page[:3] = text
    return path, pid


def flip_newest_meta(path) -> None:
    newest = newest_meta(path)
    off = (1 + newest.index) * 1024 + 60
    raw = read_at(path, off, 1)
    with open(path, "r+b") as fh:
        fh.seek(off)
        fh.write(bytes([raw[0] ^ 0x5A]))


@pytest.mark.parametrize("cls", [Pager, ReadOnlyPager])
def test_fallback_keeps_current_protected_page(tmp_path, cls):
    path, pid = protected_file(tmp_path)
    flip_newest_meta(path)
    p, msgs = open_warned(path, cls)
    try:
        assert list(p.allocated_protected_pages()) == [pid]
        assert bytes(p.protected_page(pid)[:3]) == b"two"
        assert p.verify_protected(pid)
        assert any("marked allocated again" in m for m in msgs), msgs
        # directory pair and backing pair are allocated, none of them regular
        assert p.page_count - 3 - p.free_page_count == 4
        assert list(p.allocated_pages()) == []
        if cls is Pager:
            a, b = p._backing(pid)
            # the backing pages are allocated: alloc never hands them out
            new = p.alloc_bulk(p.free_page_count)
            assert a not in new and b not in new
    finally:
        force_close(p)


def test_fallback_keep_is_durable(tmp_path):
    path, pid = protected_file(tmp_path)
    flip_newest_meta(path)
    p, msgs = open_warned(path)
    force_close(p)
    with open_clean(path) as p:
        assert list(p.allocated_protected_pages()) == [pid]
        assert bytes(p.protected_page(pid)[:3]) == b"two"
        assert p.page_count - 3 - p.free_page_count == 4  # directory pair + backing pair


def test_stale_entry_is_still_dropped(tmp_path):
    """An entry whose page no longer matches its CRC is not proven current."""
    path, pid = protected_file(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with Pager.open(path) as p:
            a, b = p._backing(pid)
            page = a if bytes(p.protected_page(pid)[:3]) == bytes(read_at(path, a * 1024, 3)) \
                else b
    with open(path, "r+b") as fh:
        fh.seek(page * 1024 + 500)
        fh.write(b"\xAA")
    flip_newest_meta(path)
    p, msgs = open_warned(path)
    try:
        assert list(p.allocated_protected_pages()) == []
        assert msgs
    finally:
        force_close(p)


# ------------------------------------------------------ directory blocks


def set_block_ref(path, block, page_a, page_b) -> None:
    off = 24 + DIR_REF_SIZE * block
    with open(path, "r+b") as fh:
        fh.seek(off)
        fh.write(struct.pack("<QQ", page_a, page_b))
    reseal_dir_index(path)


@pytest.mark.parametrize("where", ["past_end", "reserved", "far"])
def test_block_with_no_copy_in_the_file_is_refused(tmp_path, where):
    path, pid = protected_file(tmp_path)
    n = os.path.getsize(path) // 1024
    refs = {"past_end": (n, n + 1), "reserved": (1, 2), "far": (n + 10, n + 11)}[where]
    set_block_ref(path, 0, *refs)
    refuses(path, CorruptProtectedDirectory)
    refuses(path, CorruptProtectedDirectory, ReadOnlyPager)
    p, msgs = open_warned(path, salvage=True)
    try:
        assert list(p.allocated_protected_pages()) == []
        assert any("salvage" in m and "directory block" in m for m in msgs), msgs
        # the block was given pages inside the file: it takes new protected pages
        new = p.alloc_protected()
        with p.write_protected(new) as w:
            w.page[:4] = b"next"
    finally:
        force_close(p)
    with open_clean(path) as p:
        assert bytes(p.protected_page(new)[:4]) == b"next"


def test_block_with_no_copy_in_the_file_check_and_repair(tmp_path):
    path, _ = protected_file(tmp_path)
    n = os.path.getsize(path) // 1024
    set_block_ref(path, 0, n, n + 1)
    r = cli("check", path, cwd=tmp_path)
    assert r.returncode == 1
    assert "would discard: 1 protected-page directory block" in r.stdout, r.stdout
    r = cli("check", "--repair", path, cwd=tmp_path)
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert "discarded: 1 protected-page directory block" in r.stdout, r.stdout
    open_clean(path).close()
